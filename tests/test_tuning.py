"""measure(): the first optimal episode, and the training its time_to_optimal_s times."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from trainer_service.engine import TrainingParams, TrainingState, train_chunk
from trainer_service.envs import transition_table
from trainer_service.evaluation import is_optimal_everywhere, optimum
from trainer_service.params import PRESETS
from trainer_service.tuning import CHECK_EVERY, measure

TABLE = transition_table("Taxi-v3")
BEST = optimum(TABLE)


def test_time_to_optimal_times_training_that_ends_at_the_first_checked_optimum() -> None:
    """The timed call trains the seed's first optimal episode count from scratch in one go: it
    ends on the same table as the checked, chunked training, which was not yet optimal at the
    check before."""
    hp = PRESETS["q_learning"].hyperparameters
    (outcome,) = measure("q_learning", hp, [103]).outcomes
    first = outcome.first_optimal_episode
    assert first is not None and first % CHECK_EVERY == 0 and outcome.time_to_optimal_s is not None
    assert outcome.optimal_at_end
    params = TrainingParams(hp.alpha, hp.gamma, hp.epsilon_min, hp.epsilon_decay, hp.max_steps)
    in_one_call = TrainingState.fresh(TABLE, 103, hp.epsilon)
    train_chunk("q_learning", TABLE, params, in_one_call, first)
    chunked = TrainingState.fresh(TABLE, 103, hp.epsilon)
    while chunked.episode < first - CHECK_EVERY:
        train_chunk("q_learning", TABLE, params, chunked, CHECK_EVERY)
    assert not is_optimal_everywhere(chunked.q, TABLE, BEST)
    train_chunk("q_learning", TABLE, params, chunked, CHECK_EVERY)
    assert np.array_equal(in_one_call.q, chunked.q)
    assert is_optimal_everywhere(in_one_call.q, TABLE, BEST)


def test_a_seed_that_never_gets_there_has_no_time_to_optimal() -> None:
    hp = PRESETS["q_learning"].hyperparameters
    short = replace(hp, training_episodes=50)
    (outcome,) = measure("q_learning", short, [103]).outcomes
    assert outcome.first_optimal_episode is None and outcome.time_to_optimal_s is None
    assert not outcome.optimal_at_end
