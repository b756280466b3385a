"""Training state and the chunked driver around the jitted per-algorithm episode loops.

The state of a run is (Q, Q2, PRNG word, epsilon, episode): saving it is a checkpoint,
and training N episodes then M gives exactly the same state as training N + M.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from trainer_service.algorithms import ALGORITHMS
from trainer_service.envs import TransitionTable
from trainer_service.kernels import new_rng

CHECKPOINT_FORMAT = 1


@dataclass
class EpisodeColumns:
    """Per-episode results, columnar (what the registry ingests)."""

    first_episode: int
    rewards: np.ndarray  # float64
    steps: np.ndarray  # int32
    epsilons: np.ndarray  # float64
    td_errors: np.ndarray  # float64
    successes: np.ndarray  # bool

    @classmethod
    def empty(cls, first_episode: int, count: int) -> EpisodeColumns:
        return cls(
            first_episode,
            np.zeros(count),
            np.zeros(count, dtype=np.int32),
            np.zeros(count),
            np.zeros(count),
            np.zeros(count, dtype=np.bool_),
        )

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @classmethod
    def concat(cls, parts: list[EpisodeColumns], first_episode: int = 0) -> EpisodeColumns:
        if not parts:
            return cls.empty(first_episode, 0)
        return cls(
            parts[0].first_episode,
            np.concatenate([p.rewards for p in parts]),
            np.concatenate([p.steps for p in parts]),
            np.concatenate([p.epsilons for p in parts]),
            np.concatenate([p.td_errors for p in parts]),
            np.concatenate([p.successes for p in parts]),
        )


@dataclass
class TrainingState:
    q: np.ndarray
    q2: np.ndarray  # second estimate (Double Q-learning); zeros otherwise
    rng: np.ndarray  # one uint64: the whole PRNG state
    epsilon: float
    episode: int  # episodes trained so far

    @classmethod
    def fresh(cls, table: TransitionTable, seed: int, epsilon: float) -> TrainingState:
        shape = (table.n_states, table.n_actions)
        return cls(np.zeros(shape), np.zeros(shape), new_rng(seed), float(epsilon), 0)


@dataclass(frozen=True)
class TrainingParams:
    alpha: float
    gamma: float
    epsilon_min: float
    epsilon_decay: float
    max_steps: int


def train_chunk(
    algorithm: str, table: TransitionTable, params: TrainingParams, state: TrainingState, count: int
) -> EpisodeColumns:
    """Trains `count` episodes in place on `state` and returns their columns."""
    columns = EpisodeColumns.empty(state.episode, count)
    if count == 0:
        return columns
    state.epsilon = float(
        ALGORITHMS[algorithm].train_episodes(
            state.q,
            state.q2,
            table.next_state,
            table.reward,
            table.terminated,
            table.start_states,
            float(params.alpha),
            float(params.gamma),
            float(state.epsilon),
            float(params.epsilon_min),
            float(params.epsilon_decay),
            int(params.max_steps),
            state.rng,
            columns.rewards,
            columns.steps,
            columns.epsilons,
            columns.td_errors,
            columns.successes,
        )
    )
    state.episode += count
    return columns


def model_q(algorithm: str, state: TrainingState) -> np.ndarray:
    """The Q-table that defines the greedy policy (Double Q: the mean of both)."""
    if algorithm == "double_q_learning":
        return (state.q + state.q2) / 2.0
    return state.q


def uniform_policy(table: TransitionTable) -> np.ndarray:
    """pi(a|s) = 1/|A| everywhere: the saved model of the random agent (it has no Q-table)."""
    return np.full((table.n_states, table.n_actions), 1.0 / table.n_actions)


def q_table_bytes(q: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, q, allow_pickle=False)
    return buffer.getvalue()


def checkpoint_bytes(state: TrainingState, history: EpisodeColumns) -> bytes:
    """Everything needed to continue exactly: state plus the curves so far (for summaries)."""
    arrays = {
        "format": np.int64(CHECKPOINT_FORMAT),
        "q": state.q,
        "q2": state.q2,
        "rng": state.rng,
        "epsilon": np.float64(state.epsilon),
        "episode": np.int64(state.episode),
        "rewards": history.rewards,
        "steps": history.steps,
        "epsilons": history.epsilons,
        "td_errors": history.td_errors,
        "successes": history.successes,
    }
    # The .npz np.savez_compressed writes, at deflate level 1 instead of its 6: a run checkpoints
    # its whole history several times, and level 6 was half of an optimized Q-learning run's CPU
    # (cProfile, issue 15) for 4 % smaller checkpoints. np.load reads either.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def load_checkpoint(data: bytes) -> tuple[TrainingState, EpisodeColumns]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        if int(archive["format"]) != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {int(archive['format'])}")
        state = TrainingState(
            archive["q"].copy(),
            archive["q2"].copy(),
            archive["rng"].astype(np.uint64).copy(),
            float(archive["epsilon"]),
            int(archive["episode"]),
        )
        history = EpisodeColumns(
            0,
            archive["rewards"].copy(),
            archive["steps"].copy(),
            archive["epsilons"].copy(),
            archive["td_errors"].copy(),
            archive["successes"].copy(),
        )
    if len(history) != state.episode:
        raise ValueError("checkpoint history does not match its episode count")
    return state, history
