"""Compare two `make bench` JSON files: `python bench/compare.py OLD.json NEW.json [--threshold 0.2]`.

Prints every figure that moved by more than the threshold (20 % by default), WORSE ones first,
with the load average of both runs (figures from a loaded 2-core machine are noisy: re-run
before believing a move). Exits 1 when a figure got worse, so CI can flag it; 0 otherwise.
Quick runs (BENCH_QUICK=1) measure nothing and are refused unless both are quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import THRESHOLD, compare


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="relative change reported (0.2 = 20 %%)")
    args = parser.parse_args(argv)
    old, new = (json.loads(path.read_text()) for path in (args.old, args.new))
    if old.get("quick") != new.get("quick"):
        print("one file is a BENCH_QUICK=1 run and the other is not: their figures are not comparable")
        return 2
    for label, document in (("old", old), ("new", new)):
        load = document.get("machine_at_start", {}).get("load_average", [])
        print(f"{label}: {document.get('commit', '')[:12]} at {document.get('written_at')}, load average {load}")
    lines = compare(old, new, args.threshold)
    if not lines:
        print(f"no figure moved by more than {args.threshold * 100:.0f} %")
    for line in lines:
        print(line)
    return 1 if any(line.startswith("WORSE") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
