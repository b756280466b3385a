"""CompareRuns by configuration: runs that differ only by their seed are one group, described by
across-seed statistics (mean, IQM, stratified-bootstrap interval; taxidriver/seedstats.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from registry_service.convert import dict_to_struct, struct_to_dict
from taxidriver import seedstats
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import resources_pb2

# Not part of a configuration: the seed itself, and the checkpoint spacing (bookkeeping).
NOT_CONFIGURATION = frozenset({"seed", "checkpoint_every"})
# The metrics summarised per group, where the runs have them.
GROUPED_METRICS = (
    "test_metrics.optimal_start_state_fraction",
    "test_metrics.success_rate",
    "test_metrics.avg_steps",
    "test_metrics.avg_reward",
    "system_metrics.training_time_s",
)


def _metric(run: resources_pb2.Run, dotted: str) -> float | None:
    group, key = dotted.split(".", 1)
    struct = getattr(run, group)
    if key not in struct.fields:
        return None
    value = struct.fields[key]
    if value.WhichOneof("kind") != "number_value":
        return None
    return float(value.number_value)


def param_groups(runs: Sequence[resources_pb2.Run]) -> list[pb.ParamGroup]:
    """Groups in order of their first run; statistics stratified by environment."""
    groups: dict[str, tuple[str, dict[str, Any], list[resources_pb2.Run]]] = {}
    for run in runs:
        params = {k: v for k, v in struct_to_dict(run.params).items() if k not in NOT_CONFIGURATION}
        key = json.dumps([run.algorithm, params], sort_keys=True)
        groups.setdefault(key, (run.algorithm, params, []))[2].append(run)
    found = []
    for algorithm, params, members in groups.values():
        group = pb.ParamGroup(
            algorithm=algorithm, params=dict_to_struct(params), run_ids=[run.run_id for run in members]
        )
        for metric in GROUPED_METRICS:
            by_env: dict[str, list[float]] = {}
            for run in members:
                value = _metric(run, metric)
                if value is not None:
                    by_env.setdefault(run.env_id, []).append(value)
            if not by_env:
                continue
            summary = seedstats.seed_statistics(by_env)
            group.metrics.append(
                pb.MetricStatistics(
                    metric=metric,
                    statistics=resources_pb2.SeedStatistics(
                        seeds=summary.seeds,
                        mean=summary.mean,
                        iqm=summary.iqm,
                        ci_low=summary.ci_low,
                        ci_high=summary.ci_high,
                    ),
                )
            )
        found.append(group)
    return found
