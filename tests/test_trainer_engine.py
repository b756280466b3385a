"""The engine: algorithms learn, the PRNG and checkpoints make runs exactly reproducible."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from trainer_service import evaluation, kernels
from trainer_service.algorithms import ALGORITHMS
from trainer_service.engine import (
    EpisodeColumns,
    TrainingParams,
    TrainingState,
    checkpoint_bytes,
    load_checkpoint,
    model_q,
    train_chunk,
)
from trainer_service.envs import make_env, transition_table
from trainer_service.evaluation import evaluate_on_env, optimum, policy_optimality, random_policy_optimality

TABLE = transition_table("Taxi-v3")
BEST = optimum(TABLE)


def train(algorithm: str, episodes: int, seed: int = 1, params: TrainingParams | None = None) -> TrainingState:
    state = TrainingState.fresh(TABLE, seed, 1.0)
    train_chunk(algorithm, TABLE, params or TrainingParams(0.9, 0.99, 0.1, 0.99, 200), state, episodes)
    return state


@pytest.mark.parametrize("algorithm", ["q_learning", "sarsa", "expected_sarsa", "double_q_learning"])
def test_td_algorithms_reach_a_good_policy(algorithm: str) -> None:
    state = train(algorithm, 5000, params=TrainingParams(0.5, 0.99, 0.01, 0.999, 200))
    optimality = policy_optimality(model_q(algorithm, state), TABLE, BEST)
    assert optimality.success_rate == 1.0
    assert optimality.optimal_fraction >= 0.9
    score = evaluate_on_env("Taxi-v3", 50, model_q(algorithm, state))
    assert score.success_rate == 1.0
    assert score.avg_steps < 16


def test_monte_carlo_learns_to_deliver() -> None:
    state = train("monte_carlo", 50_000, params=TrainingParams(0.1, 0.95, 0.1, 0.999, 200))
    optimality = policy_optimality(state.q, TABLE, BEST)
    assert optimality.success_rate >= 0.9


def test_brute_force_learns_nothing() -> None:
    state = train("brute_force", 200)
    assert not state.q.any()


def test_same_seed_same_q_table_and_different_seed_differs() -> None:
    a, b, c = train("q_learning", 300, seed=5), train("q_learning", 300, seed=5), train("q_learning", 300, seed=6)
    assert np.array_equal(a.q, b.q) and a.rng[0] == b.rng[0]
    assert not np.array_equal(a.q, c.q)


def test_epsilon_decays_per_episode_down_to_its_floor() -> None:
    state = TrainingState.fresh(TABLE, 1, 1.0)
    columns = train_chunk("q_learning", TABLE, TrainingParams(0.5, 0.9, 0.2, 0.5, 50), state, 5)
    assert columns.epsilons.tolist() == [1.0, 0.5, 0.25, 0.2, 0.2]
    assert state.epsilon == 0.2


def test_q_learning_kernel_is_the_textbook_update_step_by_step() -> None:
    """The kernel remembers the greedy action its target's max found; it must train exactly as
    epsilon-greedy + Q(s, a) += alpha * (r + gamma * max Q(s', .) - Q(s, a)) written plainly.
    alpha 1 and gamma 0.5 (the preset's) on a fresh table: ties, walls (s' == s) and illegal
    pick-ups, whose update changes the row the remembered action came from, all occur."""
    alpha, gamma, floor, decay, max_steps, episodes = 1.0, 0.5, 0.3, 0.99, 60, 150
    state = TrainingState.fresh(TABLE, 7, 1.0)
    columns = train_chunk("q_learning", TABLE, TrainingParams(alpha, gamma, floor, decay, max_steps), state, episodes)
    q, rng, epsilon = np.zeros_like(TABLE.reward), TrainingState.fresh(TABLE, 7, 1.0).rng, 1.0
    rewards, steps = [], []
    for _ in range(episodes):
        s, total, n, done = kernels.start_state(TABLE.start_states, rng), 0.0, 0, False
        while n < max_steps and not done:
            a = kernels.epsilon_greedy(q, s, epsilon, rng)
            nxt, r, done = TABLE.next_state[s, a], TABLE.reward[s, a], TABLE.terminated[s, a]
            q[s, a] += alpha * ((r if done else r + gamma * q[nxt].max()) - q[s, a])
            s, total, n = nxt, total + r, n + 1
        rewards.append(total)
        steps.append(n)
        epsilon = max(floor, epsilon * decay)
    assert np.array_equal(state.q, q) and state.rng[0] == rng[0] and state.epsilon == epsilon
    assert columns.rewards.tolist() == rewards and columns.steps.tolist() == steps


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_chunked_training_equals_one_go_after_a_checkpoint_round_trip(algorithm: str) -> None:
    params = TrainingParams(0.5, 0.95, 0.05, 0.99, 200)
    whole = TrainingState.fresh(TABLE, 42, 1.0)
    all_columns = train_chunk(algorithm, TABLE, params, whole, 700)
    part = TrainingState.fresh(TABLE, 42, 1.0)
    first = train_chunk(algorithm, TABLE, params, part, 300)
    restored, history = load_checkpoint(checkpoint_bytes(part, first))
    assert len(history) == 300
    rest = train_chunk(algorithm, TABLE, params, restored, 400)
    assert restored.episode == 700 and rest.first_episode == 300
    assert np.array_equal(restored.q, whole.q) and np.array_equal(restored.q2, whole.q2)
    assert restored.rng[0] == whole.rng[0] and restored.epsilon == whole.epsilon
    joined = EpisodeColumns.concat([first, rest])
    assert np.array_equal(joined.rewards, all_columns.rewards)
    assert np.array_equal(joined.steps, all_columns.steps)


def test_optimal_q_is_scored_optimal_everywhere() -> None:
    optimality = policy_optimality(BEST.q, TABLE, BEST)
    assert optimality.optimal_fraction == 1.0
    assert optimality.steps_gap == 0.0 and optimality.reward_gap == 0.0


def stepped_on_env(
    episodes: int, act: Callable[[Any, int], int]
) -> tuple[list[float], list[int], list[bool], list[int]]:
    """The test episodes stepped on the real env, `act(env, state)` choosing each action."""
    env = make_env("Taxi-v3")
    rewards, steps, successes, starts = [], [], [], []
    for seed in evaluation.test_seeds(episodes):
        state, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        starts.append(state)
        total, count, done, terminated = 0.0, 0, False, False
        while not done:
            state, reward, terminated, truncated, _ = env.step(act(env, state))
            total, count = total + float(reward), count + 1
            done = terminated or truncated
        rewards.append(total)
        steps.append(count)
        successes.append(terminated)
    env.close()
    return rewards, steps, successes, starts


def assert_same_scores(
    replayed: Any, rewards: list[float], steps: list[int], successes: list[bool], starts: list[int]
) -> None:
    assert replayed.start_states.tolist() == starts
    assert replayed.success_rate == float(np.mean(successes))
    assert replayed.avg_steps == float(np.mean(steps))
    assert replayed.std_steps == pytest.approx(float(np.std(steps)), abs=1e-9)
    assert replayed.avg_reward == pytest.approx(float(np.mean(rewards)), abs=1e-12)
    assert replayed.std_reward == pytest.approx(float(np.std(rewards)), abs=1e-9)


def test_random_agent_replayed_on_the_table_is_the_agent_stepping_the_real_env() -> None:
    episodes = 400
    stepped = stepped_on_env(episodes, lambda env, state: env.action_space.sample())
    assert_same_scores(evaluate_on_env("Taxi-v3", episodes, None), *stepped)


@pytest.mark.parametrize("policy", ["optimal", "partly_trained", "random_q"])
def test_greedy_agent_replayed_on_the_table_is_the_agent_stepping_the_real_env(policy: str) -> None:
    """Greedy test episodes replayed on the table from the real env's seeded start states (issue 15)."""
    episodes = 300
    if policy == "optimal":
        q = BEST.q
    elif policy == "partly_trained":
        state = TrainingState.fresh(TABLE, 5, 1.0)
        train_chunk("q_learning", TABLE, TrainingParams(0.5, 0.9, 0.1, 0.99, 200), state, 300)
        q = model_q("q_learning", state)
    else:  # loops and time-limit truncations: episodes that never deliver
        q = np.random.default_rng(3).normal(size=BEST.q.shape)
    stepped = stepped_on_env(episodes, lambda env, state: int(np.argmax(q[state])))
    assert_same_scores(evaluate_on_env("Taxi-v3", episodes, q), *stepped)
    if policy == "random_q":
        assert not all(stepped[2])  # the case of truncated episodes is really covered


def test_random_policy_expectations_agree_with_twenty_thousand_random_episodes() -> None:
    exact = random_policy_optimality(TABLE, BEST)
    # brute_force's kernel: uniform start state, uniform actions, 200-step limit, on the table.
    state = TrainingState.fresh(TABLE, 11, 1.0)
    columns = train_chunk("brute_force", TABLE, TrainingParams(1.0, 1.0, 1.0, 1.0, 200), state, 20_000)
    n = len(columns)
    # Within 4 standard errors of the sample means.
    assert abs(columns.successes.mean() - exact.success_rate) < 4 * columns.successes.std() / np.sqrt(n)
    assert abs(columns.rewards.mean() - exact.mean_reward) < 4 * columns.rewards.std() / np.sqrt(n)
    assert abs(columns.steps.mean() - exact.mean_steps) < 4 * columns.steps.std() / np.sqrt(n)
    assert exact.optimal_fraction == 0.0
    assert exact.reward_gap == pytest.approx(BEST.mean_reward - exact.mean_reward, abs=1e-12)
