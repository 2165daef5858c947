"""`make fuzz`: the data plane fuzzed at length — tests/fuzzer.py for a million requests
(tests/test_fuzz.py runs the same briefly in `make test`).

    python bench/fuzz.py [--requests 1000000] [--seed N] [--threads 8]

One server (one process, SQLite, the builtin issuer, no rate limit: every request is
answered as itself) with the fuzzer's instances on their source addresses, all on loopback.
Prints the seed, how many requests and connections were sent, the answers by status, and
what was found: 5xx answers, answers naming another instance, tracebacks in the server's
log. The fuzzer stops at the first request answered wrong and says which (with the seed,
the run can be repeated); the exit status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from attacks import start  # noqa: E402
from fuzzer import NAMES, Failure, Fuzzer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 32))
    parser.add_argument("--threads", type=int, default=8)
    opts = parser.parse_args()
    print(f"seed {opts.seed}, {opts.requests:,} requests, {opts.threads} threads", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ecs-imds-fuzz-"))
    target = start("sqlite", work, NAMES, limits={"rate": 0},
                   credentials={"issuer": "builtin"})
    began = time.monotonic()
    found: list[str] = []
    fuzzer = Fuzzer(target, opts.seed, opts.threads)

    shown = [0]

    def progress(sent: int) -> None:
        if sent - shown[0] >= 50_000:
            shown[0] = sent
            print(f"  {sent:,} requests, {time.monotonic() - began:.0f} s", flush=True)

    try:
        fuzzer.run(opts.requests, progress)
    except Failure as exc:
        found.append(str(exc))
    finally:
        seconds = time.monotonic() - began
        log = target.srv.log()
        target.close()
        shutil.rmtree(work, ignore_errors=True)
    stats = fuzzer.stats
    fives = sum(n for key, n in stats.items() if key.startswith("status 5"))
    tracebacks = log.count("Traceback")
    cross = sum("another instance's answer" in f for f in found)
    print(f"seed {opts.seed}: {stats['requests']:,} requests on {stats['connections']:,} "
          f"connections in {seconds:.0f} s ({stats['requests'] / seconds:,.0f}/s)")
    print("answers: " + ", ".join(f"{key.split()[1]}: {n:,}" for key, n in
                                   sorted(stats.items()) if key.startswith("status ")))
    print(f"5xx: {fives}, cross-instance answers: {cross}, tracebacks in the log: {tracebacks}"
          f", requests answered wrong: {len(found) - cross}")
    for failure in found:
        print(failure)
    if found or fives or tracebacks:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
