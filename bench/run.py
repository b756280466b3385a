"""Run the benchmarks under bench/ and collect their figures.

Every benchmark is a script `bench/bench_<name>.py` that prints its results as
lines `bench: <name> = <value> <unit>`. `make bench` runs them all;
`make bench BENCH=<file stem>` runs one (e.g. BENCH=bench_engine or engine).

`BENCH_QUICK=1 make bench` runs every benchmark at a tiny size (bench/quick.py):
what CI runs to prove each one still works. A benchmark fails when it exits
non-zero or prints no `bench:` figure; the runner then exits 1, naming it.
Each script runs in a fresh clone's conditions: .data/ may not exist yet.

The figures are also written as JSON (bench/figures.py: .data/bench/<time>.json or
$BENCH_JSON); `python bench/compare.py OLD NEW` prints what moved by more than 20 %.
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
sys.path.insert(0, str(ROOT))

from bench import figures as figure_file  # noqa: E402
from bench.quick import QUICK  # noqa: E402

FIGURE = re.compile(r"^bench: (\S+) = (\S+)(?: (.*))?$")


def main(argv: list[str]) -> int:
    wanted = argv[0] if argv else ""
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem in (wanted, f"bench_{wanted}")]
        if not scripts:
            print(f"no benchmark named {wanted!r}; have: {', '.join(p.stem for p in HERE.glob('bench_*.py'))}")
            return 2
    if QUICK:
        print("BENCH_QUICK=1: tiny sizes; checks that every benchmark runs and prints its figures", flush=True)
    figures: list[str] = []
    failed: list[str] = []
    started_state = figure_file.machine_state()
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
        printed = 0
        for line in process.stdout:
            print(line, end="", flush=True)
            if FIGURE.match(line.strip()):
                figures.append(line.strip())
                printed += 1
        code = process.wait()
        if code != 0:
            failed.append(f"{script.stem} (exit code {code})")
        elif printed == 0:
            failed.append(f"{script.stem} (no `bench:` figure printed)")
        print(f"== {script.stem} done in {time.monotonic() - started:.1f}s, {printed} figures", flush=True)
    print("\nsummary:")
    for figure in figures:
        print(f"  {figure}")
    parsed = dict(filter(None, (figure_file.parse_figure(f) for f in figures)))
    written = figure_file.write(ROOT, parsed, quick=QUICK, started=started_state)
    print(f"figures written to {written} (compare two runs: python bench/compare.py OLD NEW)")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
