"""Ground truth and evaluation.

- `optimum`: value iteration on the transition table (undiscounted, so the optimum is the
  best achievable episode reward); Taxi: 13.07 mean steps, 7.93 mean reward over 300 starts.
- `policy_optimality`: greedy rollouts of a Q-table on the table from every start state,
  compared with the optimum (cheap enough to run every K episodes).
- `random_policy_optimality`: the same scores for the uniformly random policy, as exact
  expectations (dynamic programming over the step limit) rather than rollouts.
- `evaluate_on_env`: episodes of a policy (greedy on a Q-table, or uniformly random) on a
  fixed, versioned list of test seeds, so two runs are scored on the same episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer_service.envs import TransitionTable, make_env, transition_table
from trainer_service.kernels import greedy, jit

# Version the seed list: changing the formula changes every score, so it gets a new name.
TEST_SEEDS_VERSION = "test-seeds-v1"
_TEST_SEED_BASE = 1_000_003


def test_seeds(count: int) -> list[int]:
    """The seeds of the first `count` test episodes (same for every run)."""
    return [_TEST_SEED_BASE + 7919 * i for i in range(count)]


# What a saved model is: the greedy policy of a Q-table, or the uniformly random policy.
GREEDY = "greedy"
UNIFORM_RANDOM = "uniform_random"
POLICIES = (GREEDY, UNIFORM_RANDOM)


@dataclass(frozen=True)
class Optimum:
    values: np.ndarray  # best undiscounted episode reward from each state
    q: np.ndarray  # optimal action values
    steps: np.ndarray  # optimal steps from each start state (aligned with start_states)
    rewards: np.ndarray  # optimal reward from each start state

    @property
    def mean_steps(self) -> float:
        return float(self.steps.mean())

    @property
    def mean_reward(self) -> float:
        return float(self.rewards.mean())

    def mean_reward_from(self, start_states: np.ndarray) -> float:
        """The optimum's mean episode reward over these start states (e.g. a test's episodes)."""
        return float(self.values[start_states].mean()) if len(start_states) else 0.0


@jit
def _value_iteration(next_state: np.ndarray, reward: np.ndarray, terminated: np.ndarray, sweeps: int) -> np.ndarray:
    n_states, n_actions = next_state.shape
    q = np.zeros((n_states, n_actions))
    values = np.zeros(n_states)
    for _ in range(sweeps):
        changed = False
        for s in range(n_states):
            for a in range(n_actions):
                target = reward[s, a] if terminated[s, a] else reward[s, a] + values[next_state[s, a]]
                q[s, a] = target
            best = q[s].max()
            if best != values[s]:
                changed = True
                values[s] = best
        if not changed:
            break
    return q


@jit
def _rollouts(
    q: np.ndarray,
    next_state: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
    start_states: np.ndarray,
    max_steps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = start_states.shape[0]
    steps = np.zeros(n, dtype=np.int64)
    rewards = np.zeros(n)
    success = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        state = start_states[i]
        done = False
        while steps[i] < max_steps and not done:
            action = greedy(q, state)
            rewards[i] += reward[state, action]
            done = terminated[state, action]
            state = next_state[state, action]
            steps[i] += 1
        success[i] = done
    return steps, rewards, success


def optimum(table: TransitionTable) -> Optimum:
    """Exact optimum by value iteration (deterministic, undiscounted, terminating)."""
    # In-place (Gauss-Seidel) sweeps: a state's new value is used by the states after it in
    # the same sweep. Values start at 0, BELOW the true values (Taxi: 3 to 20, every state can
    # still earn the +20 drop-off), and rise to the exact fixed point; sweeps stop at the first
    # sweep that changes nothing (Taxi: 13 sweeps, measured). Rewards are integers and the
    # sums exact in float64, so "changes nothing" is an exact test.
    q = _value_iteration(table.next_state, table.reward, table.terminated, 10_000)
    steps, rewards, success = _rollouts(
        q, table.next_state, table.reward, table.terminated, table.start_states, table.max_episode_steps
    )
    if not success.all():
        raise RuntimeError("value iteration did not yield a terminating policy")
    return Optimum(values=q.max(axis=1), q=q, steps=steps, rewards=rewards)


@dataclass(frozen=True)
class Optimality:
    optimal_fraction: float  # share of start states where the greedy policy is optimal
    mean_steps: float
    mean_reward: float
    success_rate: float
    steps_gap: float  # mean steps minus the optimum's (>= 0)
    reward_gap: float  # optimum's mean reward minus this one's (>= 0)


def policy_optimality(q: np.ndarray, table: TransitionTable, best: Optimum) -> Optimality:
    """Greedy policy of `q` from every start state, scored against the optimum."""
    steps, rewards, success = _rollouts(
        q, table.next_state, table.reward, table.terminated, table.start_states, table.max_episode_steps
    )
    optimal = success & (np.abs(rewards - best.rewards) < 1e-9)
    return Optimality(
        optimal_fraction=float(optimal.mean()),
        mean_steps=float(steps.mean()),
        mean_reward=float(rewards.mean()),
        success_rate=float(success.mean()),
        steps_gap=float(steps.mean() - best.mean_steps),
        reward_gap=float(best.mean_reward - rewards.mean()),
    )


@jit
def _random_policy_expectations(
    next_state: np.ndarray, reward: np.ndarray, terminated: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected reward, steps and success of the uniformly random policy from every state,
    with `horizon` steps left (the environment's time limit): backward induction."""
    n_states, n_actions = next_state.shape
    value, steps, success = np.zeros(n_states), np.zeros(n_states), np.zeros(n_states)
    for _ in range(horizon):
        new_value, new_steps, new_success = np.zeros(n_states), np.zeros(n_states), np.zeros(n_states)
        for s in range(n_states):
            for a in range(n_actions):
                new_value[s] += reward[s, a]
                new_steps[s] += 1.0
                if terminated[s, a]:
                    new_success[s] += 1.0
                else:
                    nxt = next_state[s, a]
                    new_value[s] += value[nxt]
                    new_steps[s] += steps[nxt]
                    new_success[s] += success[nxt]
        value, steps, success = new_value / n_actions, new_steps / n_actions, new_success / n_actions
    return value, steps, success


def random_policy_optimality(table: TransitionTable, best: Optimum) -> Optimality:
    """The uniformly random policy from every start state, exactly (expectations, not samples).

    Optimal on a start state would mean its expected reward equals the optimum's there.
    """
    values, steps, success = _random_policy_expectations(
        table.next_state, table.reward, table.terminated, table.max_episode_steps
    )
    starts = table.start_states
    optimal = np.abs(values[starts] - best.rewards) < 1e-9
    return Optimality(
        optimal_fraction=float(optimal.mean()),
        mean_steps=float(steps[starts].mean()),
        mean_reward=float(values[starts].mean()),
        success_rate=float(success[starts].mean()),
        steps_gap=float(steps[starts].mean() - best.mean_steps),
        reward_gap=float(best.mean_reward - values[starts].mean()),
    )


def is_optimal_everywhere(q: np.ndarray, table: TransitionTable, best: Optimum) -> bool:
    _, rewards, success = _rollouts(
        q, table.next_state, table.reward, table.terminated, table.start_states, table.max_episode_steps
    )
    return bool(success.all() and np.all(np.abs(rewards - best.rewards) < 1e-9))


@dataclass(frozen=True)
class EnvScore:
    episodes: int
    success_rate: float
    avg_steps: float
    avg_reward: float
    std_reward: float
    std_steps: float
    # The start state of each test episode (the same for every policy: set by the seed).
    start_states: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), compare=False)

    def as_dict(self) -> dict[str, float]:
        return {
            "episodes": self.episodes,
            "success_rate": self.success_rate,
            "avg_steps": self.avg_steps,
            "avg_reward": self.avg_reward,
            "std_reward": self.std_reward,
            "std_steps": self.std_steps,
        }


def _score(rewards: np.ndarray, steps: np.ndarray, successes: np.ndarray, starts: np.ndarray) -> EnvScore:
    return EnvScore(
        episodes=len(rewards),
        success_rate=float(successes.mean()),
        avg_steps=float(steps.mean()),
        avg_reward=float(rewards.mean()),
        std_reward=float(rewards.std()),
        std_steps=float(steps.std()),
        start_states=starts,
    )


def evaluate_on_env(env_id: str, episodes: int, q: np.ndarray | None) -> EnvScore:
    """Greedy episodes of `q` on the real environment (the uniformly random policy when q is None).

    Episodes end on termination or the environment's own TimeLimit truncation. Episode i is
    seeded with test_seeds(...)[i]: `env.reset(seed)` picks its start state and
    `env.action_space.seed(seed)` the random policy's actions.

    The greedy policy draws nothing at random: the real environment decides its start states
    (reset(seed), cached per process) and its moves are replayed on the transition table
    (`_rollouts`, the first maximal action as np.argmax takes it), which
    tests/test_trainer_env.py proves equal to env.step and tests/test_trainer_engine.py proves
    equal to stepping the env greedily. Stepping the env was most of a run's evaluation: a new
    env (~20 ms) and ~0.1 ms per env.step, 0.1-0.17 s of a 100-test-episode run (issue 15).
    """
    if q is None:
        return _evaluate_random(env_id, episodes)
    table = transition_table(env_id)
    starts = seeded_start_states(env_id, episodes)
    steps, rewards, successes = _rollouts(
        np.ascontiguousarray(q, dtype=np.float64),
        table.next_state,
        table.reward,
        table.terminated,
        starts,
        table.max_episode_steps,
    )
    return _score(rewards, steps, successes, starts.copy())


_STARTS: dict[str, np.ndarray] = {}


def seeded_start_states(env_id: str, episodes: int) -> np.ndarray:
    """The real environment's start state of each test episode (reset(seed) of test_seeds); read-only.

    Test seeds are one sequence, each count a prefix of it: a process keeps the longest list
    it has computed per environment and answers every count from it.
    """
    known = _STARTS.get(env_id, np.zeros(0, dtype=np.int64))
    if len(known) < episodes:
        env = make_env(env_id)
        try:
            more = [env.reset(seed=seed)[0] for seed in test_seeds(episodes)[len(known) :]]
        finally:
            env.close()
        known = np.concatenate([known, np.array(more, dtype=np.int64)])
        known.flags.writeable = False
        _STARTS[env_id] = known
    return known[:episodes]


def evaluate_model(env_id: str, episodes: int, model: np.ndarray, policy: str) -> EnvScore:
    """A saved model scored the way its run was scored (the model's metadata names its policy).

    GREEDY: `model` is a Q-table, actions are its argmax. UNIFORM_RANDOM: `model` is the
    policy table pi(a|s) = 1/|A| that brute_force saves.
    """
    if policy == GREEDY:
        return evaluate_on_env(env_id, episodes, model)
    if policy == UNIFORM_RANDOM:
        if not np.allclose(model, 1.0 / model.shape[1]):
            raise ValueError("a uniform_random model must be pi(a|s) = 1/|A| everywhere")
        return evaluate_on_env(env_id, episodes, None)
    raise ValueError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")


@jit
def _replay(
    next_state: np.ndarray,
    reward: np.ndarray,
    terminated: np.ndarray,
    starts: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    steps: np.ndarray,
    successes: np.ndarray,
) -> None:
    """Plays each row of `actions` from its start state until termination or the row's end."""
    for i in range(starts.shape[0]):
        state = starts[i]
        for t in range(actions.shape[1]):
            action = actions[i, t]
            rewards[i] += reward[state, action]
            steps[i] += 1
            if terminated[state, action]:
                successes[i] = True
                break
            state = next_state[state, action]


# Random episodes are replayed in batches of this many (bounds the action matrix's memory).
_REPLAY_BATCH = 1000


def _evaluate_random(env_id: str, episodes: int) -> EnvScore:
    """The uniformly random policy on the test seeds, ~15x cheaper than stepping the env.

    A random episode lasts ~195 steps of env.step (~7 us each): 1,000 episodes cost 1.56 s
    stepped, 0.10 s replayed (measured), and 100,000 would cost minutes stepped. The real
    environment still decides everything random: its reset(seed) gives the start state and
    its seeded action space draws the actions (all `time_limit` of them at once, the same
    numbers as one sample() per step). The transitions are replayed on the transition table,
    which tests/test_trainer_env.py proves equal to env.step; tests/test_trainer_engine.py
    proves this replay equal to stepping the env.
    """
    table = transition_table(env_id)
    env = make_env(env_id)
    limit, n_actions = table.max_episode_steps, table.n_actions
    rewards = np.zeros(episodes)
    steps = np.zeros(episodes, dtype=np.int64)
    successes = np.zeros(episodes, dtype=np.bool_)
    starts = np.zeros(episodes, dtype=np.int64)
    seeds = test_seeds(episodes)
    try:
        for first in range(0, episodes, _REPLAY_BATCH):
            batch = seeds[first : first + _REPLAY_BATCH]
            actions = np.empty((len(batch), limit), dtype=np.int64)
            for row, seed in enumerate(batch):
                starts[first + row] = env.reset(seed=seed)[0]
                env.action_space.seed(seed)
                actions[row] = env.action_space.np_random.integers(n_actions, size=limit, dtype=np.int64)
            end = first + len(batch)
            _replay(
                table.next_state,
                table.reward,
                table.terminated,
                starts[first:end],
                actions,
                rewards[first:end],
                steps[first:end],
                successes[first:end],
            )
    finally:
        env.close()
    return _score(rewards, steps, successes, starts)
