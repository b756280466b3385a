"""`BENCH_QUICK=1`: every benchmark at a tiny size.

CI runs `BENCH_QUICK=1 make bench` to prove that each benchmark still runs and
prints its `bench:` figures; quick figures measure nothing and are never
compared with full runs. A new `bench/bench_<name>.py` takes its sizes from
`size(full, quick)` so that it stays cheap in CI.
"""

from __future__ import annotations

import os

QUICK = os.environ.get("BENCH_QUICK", "").strip() not in ("", "0")


def size(full: int, quick: int) -> int:
    """`full` normally, `quick` under BENCH_QUICK=1."""
    return quick if QUICK else full
