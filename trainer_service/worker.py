"""What runs inside a worker process: one training run at a time, never on an event loop.

`train` is the training loop (chunks of jitted episodes, checking the control word between
chunks for cancel or shutdown); `_Progress` is the plumbing around it (batches to the parent,
checkpoints); `_report` computes the metric groups. Messages posted to the parent's outbox are the
dataclasses of trainer_service/messages.py: WorkerReady, then per run RunStarted,
EpisodesTrained and CheckpointTaken, then one of RunDone, RunCancelled, RunInterrupted or
RunFailed, then WorkerIdle. RunDone carries the model: the parent sends it with CompleteRun.
Plots are no longer rendered here (they were ~80 % of a small run's worker CPU, on the run's
critical path): the registry renders them from the stored run on first read
(registry_service/plot_rendering.py).
"""

from __future__ import annotations

import functools
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
    uniform_policy,
)
from trainer_service.envs import TransitionTable, transition_table
from trainer_service.evaluation import (
    GREEDY,
    TEST_SEEDS_VERSION,
    UNIFORM_RANDOM,
    EnvScore,
    Optimum,
    evaluate_on_env,
    is_optimal_everywhere,
    optimum,
    policy_optimality,
    random_policy_optimality,
)
from trainer_service.kernels import compiling_alone
from trainer_service.messages import (
    CheckpointTaken,
    EpisodesTrained,
    RunCancelled,
    RunDone,
    RunFailed,
    RunInterrupted,
    RunResult,
    RunStarted,
    WorkerIdle,
    WorkerReady,
)
from trainer_service.metrics import (
    SystemSampler,
    brute_force_metrics,
    improvement_metrics,
    learning_stability,
    test_metrics,
    training_summary,
)
from trainer_service.params import DEFAULT_TEST_EPISODES, RunSpec

log = logging.getLogger(__name__)

# Control word values, written by the parent, read between chunks.
CONTROL_NONE, CONTROL_CANCEL, CONTROL_INTERRUPT = 0, 1, 2
# Episodes per jitted call: the granularity of cancel, convergence checks and time budgets.
CHUNK_EPISODES = 100
# Send episodes to the parent at least this often.
SEND_EVERY_S = 0.2
SEND_EVERY_EPISODES = 5000


@dataclass(frozen=True)
class Job:
    run_id: str
    spec: RunSpec
    checkpoint: bytes | None = None  # resume from this state


class _Caches:
    """Per-process caches: tables and optima are the same for every run."""

    tables: dict[str, tuple[TransitionTable, Optimum]] = {}

    @classmethod
    def table(cls, env_id: str) -> tuple[TransitionTable, Optimum]:
        if env_id not in cls.tables:
            table = transition_table(env_id)
            cls.tables[env_id] = (table, optimum(table))
        return cls.tables[env_id]


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel a run uses, before the first run.

    Each kernel is called here with the argument types a run gives it, so a run never
    compiles on its own clock (tests/test_trainer_warmup.py checks that none is left).
    """
    with compiling_alone():  # the first worker compiles, the others load its disk cache
        table, best = _Caches.table("Taxi-v3")
        params = TrainingParams(0.5, 0.9, 0.1, 0.99, 10)
        for name in ALGORITHMS:
            train_chunk(name, table, params, TrainingState.fresh(table, 0, 1.0), 2)
        policy_optimality(best.q, table, best)
        random_policy_optimality(table, best)
        evaluate_on_env("Taxi-v3", 2, None)
        # The default test episodes' start states (the real env's resets), kept per process.
        evaluate_on_env("Taxi-v3", DEFAULT_TEST_EPISODES, best.q)
        _random_agent("Taxi-v3", DEFAULT_TEST_EPISODES)


def _training_params(spec: RunSpec) -> TrainingParams:
    h = spec.hyperparameters
    return TrainingParams(h.alpha, h.gamma, h.epsilon_min, h.epsilon_decay, h.max_steps)


def execute(job: Job, outbox: Queue[Any], control: Synchronized[int]) -> None:  # type: ignore[type-var]
    """Trains, evaluates and reports one run; every outcome ends with a terminal message."""
    try:
        _execute(job, outbox, control)
    except Exception as exc:
        log.exception("run %s failed", job.run_id)
        outbox.put(RunFailed(job.run_id, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def _execute(job: Job, outbox: Queue[Any], control: Synchronized[int]) -> None:  # type: ignore[type-var]
    spec = job.spec
    sampler = SystemSampler()
    table, best = _Caches.table(spec.env_id)
    if job.checkpoint is not None:
        state, history = load_checkpoint(job.checkpoint)
    else:
        state, history = TrainingState.fresh(table, spec.seed, spec.hyperparameters.epsilon), None
    outbox.put(RunStarted(job.run_id, state.episode))
    progress = _Progress(job.run_id, spec, outbox, sampler, state, history)
    stop_reason = train(spec, table, best, state, progress, control)
    progress.send_pending()

    if stop_reason == "interrupted":
        outbox.put(_checkpoint(job.run_id, state, progress.parts))
        outbox.put(RunInterrupted(job.run_id, state.episode))
        return
    if stop_reason == "cancelled":
        outbox.put(RunCancelled(job.run_id, state.episode))
        return
    outbox.put(RunDone(job.run_id, _report(spec, table, best, state, progress, stop_reason)))


def train(
    spec: RunSpec,
    table: TransitionTable,
    best: Optimum,
    state: TrainingState,
    progress: _Progress,
    control: Synchronized[int],  # type: ignore[type-var]
) -> str:
    """The training loop: chunks of episodes until done, stopped, converged or out of time.

    Returns the stop reason: episodes_done, converged, time_budget, cancelled or interrupted.
    """
    params, total = _training_params(spec), spec.hyperparameters.training_episodes
    while state.episode < total:
        if control.value == CONTROL_CANCEL:
            return "cancelled"
        if control.value == CONTROL_INTERRUPT:
            return "interrupted"
        next_checkpoint = (state.episode // spec.checkpoint_every + 1) * spec.checkpoint_every
        count = min(CHUNK_EPISODES, total - state.episode, next_checkpoint - state.episode)
        started = time.perf_counter()
        columns = train_chunk(spec.algorithm, table, params, state, count)
        progress.training_seconds += time.perf_counter() - started
        if progress.learns and progress.convergence_episode is None:
            if is_optimal_everywhere(model_q(spec.algorithm, state), table, best):
                progress.convergence_episode = state.episode
        progress.add(columns, state, at_checkpoint=state.episode % spec.checkpoint_every == 0 and state.episode < total)
        if spec.mode == "time_budget":
            if progress.convergence_episode is not None:
                return "converged"
            if progress.training_seconds >= spec.time_budget_s:
                return "time_budget"
    return "episodes_done"


class _Progress:
    """The plumbing around the training loop: curves so far, batches to the parent, checkpoints."""

    def __init__(
        self,
        run_id: str,
        spec: RunSpec,
        outbox: Queue[Any],
        sampler: SystemSampler,
        state: TrainingState,
        history: EpisodeColumns | None,
    ) -> None:
        self.run_id, self.spec, self.outbox, self.sampler = run_id, spec, outbox, sampler
        self.resumed_from = state.episode
        self.parts = [history] if history is not None and len(history) else []  # every episode so far
        self.pending: list[EpisodeColumns] = []
        self.last_sent = time.perf_counter()
        self.training_seconds = 0.0
        self.convergence_episode: int | None = None
        self.learns = ALGORITHMS[spec.algorithm].learns
        # Mean |Q_k - Q_{k-1}| between consecutive checkpoints (learning algorithms only).
        self.q_changes: list[tuple[int, float]] = []
        self.previous_q = model_q(spec.algorithm, state).copy()

    def add(self, columns: EpisodeColumns, state: TrainingState, *, at_checkpoint: bool) -> None:
        self.parts.append(columns)
        self.pending.append(columns)
        if (
            at_checkpoint
            or sum(len(p) for p in self.pending) >= SEND_EVERY_EPISODES
            or time.perf_counter() - self.last_sent >= SEND_EVERY_S
        ):
            self.send_pending()
        if at_checkpoint:
            self.sampler.sample()
            if self.learns:
                q_now = model_q(self.spec.algorithm, state)
                self.q_changes.append((state.episode, float(np.abs(q_now - self.previous_q).mean())))
                self.previous_q = q_now.copy()
            self.outbox.put(_checkpoint(self.run_id, state, self.parts))

    def send_pending(self) -> None:
        if self.pending:
            self.outbox.put(EpisodesTrained(self.run_id, EpisodeColumns.concat(self.pending)))
            self.pending.clear()
        self.last_sent = time.perf_counter()

    def history(self) -> EpisodeColumns:
        return EpisodeColumns.concat(self.parts)


@functools.lru_cache(maxsize=8)
def _random_agent(env_id: str, episodes: int) -> EnvScore:
    """The random baseline on the first `episodes` test seeds (deterministic, so cached)."""
    return evaluate_on_env(env_id, episodes, None)


def _report(
    spec: RunSpec,
    table: TransitionTable,
    best: Optimum,
    state: TrainingState,
    progress: _Progress,
    stop_reason: str,
) -> RunResult:
    """The RunDone payload: every metric group and the model, all about the run's one policy."""
    history = progress.history()
    # The baseline plays exactly the agent's test episodes: same seeds, same count.
    random_agent = _random_agent(spec.env_id, spec.test_episodes)
    q: np.ndarray | None
    if progress.learns:
        q = model_q(spec.algorithm, state)
        policy, model_name, model = GREEDY, "q_table.npy", q
        agent, optimality = evaluate_on_env(spec.env_id, spec.test_episodes, q), policy_optimality(q, table, best)
    else:
        # The random agent has no Q-table: its model is its policy, pi(a|s) = 1/|A|.
        q, policy, model_name, model = None, UNIFORM_RANDOM, "policy.npy", uniform_policy(table)
        agent, optimality = random_agent, random_policy_optimality(table, best)
    steps_total = int(history.steps[progress.resumed_from :].sum())
    system = progress.sampler.summary(progress.training_seconds, steps_total)
    system["resumed_from_episode"] = progress.resumed_from
    return RunResult(
        episodes=state.episode,
        stop_reason=stop_reason,
        training_metrics={
            **training_summary(history),
            "stop_reason": stop_reason,
            "training_time_s": progress.training_seconds,
        },
        test_metrics=test_metrics(agent, optimality, best, TEST_SEEDS_VERSION, policy),
        system_metrics=system,
        learning_stability=learning_stability(
            q, table.acting_states, history, progress.convergence_episode, progress.q_changes
        ),
        brute_force_metrics=brute_force_metrics(agent, random_agent, best),
        improvement_metrics=improvement_metrics(history),
        model=q_table_bytes(model),
        model_name=model_name,
        model_metadata={"policy": policy, "shape": list(model.shape)},
        execution_time=system["wall_time_s"],
    )


def _checkpoint(run_id: str, state: TrainingState, parts: list[EpisodeColumns]) -> CheckpointTaken:
    return CheckpointTaken(run_id, state.episode, state.epsilon, checkpoint_bytes(state, EpisodeColumns.concat(parts)))


def worker_main(index: int, inbox: Queue[Any], outbox: Queue[Any], control: Synchronized[int]) -> None:  # type: ignore[type-var]
    """Entry point of a spawned worker process."""
    warm_up()
    outbox.put(WorkerReady(index))
    while True:
        job = inbox.get()
        if job is None:
            return
        # The parent resets the control word before queueing the job (a cancel may follow at once).
        execute(job, outbox, control)
        outbox.put(WorkerIdle(index))
