"""The sweeps that chose the optimized presets, run by the tuner (one command, stored in the registry).

With a stack up (`make run`, or the gateway in TAXI_DRIVER_GATEWAY with TAXI_DRIVER_API_KEY):
    .venv/bin/python bench/tuner_presets.py [algorithm ...]
Each sweep is a grid over the parameters that mattered (the exploration floor and the number of
episodes; the others fixed at the values the notes in trainer_service/params.py give), 20 seeds
per trial (100-119, the seeds bench_trainer.py --presets-only measures), objective: the share of
start states where the greedy policy is optimal, averaged over the seeds (1.0 = exactly optimal
for every seed), ties broken by training time. Its fixed request_id makes a re-run return the
same sweep (`--fresh` starts a new one). Prints the trials as they land and the best.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taxidriver.cli import main as cli

COMMON = ["--seeds", "20", "--base-seed", "100", "--sampler", "grid", "--parallelism", "2", "--test-episodes", "100"]
FIXED = {"epsilon": 1.0, "max_steps": 200}
SWEEPS: dict[str, dict[str, object]] = {
    "expected_sarsa": {
        "fixed": {"alpha": 1.0, "gamma": 0.9, "epsilon_decay": 0.995},
        "params": ["epsilon_min=0.1,0.2,0.3", "training_episodes=40000,60000"],
        "trials": 6,
    },
    "double_q_learning": {
        "fixed": {"alpha": 1.0, "gamma": 0.99, "epsilon_decay": 0.995},
        "params": ["epsilon_min=0.2,0.3", "training_episodes=40000,60000"],
        "trials": 4,
    },
}


def main(argv: list[str]) -> int:
    fresh = "--fresh" in argv
    algorithms = [a for a in argv if a != "--fresh"] or list(SWEEPS)
    worst = 0
    for algorithm in algorithms:
        sweep = SWEEPS[algorithm]
        args = ["--timeout", "300", "sweep", "start", algorithm, *COMMON, "--trials", str(sweep["trials"])]
        for spec in sweep["params"]:  # type: ignore[attr-defined]
            args += ["--param", spec]
        for name, value in {**FIXED, **sweep["fixed"]}.items():  # type: ignore[dict-item]
            args += ["--fixed", f"{name}={value}"]
        request_id = f"preset-{algorithm.replace('_', '-')}-1" + (f"-{uuid.uuid4().hex[:8]}" if fresh else "")
        args += ["--request-id", request_id, "--watch"]
        print(f"== {algorithm}: taxi-driver {' '.join(args)}", flush=True)
        worst = max(worst, cli(args))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
