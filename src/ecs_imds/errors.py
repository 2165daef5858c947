"""Errors that carry what an operator needs to fix their input."""

from __future__ import annotations


class ValidationError(ValueError):
    """Operator input that cannot be served; `field` is the dotted path of the bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> ValidationError:
        """The same error, located inside a larger document (e.g. `instances[2] (i-x)`)."""
        return ValidationError(f"{prefix}.{self.field}" if self.field else prefix, self.message)
