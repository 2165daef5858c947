"""The data plane fuzzed (tests/fuzzer.py): 20,000 requests against one server with several
instances, under a fixed seed and a random one (its value is in the test's name).

No answer is a 5xx, every complete request is answered exactly once and as it is when
asked alone, no instance is ever given another's answer, and the server logs no traceback.
`make fuzz` runs the same for a million requests (bench/fuzz.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from attacks import Hostile, start
from fuzzer import NAMES, Fuzzer

FIXED_SEED = 20261203
REQUESTS = 10_000  # per seed


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    h = start("sqlite", tmp_path_factory.mktemp("fuzz"), NAMES, limits={"rate": 0},
              credentials={"issuer": "builtin"})
    yield h
    h.close()


@pytest.mark.parametrize("seed", [FIXED_SEED, random.SystemRandom().randrange(1 << 32)],
                         ids=lambda seed: f"seed-{seed}")
def test_fuzzed_requests(target: Hostile, seed: int) -> None:
    fuzzer = Fuzzer(target, seed)
    stats = fuzzer.run(REQUESTS)
    assert stats["requests"] >= REQUESTS
    assert not any(key.startswith("status 5") for key in stats)
    log = target.srv.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
