"""CompareRuns: two to twenty runs side by side (parameters that differ, each metric with its best run).

The servicer reads the runs; this module checks the request's ids and lays the runs out.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from registry_service.convert import METRIC_GROUPS, struct_to_dict, value_to_proto
from registry_service.grouping import param_groups
from taxidriver.errors import Violations, bad_field
from taxidriver.registry.v1 import registry_service_pb2 as pb
from taxidriver.registry.v1 import resources_pb2
from taxidriver.vocabulary import HIGHER, is_outcome, metric_direction

MIN_RUNS, MAX_RUNS = 2, 20


def compared_ids(run_ids: Sequence[str]) -> list[uuid.UUID]:
    """The run ids of a CompareRuns request, or INVALID_ARGUMENT naming `run_ids` or `run_ids[i]`."""
    if not MIN_RUNS <= len(run_ids) <= MAX_RUNS:
        raise bad_field("run_ids", "compare two to twenty runs")
    violations = Violations()
    parsed = [violations.uuid(text, f"run_ids[{index}]") for index, text in enumerate(run_ids)]
    violations.raise_if_any()
    ids = [run_id for run_id in parsed if run_id is not None]
    if len(set(ids)) != len(ids):
        raise bad_field("run_ids", "each run may appear once")
    return ids


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _comparison(metric: str, values: list[Any], runs: list[resources_pb2.Run]) -> pb.MetricComparison:
    """One metric side by side: a best run only for an outcome, and only when one run holds it alone."""
    direction = metric_direction(metric)
    comparison = pb.MetricComparison(
        metric=metric,
        values=[value_to_proto(v if is_number(v) else None) for v in values],
        higher_is_better=direction == HIGHER,
        direction=direction,  # type: ignore[arg-type]
    )
    numbers = [(v, i) for i, v in enumerate(values) if is_number(v)]
    if is_outcome(direction) and numbers:
        best = max(v for v, _ in numbers) if direction == HIGHER else min(v for v, _ in numbers)
        holders = [runs[i].run_id for v, i in numbers if v == best]
        if len(holders) == 1:
            comparison.best_run_id = holders[0]
        else:
            comparison.tied_run_ids.extend(holders)
    return comparison


def compare(runs: list[resources_pb2.Run]) -> pb.CompareRunsResponse:
    """The runs in the order asked, the parameters that differ, every numeric metric, the configurations."""
    response = pb.CompareRunsResponse(runs=runs)
    params = [struct_to_dict(run.params) for run in runs]
    for key in sorted({k for p in params for k in p}):
        values = [p.get(key) for p in params]
        if any(v != values[0] for v in values[1:]):
            response.param_differences.append(pb.ParamDifference(key=key, values=[value_to_proto(v) for v in values]))
    metric_values: dict[str, list[Any]] = {}
    groups = [{g: struct_to_dict(getattr(run, g)) for g in METRIC_GROUPS} for run in runs]
    for group in METRIC_GROUPS:
        keys = sorted({k for g in groups for k, v in g[group].items() if is_number(v)})
        for key in keys:
            metric_values[f"{group}.{key}"] = [g[group].get(key) for g in groups]
    metric_values["execution_time"] = [run.execution_time for run in runs]
    for metric, values in metric_values.items():
        response.metrics.append(_comparison(metric, values, runs))
    response.param_groups.extend(param_groups(runs))
    return response
