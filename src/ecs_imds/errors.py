"""Every exception ecs-imds raises on purpose, in one place.

    Exception
    ├── ValidationError (ValueError)   operator input that cannot be served: the field is named
    │   └── ConfigError                every problem of a config file at once, a line each
    ├── CredentialError                no RAM credential can be had (an issuer failed)
    ├── StoreError                     the store said no
    │   ├── StoreUnavailable (OSError) it cannot be reached (database down, hung, refusing)
    │   ├── Conflict                   a conditional write found another revision
    │   ├── AddressTaken               an address another instance of the VPC holds
    │   ├── TargetNotEmpty             `admin migrate` would overwrite a fleet
    │   └── SourceEmpty                `admin migrate` from a store holding nothing
    ├── InstanceNotFound (LookupError) no instance with that id
    ├── ApiError                       an error answer of the control plane (status, Code)
    ├── ControlPlaneError              an answer a client of the control plane got
    │   └── OutcomeUnknown             the connection was lost after a change was sent
    └── MetadataError                  an answer a client of the data plane got

The data plane raises none of these at an instance: what an instance gets is a status,
decided as a value (`protocol.decide`). Messages are safe to log: none holds a token, a key,
a signature or a credential.
"""

from __future__ import annotations


class ValidationError(ValueError):
    """Operator input that cannot be served; `field` is the dotted path of the bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str, sep: str = ".") -> ValidationError:
        """The same error, located inside a larger document (e.g. `instances[2] (i-x)`)."""
        return ValidationError(f"{prefix}{sep}{self.field}" if self.field else prefix,
                               self.message)


class ConfigError(ValidationError):
    """Settings that cannot be used: every problem found at once (`problems`), each one line
    naming where it is (`source`, the file, for all but `options`: command-line options),
    the setting (`config.yaml: limits.rate: …`) and what to do. `field` is the first's."""

    def __init__(self, problems: list[ValidationError], source: str = "",
                 options: list[ValidationError] | None = None) -> None:
        self.problems = [*problems, *(options or [])]
        self.lines = [f"{source}: {p}" if source else str(p) for p in problems] + [
            str(p) for p in options or []]
        super().__init__(self.problems[0].field, self.problems[0].message)
        self.args = ("\n".join(self.lines),)


class CredentialError(Exception):
    """No credential can be served; the message is safe to log (it never holds a secret)."""


class StoreError(Exception):
    """Something the store refused or could not do."""


class StoreUnavailable(StoreError, OSError):
    """The store cannot be reached (the database is down or refuses us)."""


class Conflict(StoreError):
    """A conditional write found the instance at another revision than the caller expected
    (`current` is 0 when the instance does not exist)."""

    def __init__(self, instance_id: str, current: int) -> None:
        super().__init__(f"{instance_id} is at revision {current}")
        self.instance_id = instance_id
        self.current = current


class AddressTaken(StoreError):
    """A write gave `claimant` an address (`vpc_id`, `address`) that `owner` holds: the
    store's unique index refused it (SPEC §1: the caller is found by VPC and address)."""

    def __init__(self, vpc_id: str, address: str, owner: str, claimant: str) -> None:
        super().__init__(f"{address} in {vpc_id} already belongs to {owner}")
        self.vpc_id, self.address, self.owner, self.claimant = vpc_id, address, owner, claimant


class TargetNotEmpty(StoreError):
    """The target store already holds a fleet; copying would overwrite it."""


class SourceEmpty(StoreError):
    """The source store holds nothing at all: most likely the wrong store."""


class InstanceNotFound(LookupError):
    """No instance with that id."""


class ApiError(Exception):
    """An error answer of the control plane: HTTP `status`, Alibaba-style `code`."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ControlPlaneError(Exception):
    """What a client of the control plane got instead of an answer (status 0: none came)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status, self.code = status, code


class OutcomeUnknown(ControlPlaneError):
    """The request was sent and no answer came back: the change may have been made or not."""


class MetadataError(Exception):
    """A data-plane answer other than 200, as a client inside an instance sees it."""

    def __init__(self, status: int, path: str, body: bytes) -> None:
        super().__init__(f"{path}: HTTP {status} {body[:200].decode(errors='replace')}")
        self.status = status
