"""Run the benchmarks under bench/ and collect their figures.

Every benchmark is a script `bench/bench_<name>.py` that prints its results as
lines `bench: <name> = <value> <unit>`. `make bench` runs them all;
`make bench BENCH=<file stem>` runs one (e.g. BENCH=bench_engine or engine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURE = re.compile(r"^bench: (\S+) = (\S+)(?: (.*))?$")


def main(argv: list[str]) -> int:
    wanted = argv[0] if argv else ""
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem in (wanted, f"bench_{wanted}")]
        if not scripts:
            print(f"no benchmark named {wanted!r}; have: {', '.join(p.stem for p in HERE.glob('bench_*.py'))}")
            return 2
    figures: list[str] = []
    failed: list[str] = []
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            if FIGURE.match(line.strip()):
                figures.append(line.strip())
        if process.wait() != 0:
            failed.append(script.stem)
        print(f"== {script.stem} done in {time.monotonic() - started:.1f}s", flush=True)
    print("\nsummary:")
    for figure in figures:
        print(f"  {figure}")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
