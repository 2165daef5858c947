"""`issuer: command`: RAM credentials printed by an operator's program (like AWS's
`credential_process`), for real STS.

The program gets `ECS_IMDS_INSTANCE_ID` and `ECS_IMDS_ROLE` in its environment and prints
SPEC §5's JSON (AccessKeyId, AccessKeySecret, SecurityToken, Expiration at least). Every
`issue` runs it once: caching, refreshing ahead of expiry, single flight and backoff are the
data plane's (`dataplane.fulfil`), which also keeps this off its event loop. The program is
bounded: killed (with whatever it started) after `timeout` seconds, or once it prints more
than `OUTPUT_LIMIT` bytes.

What the program says on standard error goes into the message of a failure, but only its
first line, cut short, and never a line that looks like it holds a credential: brokers
print what they received when they fail, and a message is logged.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from ecs_imds.errors import CredentialError
from ecs_imds.protocol.credentials import Credential, from_json, load_json

OUTPUT_LIMIT = 64 * 1024
_STDERR_SHOWN = 200
# Words and shapes that say a line may carry a secret: it is not shown.
_SECRET_LIKE = re.compile(
    r"secret|token|password|credential|accesskey|STS\.|CAIS|[A-Za-z0-9+/=_-]{32,}",
    re.IGNORECASE)


def stderr_summary(stderr: bytes) -> str:
    """`; stderr: <first line>` for a failure's message, or "" when there is nothing safe."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    if not lines:
        return ""
    first = " ".join(lines[0].split())[:_STDERR_SHOWN]
    if _SECRET_LIKE.search(first):
        return "; stderr: (a line not shown: it may hold a secret)"
    return f"; stderr: {first}" if first else ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the program and whatever it started (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class CommandIssuer:
    def __init__(self, argv: Sequence[str], timeout: float = 10,
                 env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("the credential command needs a program to run")
        self.argv = list(argv)
        self.timeout = timeout
        self._env = dict(env or {})
        self._name = f"credential command {self.argv[0]}"

    def issue(self, instance_id: str, role: str, now: float) -> Credential:
        """Run the program once (blocking: call it off the event loop)."""
        out, err, code = self._run({"ECS_IMDS_INSTANCE_ID": instance_id, "ECS_IMDS_ROLE": role})
        if code < 0:
            raise CredentialError(f"{self._name}: killed by signal {-code}{stderr_summary(err)}")
        if code != 0:
            raise CredentialError(
                f"{self._name}: exited with code {code}{stderr_summary(err)}")
        where = f"{self._name} output"
        credential = from_json(load_json(out, where), where, now, 0, True)
        if credential.expiration <= now:
            raise CredentialError(f"{where}: the credential has already expired")
        return credential

    def _run(self, extra: dict[str, str]) -> tuple[bytes, bytes, int]:
        """(stdout, stderr, exit code) of one bounded run."""
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={**os.environ, **self._env,
                                                                 **extra},
                                    start_new_session=True)
        except OSError as exc:
            raise CredentialError(f"{self._name}: cannot run it: {exc.strerror}") from None
        assert proc.stdout is not None and proc.stderr is not None
        output = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        deadline = time.monotonic() + self.timeout
        with proc, selectors.DefaultSelector() as sel:
            for pipe in output:
                sel.register(pipe, selectors.EVENT_READ)
            while sel.get_map():
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_group(proc)
                    raise CredentialError(
                        f"{self._name}: no answer within {self.timeout:g} s, killed")
                for key, _ in sel.select(left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = output[key.fileobj]  # type: ignore[index]
                    buf += chunk
                    if len(buf) > OUTPUT_LIMIT:
                        _kill_group(proc)
                        raise CredentialError(
                            f"{self._name}: printed more than {OUTPUT_LIMIT} bytes, killed")
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CredentialError(
                    f"{self._name}: no answer within {self.timeout:g} s, killed") from None
        return bytes(output[proc.stdout]), bytes(output[proc.stderr]), code
