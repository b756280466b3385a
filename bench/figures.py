"""`make bench`'s figures as JSON, and the comparison of two such files (the regression guard).

`bench/run.py` writes every `bench: <name> = <value> <unit>` line it saw, with the
machine's state (load average, cores, commit, BENCH_QUICK), to
`.data/bench/<UTC time>.json` (or $BENCH_JSON). `python bench/compare.py OLD NEW`
prints each figure that moved by more than 20 % and whether that is better or worse.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

FIGURE = re.compile(r"^bench: (\S+) = (\S+)(?: (.*))?$")
THRESHOLD = 0.20

# Units and name endings whose larger values are better; everything else (ms, s, bytes) is a cost.
HIGHER_IS_BETTER_UNITS = {"ratio", "msg/s", "runs/s", "episodes/s", "steps/s", "x"}
HIGHER_IS_BETTER_SUFFIXES = ("_per_s", "_ratio", "_speedup", "_share")


def parse_figure(line: str) -> tuple[str, dict[str, Any]] | None:
    """(name, {"value", "unit"}) of a `bench:` line; None for any other line or a non-number."""
    match = FIGURE.match(line.strip())
    if match is None:
        return None
    name, text, unit = match.group(1), match.group(2), match.group(3) or ""
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return name, {"value": value, "unit": unit.strip()}


def _commit(root: Path) -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip()


def machine_state() -> dict[str, Any]:
    return {"load_average": list(os.getloadavg()), "cpu_count": os.cpu_count()}


def write(root: Path, figures: dict[str, dict[str, Any]], *, quick: bool, started: dict[str, Any]) -> Path:
    """The run's figures as JSON; returns the file written."""
    target = os.environ.get("BENCH_JSON")
    if target:
        path = Path(target)
    else:
        path = root / ".data" / "bench" / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _commit(root),
        "quick": quick,
        "machine_at_start": started,
        "machine_at_end": machine_state(),
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def higher_is_better(name: str, unit: str) -> bool:
    return unit in HIGHER_IS_BETTER_UNITS or name.endswith(HIGHER_IS_BETTER_SUFFIXES)


def compare(old: dict[str, Any], new: dict[str, Any], threshold: float = THRESHOLD) -> list[str]:
    """One line per figure that moved by more than `threshold` (relative), worst first."""
    moved: list[tuple[float, str]] = []
    old_figures, new_figures = old["figures"], new["figures"]
    for name in sorted(old_figures.keys() & new_figures.keys()):
        before, after = old_figures[name]["value"], new_figures[name]["value"]
        unit = new_figures[name].get("unit", "")
        if before == after:
            continue
        change = (after - before) / abs(before) if before else float("inf")
        if abs(change) <= threshold:
            continue
        better = (change > 0) == higher_is_better(name, unit)
        verdict = "better" if better else "WORSE"
        moved.append(
            (
                0 if not better else 1,
                f"{verdict:6} {name}: {before:g} -> {after:g} {unit} ({change * 100:+.0f} %)",
            )
        )
    for name in sorted(old_figures.keys() - new_figures.keys()):
        moved.append((0, f"gone   {name} (was {old_figures[name]['value']:g})"))
    for name in sorted(new_figures.keys() - old_figures.keys()):
        moved.append((2, f"new    {name} = {new_figures[name]['value']:g} {new_figures[name].get('unit', '')}"))
    return [line for _, line in sorted(moved, key=lambda item: item[0])]
