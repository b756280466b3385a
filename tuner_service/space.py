"""Validating a sweep's spec against the trainer's own parameter ranges; Optuna distributions."""

from __future__ import annotations

import math
from collections.abc import Iterable

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from taxidriver.errors import Violations
from taxidriver.trainer.v1 import trainer_service_pb2
from taxidriver.tuner.v1 import tuner_service_pb2 as pb

DEFAULT_METRIC = "optimal_start_state_fraction"
# What breaks ties between trials of equal value: the shorter training.
TIE_BREAK_METRIC = "training_time_s"
MAX_TRIALS = 1_000
MAX_PARALLELISM = 32
MAX_SEEDS = 50
DEFAULT_SEEDS = 3
DEFAULT_TEST_EPISODES = 100
SAMPLER_NAMES = {
    pb.SAMPLER_TPE: "tpe",
    pb.SAMPLER_RANDOM: "random",
    pb.SAMPLER_GRID: "grid",
    pb.SAMPLER_CMA_ES: "cma_es",
}

# Searched when a request names no parameter: the trainer's tunable ones over useful ranges
# (the trainer's full ranges include values no run learns anything with, such as alpha 1e-9).
DEFAULT_RANGES: dict[str, pb.ParameterRange] = {
    "alpha": pb.ParameterRange(name="alpha", low=0.01, high=1.0, log=True),
    "gamma": pb.ParameterRange(name="gamma", low=0.8, high=1.0),
    "epsilon_decay": pb.ParameterRange(name="epsilon_decay", low=0.9, high=0.9999),
    "training_episodes": pb.ParameterRange(name="training_episodes", low=100, high=5000, log=True),
}


def default_space(algorithm: trainer_service_pb2.AlgorithmInfo) -> list[pb.ParameterRange]:
    return [DEFAULT_RANGES[name] for name in algorithm.parameter_names if name in DEFAULT_RANGES]


def _violates(spec: trainer_service_pb2.ParameterSpec, value: float) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    low_ok = value > spec.minimum if spec.minimum_exclusive else value >= spec.minimum
    high_ok = value < spec.maximum if spec.maximum_exclusive else value <= spec.maximum
    if not (low_ok and high_ok):
        low = "(" if spec.minimum_exclusive else "["
        high = ")" if spec.maximum_exclusive else "]"
        return f"must be within the trainer's range {low}{spec.minimum:g}, {spec.maximum:g}{high}, got {value:g}"
    if spec.type == "int32" and value != int(value):
        return f"must be a whole number, got {value:g}"
    return None


def check_space(
    space: Iterable[pb.ParameterRange],
    field: str,
    algorithm: trainer_service_pb2.AlgorithmInfo | None,
    specs: dict[str, trainer_service_pb2.ParameterSpec],
    violations: Violations,
    *,
    sampler: int = pb.SAMPLER_TPE,
) -> None:
    seen: set[str] = set()
    for index, item in enumerate(space):
        where = f"{field}[{index}]"
        spec = specs.get(item.name)
        if spec is None:
            violations.add(f"{where}.name", f"must be one of {', '.join(sorted(specs))}")
            continue
        if algorithm is not None and item.name not in algorithm.parameter_names:
            violations.add(f"{where}.name", f"{algorithm.name} does not use {item.name}")
        if item.name in seen:
            violations.add(f"{where}.name", f"{item.name} is listed twice")
        seen.add(item.name)
        if item.choices:
            if item.low or item.high or item.log:
                violations.add(f"{where}.choices", "give either choices or low/high, not both")
            for position, choice in enumerate(item.choices):
                problem = _violates(spec, choice)
                if problem:
                    violations.add(f"{where}.choices[{position}]", problem)
            if len(set(item.choices)) != len(item.choices):
                violations.add(f"{where}.choices", "must not repeat a value")
            continue
        if sampler == pb.SAMPLER_GRID:
            violations.add(f"{where}.choices", "the grid sampler needs choices for every parameter")
        for bound in ("low", "high"):
            problem = _violates(spec, getattr(item, bound))
            if problem:
                violations.add(f"{where}.{bound}", problem)
        if not item.low < item.high:
            violations.add(f"{where}.high", f"must be greater than low ({item.low:g})")
        if item.log and item.low <= 0:
            violations.add(f"{where}.low", "must be > 0 on a log scale")


def distributions(
    space: Iterable[pb.ParameterRange], specs: dict[str, trainer_service_pb2.ParameterSpec]
) -> dict[str, BaseDistribution]:
    found: dict[str, BaseDistribution] = {}
    for item in space:
        integer = specs[item.name].type == "int32"
        if item.choices:
            values = [int(c) if integer else float(c) for c in item.choices]
            found[item.name] = CategoricalDistribution(values)
        elif integer:
            found[item.name] = IntDistribution(int(item.low), int(item.high), log=item.log)
        else:
            found[item.name] = FloatDistribution(item.low, item.high, log=item.log)
    return found


def make_sampler(
    sampler: int, space: Iterable[pb.ParameterRange], seed: int, dists: dict[str, BaseDistribution]
) -> optuna.samplers.BaseSampler:
    if sampler == pb.SAMPLER_RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler == pb.SAMPLER_GRID:
        grid = {name: list(dist.choices) for name, dist in dists.items() if isinstance(dist, CategoricalDistribution)}
        return optuna.samplers.GridSampler(grid, seed=seed)  # type: ignore[arg-type]
    if sampler == pb.SAMPLER_CMA_ES:
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid_size(space: Iterable[pb.ParameterRange]) -> int:
    return math.prod(len(item.choices) for item in space)
