"""The sweeps that chose the optimized presets, run by the tuner (one command, stored in the registry).

With a stack up (`make run`, or the gateway in TAXI_DRIVER_GATEWAY with TAXI_DRIVER_API_KEY):
    .venv/bin/python bench/tuner_presets.py [algorithm ...]
The deciding sweeps are grids with 20 seeds per trial (100-119, the seeds bench_trainer.py
--presets-only measures); SARSA's is preceded by a TPE exploration of four parameters (5 seeds
per trial). Objective: the share of start states where the greedy policy is optimal, averaged
over the seeds (1.0 = exactly optimal for every seed), ties broken by training time. Fixed
request ids make a re-run return the same sweeps (`--fresh` starts new ones). Prints the trials
as they land and the best.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taxidriver.cli import main as cli

COMMON = ["--base-seed", "100", "--parallelism", "2", "--test-episodes", "100"]
FIXED = {"epsilon": 1.0, "max_steps": 200}
# Per algorithm, the sweeps in order: each a sampler, seeds per trial, trials, searched and fixed values.
SWEEPS: dict[str, list[dict[str, Any]]] = {
    "expected_sarsa": [
        {
            "name": "1",
            "sampler": "grid",
            "seeds": 20,
            "trials": 6,
            "params": ["epsilon_min=0.1,0.2,0.3", "training_episodes=40000,60000"],
            "fixed": {"alpha": 1.0, "gamma": 0.9, "epsilon_decay": 0.995},
        }
    ],
    "double_q_learning": [
        {
            "name": "1",
            "sampler": "grid",
            "seeds": 20,
            "trials": 4,
            "params": ["epsilon_min=0.2,0.3", "training_episodes=40000,60000"],
            "fixed": {"alpha": 1.0, "gamma": 0.99, "epsilon_decay": 0.995},
        }
    ],
    "sarsa": [
        # TPE over four parameters, 5 seeds per trial: where SARSA reaches the optimum at all.
        {
            "name": "explore-1",
            "sampler": "tpe",
            "seeds": 5,
            "trials": 16,
            "params": ["alpha=0.05:1:log", "gamma=0.9:1", "epsilon_decay=0.99:0.9999", "epsilon_min=0:0.1"],
            "fixed": {"training_episodes": 40000},
        },
        # Round values near TPE's best, 20 seeds each.
        {
            "name": "1",
            "sampler": "grid",
            "seeds": 20,
            "trials": 4,
            "params": ["alpha=0.05,0.055", "epsilon_decay=0.99,0.9925"],
            "fixed": {"gamma": 0.93, "epsilon_min": 0.01, "training_episodes": 40000},
        },
    ],
    "monte_carlo": [
        # Not at the optimum: how far it goes. TPE over four parameters, 5 seeds per trial...
        {
            "name": "explore-1",
            "sampler": "tpe",
            "seeds": 5,
            "trials": 16,
            "params": ["alpha=0.02:0.5:log", "gamma=0.9:1", "epsilon_decay=0.99:0.9999", "epsilon_min=0.01:0.3"],
            "fixed": {"training_episodes": 50000},
        },
        # ... then its best, rounded, with 20 seeds, at 50,000 and 100,000 episodes.
        {
            "name": "1",
            "sampler": "grid",
            "seeds": 20,
            "trials": 2,
            "params": ["training_episodes=50000,100000"],
            "fixed": {"alpha": 0.02, "gamma": 0.91, "epsilon_min": 0.25, "epsilon_decay": 0.9966},
        },
    ],
}


def main(argv: list[str]) -> int:
    fresh = "--fresh" in argv
    algorithms = [a for a in argv if a != "--fresh"] or list(SWEEPS)
    worst = 0
    for algorithm in algorithms:
        for sweep in SWEEPS[algorithm]:
            args = ["--timeout", "300", "sweep", "start", algorithm, *COMMON]
            args += ["--sampler", sweep["sampler"], "--seeds", str(sweep["seeds"]), "--trials", str(sweep["trials"])]
            for spec in sweep["params"]:
                args += ["--param", spec]
            for name, value in {**FIXED, **sweep["fixed"]}.items():
                args += ["--fixed", f"{name}={value}"]
            request_id = f"preset-{algorithm.replace('_', '-')}-{sweep['name']}"
            if fresh:
                request_id += f"-{uuid.uuid4().hex[:8]}"
            args += ["--request-id", request_id, "--watch"]
            print(f"== {algorithm}: taxi-driver {' '.join(args)}", flush=True)
            worst = max(worst, cli(args))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
