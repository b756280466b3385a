"""The sweeps that chose the optimized presets: one command, run by the tuner, stored in the registry.

    make preset-sweeps                                        # every algorithm, full size
    make preset-sweeps PRESET_SWEEPS_SIZE=reduced             # fewer seeds and trials (minutes, not hours)
    .venv/bin/python bench/tuner_presets.py [ALGORITHM ...] [--size full|reduced] [--gateway HOST:PORT]

Where: the stack whose gateway is given (--gateway, or TAXI_DRIVER_GATEWAY; the key in
TAXI_DRIVER_API_KEY, e.g. the `make run` stack), else a stack of its own like `make run`'s
(taxidriver.devstack: embedded PostgreSQL in .data, the same registry `make run` serves; the `dev`
admin's key), started on free ports and stopped at the end. The sweeps stay in that registry:
`taxi-driver sweep list` / `sweep show` find them.

What: per algorithm the sweeps below in order (SARSA and Monte Carlo: a TPE exploration, then a
grid of round values near its best; Expected SARSA and Double Q-learning: a grid). Objective: the
share of start states where the greedy policy is optimal, averaged over the seeds (1.0 = exactly
optimal for every seed), ties broken by training time. Fixed seeds: base seed 100 (the runs use
seeds 100, 101, ...; the seeds bench_trainer.py --presets-only measures) seeds the sampler too,
and the TPE explorations ask one trial at a time (parallelism 1), so a sweep asks the same
parameters whenever it is run. Fixed request ids (`preset-<algorithm>-<sweep>`, `-reduced` at the
reduced size): a re-run returns the sweeps already stored instead of running them again
(`--fresh` starts new ones under new ids).

Prints the trials as they land, then per algorithm the best configuration of its deciding (last)
sweep: its parameters, the mean, IQM and 95 % bootstrap CI across seeds, and the share of seeds
whose greedy policy is exactly optimal on all 300 start states. --summary writes the same as
Markdown (bench/preset_sweeps.md by default), the file the preset notes in
trainer_service/params.py cite.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taxidriver.cli import parse_range
from taxidriver.client import TaxiDriverClient, gateway_from_env
from taxidriver.tuner.v1 import tuner_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
BASE_SEED = 100
TEST_EPISODES = 100
SUMMARY = ROOT / "bench" / "preset_sweeps.md"
SAMPLERS = {"tpe": pb.SAMPLER_TPE, "grid": pb.SAMPLER_GRID}
# Every sweep starts epsilon at 1 and caps an episode at 200 steps (Taxi's own limit).
FIXED = {"epsilon": 1.0, "max_steps": 200}
# The reduced size: at most this many seeds per trial and trials per TPE exploration.
REDUCED_SEEDS = {"tpe": 2, "grid": 3}
REDUCED_TPE_TRIALS = 6


@dataclass(frozen=True)
class Sweep:
    """One sweep: its name (in its request id), sampler, seeds per trial, trials, searched and fixed values."""

    name: str
    sampler: str
    seeds: int
    trials: int
    params: tuple[str, ...]
    fixed: dict[str, float] = field(default_factory=dict)

    def reduced(self) -> Sweep:
        trials = min(self.trials, REDUCED_TPE_TRIALS) if self.sampler == "tpe" else self.trials
        return replace(
            self, name=f"{self.name}-reduced", seeds=min(self.seeds, REDUCED_SEEDS[self.sampler]), trials=trials
        )

    def spec(self, algorithm: str) -> pb.SweepSpec:
        spec = pb.SweepSpec(
            algorithm=algorithm,
            search_space=[parse_range(text) for text in self.params],
            n_trials=self.trials,
            # TPE's next ask depends on every earlier answer: one trial at a time keeps it reproducible.
            parallelism=1 if self.sampler == "tpe" else 2,
            seeds_per_trial=self.seeds,
            sampler=SAMPLERS[self.sampler],
            base_seed=BASE_SEED,
            test_episodes=TEST_EPISODES,
        )
        for name, value in {**FIXED, **self.fixed}.items():
            spec.fixed_params[name] = float(value)
        return spec


# Per algorithm, its sweeps in order; the last one decides the preset.
SWEEPS: dict[str, list[Sweep]] = {
    "expected_sarsa": [
        Sweep("1", "grid", 20, 6, ("epsilon_min=0.1,0.2,0.3", "training_episodes=40000,60000"),
              {"alpha": 1.0, "gamma": 0.9, "epsilon_decay": 0.995}),
    ],
    "double_q_learning": [
        Sweep("1", "grid", 20, 4, ("epsilon_min=0.2,0.3", "training_episodes=40000,60000"),
              {"alpha": 1.0, "gamma": 0.99, "epsilon_decay": 0.995}),
    ],
    "sarsa": [
        # Where SARSA reaches the optimum at all: TPE over four parameters, 5 seeds per trial.
        Sweep("explore-1", "tpe", 5, 16,
              ("alpha=0.05:1:log", "gamma=0.9:1", "epsilon_decay=0.99:0.9999", "epsilon_min=0:0.1"),
              {"training_episodes": 40000}),
        # Round values near TPE's best, 20 seeds each.
        Sweep("1", "grid", 20, 4, ("alpha=0.05,0.055", "epsilon_decay=0.99,0.9925"),
              {"gamma": 0.93, "epsilon_min": 0.01, "training_episodes": 40000}),
    ],
    "monte_carlo": [
        # Not at the optimum: how far it goes. TPE over four parameters, 5 seeds per trial...
        Sweep("explore-1", "tpe", 5, 16,
              ("alpha=0.02:0.5:log", "gamma=0.9:1", "epsilon_decay=0.99:0.9999", "epsilon_min=0.01:0.3"),
              {"training_episodes": 50000}),
        # ... then its best, rounded, with 20 seeds, at 50,000 and 100,000 episodes.
        Sweep("1", "grid", 20, 2, ("training_episodes=50000,100000",),
              {"alpha": 0.02, "gamma": 0.91, "epsilon_min": 0.25, "epsilon_decay": 0.9966}),
    ],
}  # fmt: skip


def request_id(algorithm: str, sweep: Sweep) -> str:
    return f"preset-{algorithm.replace('_', '-')}-{sweep.name}"


def optimal_seeds(trial: pb.Trial) -> tuple[int, int]:
    """Seeds whose greedy policy is optimal on every start state (objective 1.0), of the trial's seeds."""
    return sum(value >= 1.0 for value in trial.values), len(trial.values)


def params_text(sweep: pb.Sweep, trial: pb.Trial) -> str:
    values = {**dict(sweep.spec.fixed_params), **dict(trial.params)}
    return ", ".join(f"{name} {value:g}" for name, value in sorted(values.items()) if name not in FIXED)


@dataclass
class Outcome:
    algorithm: str
    request_id: str
    sweep: pb.Sweep

    @property
    def best(self) -> pb.Trial | None:
        return next((t for t in self.sweep.trials if t.number == self.sweep.best_trial), None)

    def line(self) -> str:
        best = self.best
        state = pb.SweepState.Name(self.sweep.state).removeprefix("SWEEP_STATE_").lower()
        head = f"{self.algorithm} {self.request_id} (sweep {self.sweep.sweep_id}, {state})"
        if best is None:
            return f"{head}: no complete trial"
        stats = best.statistics
        hit, seeds = optimal_seeds(best)
        return (
            f"{head}: best trial {best.number} of {self.sweep.trials_complete}: {params_text(self.sweep, best)};"
            f" mean {best.value:.4f}, IQM {stats.iqm:.4f}, 95% CI [{stats.ci_low:.4f}, {stats.ci_high:.4f}];"
            f" exactly optimal for {hit}/{seeds} seeds ({hit / max(seeds, 1):.2f})"
        )


def run_sweep(client: TaxiDriverClient, algorithm: str, sweep: Sweep, fresh: bool) -> Outcome:
    ident = request_id(algorithm, sweep) + (f"-{uuid.uuid4().hex[:8]}" if fresh else "")
    spec = sweep.spec(algorithm)
    started = client.start_sweep(spec, request_id=ident)
    print(
        f"== {algorithm} {ident}: sweep {started.sweep_id}, {pb.Sampler.Name(spec.sampler)}, {spec.n_trials} trials"
        f" of {spec.seeds_per_trial} seeds, {started.trials_complete} complete already",
        flush=True,
    )
    for message in client.watch_sweep(started.sweep_id):
        if message.HasField("trial"):
            trial = message.trial
            hit, seeds = optimal_seeds(trial)
            print(
                f"   trial {trial.number}: {pb.TrialState.Name(trial.state).removeprefix('TRIAL_STATE_').lower()}"
                f" value {trial.value:.4f} IQM {trial.statistics.iqm:.4f} optimal {hit}/{seeds}"
                f" train {trial.training_seconds:.1f}s: {params_text(started, trial)}",
                flush=True,
            )
    outcome = Outcome(algorithm, ident, client.get_sweep(started.sweep_id))
    print(f"   {outcome.line()}", flush=True)
    return outcome


def summary(outcomes: list[Outcome], size: str, command: str) -> str:
    lines = [
        "# The preset sweeps",
        "",
        f"Written by `{command}` (size: {size}); the sweeps are stored in the registry it ran against",
        "(`taxi-driver sweep show <sweep>`). Objective: the share of the 300 start states where the greedy",
        "policy is optimal, per seed; statistics across the seeds of the best trial (IQM and 95 % stratified",
        "bootstrap CI as in rliable). A sweep id is that registry's; the request id names the sweep anywhere.",
        "",
        "| algorithm | request id | sweep id | trials | seeds | best configuration | mean | IQM | 95 % CI"
        " | exactly optimal seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        sweep, best = outcome.sweep, outcome.best
        cells = [outcome.algorithm, f"`{outcome.request_id}`", sweep.sweep_id,
                 f"{sweep.trials_complete}/{sweep.spec.n_trials}", str(sweep.spec.seeds_per_trial)]  # fmt: skip
        if best is None:
            cells += ["(no complete trial)", "", "", "", ""]
        else:
            hit, seeds = optimal_seeds(best)
            stats = best.statistics
            cells += [params_text(sweep, best), f"{best.value:.4f}", f"{stats.iqm:.4f}",
                      f"[{stats.ci_low:.4f}, {stats.ci_high:.4f}]", f"{hit}/{seeds}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@contextmanager
def own_stack(data_dir: Path) -> Iterator[tuple[str, str]]:
    """A stack like `make run`'s (no first training) on free ports; yields (gateway, dev key)."""
    from taxidriver.devstack import KEY_FILE, Stack, dev_api_key
    from taxidriver.embedded_pg import EmbeddedPostgres, free_port

    names = ("registry", "trainer", "tuner", "gateway", "web")
    stack = Stack(data_dir, {name: free_port() for name in names})
    # Ctrl-C (KeyboardInterrupt) and SIGTERM (SystemExit) end the sweeps' wait; the stack stops below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("DATABASE_URL", "")
    # A PostgreSQL already serving this folder (`make run` is up) is used and left running.
    shared = not database_url and EmbeddedPostgres(data_dir=data_dir / "postgres")._running_port() is not None
    try:
        database_url = database_url or stack.start_postgres()
        print(f"preset-sweeps: own stack on {database_url.rsplit('@', 1)[-1]} (data in {data_dir})", flush=True)
        stack.start_services(database_url)
        key, _ = dev_api_key(database_url, data_dir / KEY_FILE)
        yield f"127.0.0.1:{stack.ports['gateway']}", key
    finally:
        if shared:
            stack.postgres = None
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithms", nargs="*", metavar="ALGORITHM", help=f"of {', '.join(SWEEPS)} (default: all)")
    parser.add_argument("--size", choices=["full", "reduced"], default=os.environ.get("PRESET_SWEEPS_SIZE", "full"))
    parser.add_argument("--gateway", default=os.environ.get("TAXI_DRIVER_GATEWAY", ""), help="else an own stack")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TAXI_DRIVER_DATA_DIR", ROOT / ".data")))
    parser.add_argument("--fresh", action="store_true", help="new sweeps under new request ids")
    parser.add_argument("--summary", default=str(SUMMARY), help="Markdown summary to write ('' for none)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.algorithms) - set(SWEEPS))
    if unknown:
        parser.error(f"no preset sweeps for {', '.join(unknown)}; choose among {', '.join(SWEEPS)}")
    algorithms = args.algorithms or list(SWEEPS)
    command = "make preset-sweeps" + ("" if args.size == "full" else f" PRESET_SWEEPS_SIZE={args.size}")
    if args.algorithms:
        command += f" PRESET_SWEEPS_ARGS='{' '.join(args.algorithms)}'"

    @contextmanager
    def target() -> Iterator[tuple[str, str]]:
        if args.gateway:
            yield args.gateway, os.environ.get("TAXI_DRIVER_API_KEY", "")
        else:
            with own_stack(args.data_dir.resolve()) as opened:
                yield opened

    outcomes: list[Outcome] = []
    with target() as (gateway, key), TaxiDriverClient(gateway or gateway_from_env(), api_key=key, timeout=60) as client:
        for algorithm in algorithms:
            for sweep in SWEEPS[algorithm]:
                sized = sweep if args.size == "full" else sweep.reduced()
                outcomes.append(run_sweep(client, algorithm, sized, args.fresh))
    print(f"\npreset sweeps ({args.size} size), the deciding sweep of each algorithm:")
    deciding = [next(o for o in reversed(outcomes) if o.algorithm == a) for a in algorithms]
    for outcome in deciding:
        print(f"  {outcome.line()}")
    if args.summary:
        Path(args.summary).write_text(summary(outcomes, args.size, command))
        print(f"wrote {args.summary}")
    return 0 if all(o.sweep.state == pb.SWEEP_STATE_SUCCEEDED for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
