"""What runs inside a worker process: one training run at a time, never on an event loop.

The worker trains in chunks, checking its control word between chunks (cancel or
shutdown), and posts messages to the parent's outbox:
  ("ready", worker, None), ("started", run_id, {...}), ("episodes", run_id, EpisodeColumns),
  ("checkpoint", run_id, {...}), ("done" | "cancelled" | "interrupted" | "failed", run_id, {...}),
  ("plots", run_id, {name: png}), ("idle", worker, None).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import numpy as np

from trainer_service.algorithms import ALGORITHMS
from trainer_service.engine import (
    EpisodeColumns,
    TrainingParams,
    TrainingState,
    checkpoint_bytes,
    load_checkpoint,
    model_q,
    q_table_bytes,
    train_chunk,
)
from trainer_service.envs import TransitionTable, transition_table
from trainer_service.evaluation import (
    TEST_SEEDS_VERSION,
    EnvScore,
    Optimum,
    evaluate_on_env,
    is_optimal_everywhere,
    optimum,
    policy_optimality,
)
from trainer_service.metrics import (
    SystemSampler,
    brute_force_metrics,
    improvement_metrics,
    learning_stability,
    test_metrics,
    training_summary,
)
from trainer_service.params import RunSpec

log = logging.getLogger(__name__)

# Control word values, written by the parent, read between chunks.
CONTROL_NONE, CONTROL_CANCEL, CONTROL_INTERRUPT = 0, 1, 2
# Episodes per jitted call: the granularity of cancel, convergence checks and time budgets.
CHUNK_EPISODES = 100
# Send episodes to the parent at least this often.
SEND_EVERY_S = 0.2
SEND_EVERY_EPISODES = 5000
# The random baseline is capped: beyond this it only costs time (each episode ~200 steps).
MAX_BASELINE_EPISODES = 1000


@dataclass(frozen=True)
class Job:
    run_id: str
    spec: RunSpec
    checkpoint: bytes | None = None  # resume from this state


class _Caches:
    """Per-process caches: tables, optima and the random baseline are the same for every run."""

    tables: dict[str, tuple[TransitionTable, Optimum]] = {}
    baselines: dict[tuple[str, int], EnvScore] = {}

    @classmethod
    def table(cls, env_id: str) -> tuple[TransitionTable, Optimum]:
        if env_id not in cls.tables:
            table = transition_table(env_id)
            cls.tables[env_id] = (table, optimum(table))
        return cls.tables[env_id]

    @classmethod
    def baseline(cls, env_id: str, episodes: int) -> EnvScore:
        # Deterministic: the random agent's actions are seeded by the fixed test seeds.
        key = (env_id, min(episodes, MAX_BASELINE_EPISODES))
        if key not in cls.baselines:
            cls.baselines[key] = evaluate_on_env(env_id, key[1], None)
        return cls.baselines[key]


def warm_up() -> None:
    """Compile (or load from cache) every kernel and fill the caches before the first run."""
    table, _ = _Caches.table("Taxi-v3")
    params = TrainingParams(0.5, 0.9, 0.1, 0.99, 10)
    for name in ALGORITHMS:
        train_chunk(name, table, params, TrainingState.fresh(table, 0, 1.0), 2)
    _Caches.baseline("Taxi-v3", 100)
    import matplotlib  # noqa: F401 - imported now so the first plot is not slow

    from trainer_service import plots  # noqa: F401


def _training_params(spec: RunSpec) -> TrainingParams:
    h = spec.hyperparameters
    return TrainingParams(h.alpha, h.gamma, h.epsilon_min, h.epsilon_decay, h.max_steps)


def execute(job: Job, outbox: Queue[Any], control: Synchronized[int]) -> None:  # type: ignore[type-var]
    """Trains, evaluates and reports one run; every outcome ends with a terminal message."""
    try:
        _execute(job, outbox, control)
    except Exception as exc:
        log.exception("run %s failed", job.run_id)
        outbox.put(("failed", job.run_id, {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}))


def _execute(job: Job, outbox: Queue[Any], control: Synchronized[int]) -> None:  # type: ignore[type-var]
    run_id, spec = job.run_id, job.spec
    sampler = SystemSampler()
    table, best = _Caches.table(spec.env_id)
    params = _training_params(spec)
    total = spec.hyperparameters.training_episodes
    if job.checkpoint is not None:
        state, history = load_checkpoint(job.checkpoint)
        parts = [history] if len(history) else []
    else:
        state, parts = TrainingState.fresh(table, spec.seed, spec.hyperparameters.epsilon), []
    resumed_from = state.episode
    outbox.put(("started", run_id, {"episode": state.episode}))

    training_seconds, stop_reason = 0.0, "episodes_done"
    convergence_episode: int | None = None
    q_changes: list[tuple[int, float]] = []
    previous_q = model_q(spec.algorithm, state).copy()
    pending: list[EpisodeColumns] = []
    last_sent = time.perf_counter()
    learns = ALGORITHMS[spec.algorithm].learns

    def send_pending() -> None:
        nonlocal last_sent
        if pending:
            outbox.put(("episodes", run_id, EpisodeColumns.concat(pending)))
            pending.clear()
        last_sent = time.perf_counter()

    while state.episode < total:
        if control.value == CONTROL_CANCEL:
            stop_reason = "cancelled"
            break
        if control.value == CONTROL_INTERRUPT:
            stop_reason = "interrupted"
            break
        next_checkpoint = (state.episode // spec.checkpoint_every + 1) * spec.checkpoint_every
        count = min(CHUNK_EPISODES, total - state.episode, next_checkpoint - state.episode)
        started = time.perf_counter()
        columns = train_chunk(spec.algorithm, table, params, state, count)
        training_seconds += time.perf_counter() - started
        parts.append(columns)
        pending.append(columns)
        if (
            learns
            and convergence_episode is None
            and is_optimal_everywhere(model_q(spec.algorithm, state), table, best)
        ):
            convergence_episode = state.episode
        at_checkpoint = state.episode % spec.checkpoint_every == 0 and state.episode < total
        if (
            at_checkpoint
            or sum(len(p) for p in pending) >= SEND_EVERY_EPISODES
            or time.perf_counter() - last_sent >= SEND_EVERY_S
        ):
            send_pending()
        if at_checkpoint:
            sampler.sample()
            q_now = model_q(spec.algorithm, state)
            q_changes.append((state.episode, float(np.abs(q_now - previous_q).mean())))
            previous_q = q_now.copy()
            outbox.put(("checkpoint", run_id, _checkpoint(state, parts)))
        if spec.mode == "time_budget":
            if convergence_episode is not None:
                stop_reason = "converged"
                break
            if training_seconds >= spec.time_budget_s:
                stop_reason = "time_budget"
                break
    send_pending()

    if stop_reason == "interrupted":
        outbox.put(("checkpoint", run_id, _checkpoint(state, parts)))
        outbox.put(("interrupted", run_id, {"episodes": state.episode}))
        return
    if stop_reason == "cancelled":
        outbox.put(("cancelled", run_id, {"episodes": state.episode}))
        return

    history = EpisodeColumns.concat(parts)
    q = model_q(spec.algorithm, state)
    random_agent = _Caches.baseline(spec.env_id, spec.test_episodes)
    if learns:
        score = evaluate_on_env(spec.env_id, spec.test_episodes, q)
        optimality = policy_optimality(q, table, best)
    else:
        # The random agent has no greedy policy: score it as what it is.
        score = evaluate_on_env(spec.env_id, spec.test_episodes, None)
        optimality = policy_optimality(np.zeros_like(q), table, best)
    steps_total = int(history.steps[resumed_from:].sum())
    system = sampler.summary(training_seconds, steps_total)
    system["resumed_from_episode"] = resumed_from
    outbox.put(
        (
            "done",
            run_id,
            {
                "episodes": state.episode,
                "stop_reason": stop_reason,
                "training_metrics": {
                    **training_summary(history),
                    "stop_reason": stop_reason,
                    "training_time_s": training_seconds,
                },
                "test_metrics": test_metrics(score, optimality, best, TEST_SEEDS_VERSION),
                "system_metrics": system,
                "learning_stability": learning_stability(q, history, convergence_episode, q_changes),
                "brute_force_metrics": brute_force_metrics(score, random_agent),
                "improvement_metrics": improvement_metrics(history),
                "model": q_table_bytes(q),
                "execution_time": system["wall_time_s"],
            },
        )
    )
    from trainer_service.plots import render_plots

    outbox.put(("plots", run_id, render_plots(history, score, random_agent)))


def _checkpoint(state: TrainingState, parts: list[EpisodeColumns]) -> dict[str, Any]:
    return {
        "episode": state.episode,
        "epsilon": state.epsilon,
        "data": checkpoint_bytes(state, EpisodeColumns.concat(parts)),
    }


def worker_main(index: int, inbox: Queue[Any], outbox: Queue[Any], control: Synchronized[int]) -> None:  # type: ignore[type-var]
    """Entry point of a spawned worker process."""
    warm_up()
    outbox.put(("ready", index, None))
    while True:
        job = inbox.get()
        if job is None:
            return
        # The parent resets the control word before queueing the job (a cancel may follow at once).
        execute(job, outbox, control)
        outbox.put(("idle", index, None))
