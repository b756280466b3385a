"""What a worker process tells its parent: one frozen dataclass per kind of message.

Workers put these on the pool's outbox (pickled by multiprocessing); the parent dispatches
them with `match` (pool.py for the worker's own state, runs.py for a run's). A field renamed
here is a type error in both places, not a KeyError in the middle of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer_service.engine import EpisodeColumns

# ---- about the worker itself -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    """Warm (kernels compiled or loaded): the worker can take a run."""

    worker: int


@dataclass(frozen=True)
class WorkerIdle:
    """The worker finished its run (whatever the outcome) and can take another."""

    worker: int


# ---- about one run, in the order a run sends them ----------------------------------------


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    # Episodes already trained (a resumed run starts after its checkpoint's).
    episode: int


@dataclass(frozen=True)
class EpisodesTrained:
    run_id: str
    columns: EpisodeColumns


@dataclass(frozen=True)
class CheckpointTaken:
    run_id: str
    episode: int
    epsilon: float
    # engine.checkpoint_bytes: Q-table(s), RNG state, episode and every curve so far.
    data: bytes


@dataclass(frozen=True)
class RunResult:
    """Every metric group of a completed run and its model (docs/metrics.md)."""

    episodes: int
    stop_reason: str
    training_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    system_metrics: dict[str, Any]
    learning_stability: dict[str, Any]
    brute_force_metrics: dict[str, Any]
    improvement_metrics: dict[str, Any]
    # The saved model's bytes (.npy), its name (q_table.npy or policy.npy) and metadata.
    model: bytes
    model_name: str
    model_metadata: dict[str, Any]
    execution_time: float


@dataclass(frozen=True)
class RunDone:
    run_id: str
    result: RunResult


@dataclass(frozen=True)
class RunCancelled:
    run_id: str
    episodes: int


@dataclass(frozen=True)
class RunInterrupted:
    """Stopped for a shutdown, after a last checkpoint: ResumeRun continues it."""

    run_id: str
    episodes: int


@dataclass(frozen=True)
class RunFailed:
    run_id: str
    error: str
    trace: str = ""


RunMessage = RunStarted | EpisodesTrained | CheckpointTaken | RunDone | RunCancelled | RunInterrupted | RunFailed
WorkerMessage = WorkerReady | WorkerIdle | RunMessage
