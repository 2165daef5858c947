"""`issuer: command`: RAM credentials printed by an operator's program (like AWS's
`credential_process`), for real STS."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence

from ecs_imds.errors import CredentialError
from ecs_imds.protocol.credentials import DEFAULT_REFRESH, Credential, from_json, load_json

log = logging.getLogger(__name__)

_STDERR_TAIL = 300


def _stderr_tail(stderr: bytes) -> str:
    text = " ".join(stderr[-_STDERR_TAIL:].decode(errors="replace").split())
    return f"; stderr: {text}" if text else ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the program and whatever it started (it runs in its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class CommandIssuer:
    """Credentials printed by an operator's program, as AWS's `credential_process`.

    The program gets `ECS_IMDS_INSTANCE_ID` and `ECS_IMDS_ROLE` in its environment and prints
    SPEC §5's JSON (AccessKeyId, AccessKeySecret, SecurityToken, Expiration at least). Each
    (instance, role) is cached until `refresh_before` seconds before its Expiration; then the
    cached one keeps being served while a background thread fetches the next, so only a
    caller with no valid credential at all ever waits for the program. A failure is
    remembered for `retry_after` seconds, so a broken program is not run on every request.
    """

    def __init__(self, argv: Sequence[str], timeout: float = 10,
                 refresh_before: int = DEFAULT_REFRESH, retry_after: float = 5.0,
                 env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ValueError("the credential command needs a program to run")
        self.argv = list(argv)
        self.timeout = timeout
        self.refresh_before = refresh_before
        self.retry_after = retry_after
        self._env = dict(env or {})
        self._name = f"credential command {self.argv[0]}"
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Credential] = {}
        self._failures: dict[tuple[str, str], tuple[float, str]] = {}
        self._fetching: dict[tuple[str, str], threading.Lock] = {}
        self._refreshing: dict[tuple[str, str], threading.Thread] = {}

    def issue(self, instance_id: str, role: str, now: float) -> Credential:
        key = (instance_id, role)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now < cached.expiration:
            if now >= cached.expiration - self.refresh_before:
                self._refresh_in_background(key, now)
            return cached
        return self._fetch_waiting(key, now)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for background refreshes in flight; True if none is left running."""
        with self._lock:
            threads = list(self._refreshing.values())
        for thread in threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in threads)

    def _fetch_waiting(self, key: tuple[str, str], now: float) -> Credential:
        """Run the program while the caller waits; one run at a time per (instance, role)."""
        with self._lock:
            gate = self._fetching.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                cached = self._cache.get(key)
                failure = self._failures.get(key)
            if cached is not None and now < cached.expiration:
                return cached  # fetched by another caller while this one waited
            if failure is not None and now < failure[0] + self.retry_after:
                raise CredentialError(failure[1])
            return self._fetch(key, now)

    def _refresh_in_background(self, key: tuple[str, str], now: float) -> None:
        with self._lock:
            if key in self._refreshing:
                return
            failure = self._failures.get(key)
            if failure is not None and now < failure[0] + self.retry_after:
                return
            thread = threading.Thread(target=self._refresh, args=(key, now), daemon=True,
                                      name=f"ecs-imds credentials {key[0]} {key[1]}")
            self._refreshing[key] = thread
            thread.start()

    def _refresh(self, key: tuple[str, str], now: float) -> None:
        try:
            self._fetch(key, now)
        except CredentialError as exc:
            log.warning("refreshing RAM credentials of instance %s role %s failed, "
                        "serving the cached ones until they expire: %s", key[0], key[1], exc)
        finally:
            with self._lock:
                self._refreshing.pop(key, None)

    def _fetch(self, key: tuple[str, str], now: float) -> Credential:
        try:
            credential = self._run(key[0], key[1], now)
        except CredentialError as exc:
            with self._lock:
                self._failures[key] = (now, str(exc))
            raise
        with self._lock:
            self._failures.pop(key, None)
            cached = self._cache.get(key)
            if cached is None or credential.expiration >= cached.expiration:
                self._cache[key] = credential
            for stale in [k for k, c in self._cache.items() if c.expiration <= now]:
                del self._cache[stale]
            return self._cache.get(key, credential)

    def _run(self, instance_id: str, role: str, now: float) -> Credential:
        env = {**os.environ, **self._env,
               "ECS_IMDS_INSTANCE_ID": instance_id, "ECS_IMDS_ROLE": role}
        try:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, start_new_session=True)
        except OSError as exc:
            raise CredentialError(f"{self._name}: cannot run it: {exc.strerror}") from None
        with proc:
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CredentialError(
                    f"{self._name}: no answer within {self.timeout:g} s, killed") from None
        if proc.returncode < 0:
            raise CredentialError(
                f"{self._name}: killed by signal {-proc.returncode}{_stderr_tail(err)}")
        if proc.returncode != 0:
            raise CredentialError(
                f"{self._name}: exited with code {proc.returncode}{_stderr_tail(err)}")
        where = f"{self._name} output"
        credential = from_json(load_json(out, where), where, now, 0, True)
        if credential.expiration <= now:
            raise CredentialError(f"{where}: the credential has already expired")
        return credential
