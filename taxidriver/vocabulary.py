"""The names the services share, read from the contracts or declared here once.

- Run statuses: the words stored in `training_runs.status` and the terminal / stopped sets,
  derived from `taxidriver.registry.v1.RunStatus` and the `status_traits` each value declares.
- Training modes: the words stored in `training_runs.mode`, from `TrainingMode`.
- Algorithm names: the trainer's algorithm registry (what ListAlgorithms serves) is the only
  list; everyone else checks a name's form, never its membership.
- Error reasons: `taxidriver.reasons.v1.ErrorReason`; `error_reason(error)` reads a reason on
  the client side, so code matches on reasons, never on message text.
- Metrics: which metrics the trainer emits and which way each is better (docs/metrics.md
  explains them); the registry's CompareRuns and the CLI read it from here.
"""

from __future__ import annotations

import re
from typing import Any

import grpc
from google.protobuf.descriptor import EnumDescriptor

from taxidriver.errors import status_details
from taxidriver.options.v1 import run_status_pb2
from taxidriver.reasons.v1 import error_reason_pb2
from taxidriver.registry.v1 import registry_service_pb2, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2


def _words(enum: EnumDescriptor, prefix: str) -> dict[int, str]:
    """RUN_STATUS_QUEUED -> "queued": every value but the zero one, by number."""
    return {value.number: value.name.removeprefix(prefix).lower() for value in enum.values if value.number != 0}


# ---- run statuses ---------------------------------------------------------------------------

_RUN_STATUS = resources_pb2.RunStatus.DESCRIPTOR

# RUN_STATUS_COMPLETED -> "completed": the word stored in training_runs.status.
STATUS_WORDS: dict[int, str] = _words(_RUN_STATUS, "RUN_STATUS_")
STATUS_NUMBERS: dict[str, int] = {word: number for number, word in STATUS_WORDS.items()}


def _with_trait(trait: str) -> frozenset[int]:
    """The statuses whose `(taxidriver.options.v1.status_traits)` option sets `trait`."""
    extension: Any = run_status_pb2.status_traits
    return frozenset(
        value.number for value in _RUN_STATUS.values if getattr(value.GetOptions().Extensions[extension], trait)
    )


# Nothing writes to the run on its own any more: WatchRun ends after it, ingest refuses more.
TERMINAL_STATUSES: frozenset[int] = _with_trait("terminal")
# No trainer is working on the run now (terminal, or INTERRUPTED): a waiting client stops.
STOPPED_STATUSES: frozenset[int] = _with_trait("stopped")
TERMINAL_WORDS: frozenset[str] = frozenset(STATUS_WORDS[n] for n in TERMINAL_STATUSES)
STOPPED_WORDS: frozenset[str] = frozenset(STATUS_WORDS[n] for n in STOPPED_STATUSES)


def status_word(status: int) -> str:
    """RUN_STATUS_COMPLETED -> "completed"; "unspecified" for 0 or an unknown number."""
    return STATUS_WORDS.get(status, "unspecified")


# ---- training modes -------------------------------------------------------------------------

# TRAINING_MODE_TIME_BUDGET -> "time_budget": the word stored in training_runs.mode.
MODE_WORDS: dict[int, str] = _words(trainer_service_pb2.TrainingMode.DESCRIPTOR, "TRAINING_MODE_")
MODE_NUMBERS: dict[str, int] = {word: number for number, word in MODE_WORDS.items()}

# ---- algorithms -----------------------------------------------------------------------------

# The form of an algorithm name (the trainer's registry decides which names exist): a
# lower-case identifier, as the module names under trainer_service/algorithms/ are.
ALGORITHM_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_ALGORITHM_NAME = 64


def algorithm_name_problem(name: str) -> str | None:
    """Why `name` cannot be an algorithm's name (None when it can)."""
    if len(name) > MAX_ALGORITHM_NAME:
        return f"must be at most {MAX_ALGORITHM_NAME} characters, got {len(name)}"
    if not ALGORITHM_NAME.fullmatch(name):
        return f"must be a lower-case name of letters, digits and underscores, got {name[:80]!r}"
    return None


# ---- error reasons --------------------------------------------------------------------------

_REASON_PREFIX = "ERROR_REASON_"

# Every ErrorInfo.reason our services may send ("LEASE_LOST", ...).
REASONS: frozenset[str] = frozenset(
    value.name.removeprefix(_REASON_PREFIX)
    for value in error_reason_pb2.ErrorReason.DESCRIPTOR.values
    if value.number != 0
)


def reason(value: int) -> str:
    """ERROR_REASON_LEASE_LOST -> "LEASE_LOST", as ErrorInfo.reason carries it."""
    return error_reason_pb2.ErrorReason.Name(value).removeprefix(_REASON_PREFIX)


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason an error carries ("" when it carries none)."""
    return status_details(error)[1]


# ---- metrics --------------------------------------------------------------------------------

HIGHER = registry_service_pb2.METRIC_DIRECTION_HIGHER_IS_BETTER
LOWER = registry_service_pb2.METRIC_DIRECTION_LOWER_IS_BETTER
NOT_AN_OUTCOME = registry_service_pb2.METRIC_DIRECTION_NOT_AN_OUTCOME
UNKNOWN = registry_service_pb2.METRIC_DIRECTION_UNSPECIFIED


def _group(group: str, **directions: int) -> dict[str, int]:
    return {f"{group}.{name}": direction for name, direction in directions.items()}


# Every numeric metric the trainer emits, by dotted path, with the way it is better. Counts,
# resources a run used, the random baseline and the optimum describe the run or its setting,
# not how well its policy did: NOT_AN_OUTCOME, never ranked. A metric missing here (an older
# trainer's) is UNKNOWN and never ranked either. tests/test_vocabulary.py checks that a real
# run's metrics are all declared.
METRICS: dict[str, int] = {
    "execution_time": LOWER,
    **_group(
        "training_metrics",
        episodes=NOT_AN_OUTCOME,
        total_steps=NOT_AN_OUTCOME,
        avg_reward=HIGHER,
        avg_steps=LOWER,
        success_rate=HIGHER,
        last100_avg_reward=HIGHER,
        last100_avg_steps=LOWER,
        last100_success_rate=HIGHER,
        best_reward=HIGHER,
        worst_reward=HIGHER,
        final_epsilon=NOT_AN_OUTCOME,
        avg_td_error=NOT_AN_OUTCOME,
        final_td_error=NOT_AN_OUTCOME,
        training_time_s=NOT_AN_OUTCOME,
    ),
    **_group(
        "test_metrics",
        episodes=NOT_AN_OUTCOME,
        success_rate=HIGHER,
        avg_steps=LOWER,
        avg_reward=HIGHER,
        std_reward=LOWER,
        std_steps=LOWER,
        optimal_start_state_fraction=HIGHER,
        optimality_gap_steps=LOWER,
        optimality_gap_reward=LOWER,
        greedy_mean_steps_all_starts=LOWER,
        greedy_mean_reward_all_starts=HIGHER,
        greedy_success_rate_all_starts=HIGHER,
        expected_mean_steps_all_starts=LOWER,
        expected_mean_reward_all_starts=HIGHER,
        expected_success_rate_all_starts=HIGHER,
        optimal_mean_steps=NOT_AN_OUTCOME,
        optimal_mean_reward=NOT_AN_OUTCOME,
    ),
    **_group(
        "system_metrics",
        # Throughput is the one system figure compared as better or worse; the rest is what
        # the run used (CPU, memory, time) or where it ran.
        steps_per_second=HIGHER,
        wall_time_s=NOT_AN_OUTCOME,
        training_time_s=NOT_AN_OUTCOME,
        cpu_user_s=NOT_AN_OUTCOME,
        cpu_system_s=NOT_AN_OUTCOME,
        cpu_percent=NOT_AN_OUTCOME,
        peak_rss_mb=NOT_AN_OUTCOME,
        training_steps=NOT_AN_OUTCOME,
        cpu_count=NOT_AN_OUTCOME,
        pid=NOT_AN_OUTCOME,
        resumed_from_episode=NOT_AN_OUTCOME,
        stream_reconnects=NOT_AN_OUTCOME,
        stream_spilled_batches=NOT_AN_OUTCOME,
    ),
    **_group(
        "learning_stability",
        final_q_mean=NOT_AN_OUTCOME,
        final_q_variance=NOT_AN_OUTCOME,
        q_stats_states=NOT_AN_OUTCOME,
        convergence_episode=LOWER,
        reward_std_last100=LOWER,
        steps_std_last100=LOWER,
    ),
    **_group(
        "brute_force_metrics",
        random_success_rate=NOT_AN_OUTCOME,
        random_avg_steps=NOT_AN_OUTCOME,
        random_avg_reward=NOT_AN_OUTCOME,
        random_episodes=NOT_AN_OUTCOME,
        optimal_avg_reward=NOT_AN_OUTCOME,
        gap_closed_percent=HIGHER,
        improvement_percent=HIGHER,
        efficiency_gain=HIGHER,
        success_rate_gain=HIGHER,
    ),
    **_group(
        "improvement_metrics",
        window_episodes=NOT_AN_OUTCOME,
        first_window_avg_reward=NOT_AN_OUTCOME,
        last_window_avg_reward=HIGHER,
        reward_improvement=HIGHER,
        first_window_avg_steps=NOT_AN_OUTCOME,
        last_window_avg_steps=LOWER,
        steps_reduction=HIGHER,
        best_moving_avg_reward_100=HIGHER,
    ),
}


def metric_direction(metric: str) -> int:
    """The direction of a dotted metric path; UNKNOWN for one the table does not declare."""
    return METRICS.get(metric, UNKNOWN)


def is_outcome(direction: int) -> bool:
    return direction in (HIGHER, LOWER)
