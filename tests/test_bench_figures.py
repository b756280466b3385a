"""The benchmark regression guard: figures parsed from `bench:` lines, written as JSON, compared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.figures import compare, parse_figure

ROOT = Path(__file__).resolve().parent.parent


def document(**figures: tuple[float, str]) -> dict:
    return {"quick": False, "figures": {name: {"value": v, "unit": u} for name, (v, u) in figures.items()}}


def test_bench_lines_parse_into_named_figures() -> None:
    assert parse_figure("bench: query_p99_ms_list = 4.20 ms") == ("query_p99_ms_list", {"value": 4.2, "unit": "ms"})
    assert parse_figure("bench: bytes_per_run_6000_episodes = 135,578 bytes")[1]["value"] == 135578
    assert parse_figure("  seeded 100000 runs") is None


def test_moves_beyond_twenty_percent_are_reported_with_their_direction() -> None:
    old = document(
        query_p99_ms_list=(10.0, "ms"),
        ingest_episodes_per_s=(1_000_000, "episodes/s"),
        gateway_stream_throughput_ratio=(0.9, "ratio"),
        steady=(5.0, "ms"),
    )
    new = document(
        query_p99_ms_list=(13.0, "ms"),  # +30 % of a cost: worse
        ingest_episodes_per_s=(700_000, "episodes/s"),  # -30 % of a rate: worse
        gateway_stream_throughput_ratio=(1.2, "ratio"),  # +33 % of a ratio: better
        steady=(5.5, "ms"),  # +10 %: not reported
    )
    lines = compare(old, new)
    assert len(lines) == 3
    assert lines[0].startswith("WORSE") and lines[1].startswith("WORSE")
    assert {line.split()[1].rstrip(":") for line in lines[:2]} == {"query_p99_ms_list", "ingest_episodes_per_s"}
    assert lines[2].startswith("better gateway_stream_throughput_ratio")


def test_the_compare_script_exits_one_on_a_regression(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(document(end_to_end_run_s=(0.2, "s"))))
    new.write_text(json.dumps(document(end_to_end_run_s=(0.5, "s"))))
    script = [sys.executable, str(ROOT / "bench" / "compare.py")]
    worse = subprocess.run([*script, str(old), str(new)], capture_output=True, text=True, check=False)
    assert worse.returncode == 1
    assert "WORSE  end_to_end_run_s: 0.2 -> 0.5 s (+150 %)" in worse.stdout
    same = subprocess.run([*script, str(old), str(old)], capture_output=True, text=True, check=False)
    assert same.returncode == 0
    assert "no figure moved" in same.stdout
