"""Recommendations from what is already stored: Optuna studies built from runs or sweep trials.

SuggestParams fits the chosen sampler on completed runs (each run a completed trial of a study
built in memory with `add_trial`) and asks it for the next parameters; GetParamImportance runs
Optuna's PED-ANOVA evaluator on the same kind of study. PED-ANOVA needs only numpy (the default
fANOVA evaluator needs scikit-learn, which the tuner's image does not carry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.importance import PedAnovaImportanceEvaluator

from taxidriver.errors import Violations, failed_precondition
from taxidriver.ingest.v1 import sweep_store_pb2, sweep_store_pb2_grpc
from taxidriver.trainer.v1 import trainer_service_pb2
from taxidriver.tuner.v1 import tuner_service_pb2 as pb
from tuner_service import space
from tuner_service.driver import CALL_TIMEOUT_S, spec_from_record, trial_from_record

IMPORTANCE_EVALUATOR = "PedAnovaImportanceEvaluator"
# What a sampler learns from: the newest runs (max_runs, default below) and the best BEST_RUNS
# of everything stored. Fitting TPE on all of 10,000 runs took 7.8 s per call (p50, bench
# suggest_p50_ms before this cap); its "good" group is at most 25 trials, which the best 100
# contain, and the newest 1,000 keep the rest of the picture current.
DEFAULT_MAX_RUNS = 1_000
BEST_RUNS = 100
MAX_RUNS = 100_000
# Hyper-parameter name -> the run's params JSONB key (the seed calls training episodes training_runs).
PARAM_KEYS = {"training_episodes": "training_runs"}


@dataclass(frozen=True)
class Observation:
    params: dict[str, float]
    value: float
    training_seconds: float
    run_id: str


def check_request_common(objective: pb.Objective, max_runs: int, violations: Violations) -> None:
    if objective.metric and (len(objective.metric) > 100 or not objective.metric.replace("_", "").isalnum()):
        violations.add("objective.metric", "must be a metric name (letters, digits, _), at most 100")
    if objective.direction not in (pb.DIRECTION_UNSPECIFIED, pb.DIRECTION_MAXIMIZE, pb.DIRECTION_MINIMIZE):
        violations.add("objective.direction", "unknown direction")
    if not 0 <= max_runs <= MAX_RUNS:
        violations.add("max_runs", f"must be in [0, {MAX_RUNS}] (0: {DEFAULT_MAX_RUNS})")


def _direction(objective: pb.Objective) -> optuna.study.StudyDirection:
    if objective.direction == pb.DIRECTION_MINIMIZE:
        return optuna.study.StudyDirection.MINIMIZE
    return optuna.study.StudyDirection.MAXIMIZE


async def stored_observations(
    store: sweep_store_pb2_grpc.SweepStoreServiceStub,
    algorithm: str,
    env_id: str,
    objective: pb.Objective,
    newest: int,
    dists: dict[str, BaseDistribution],
) -> list[Observation]:
    """The best BEST_RUNS completed runs and the `newest` most recent, within the searched space."""
    reply = await store.ListRunObservations(
        sweep_store_pb2.ListRunObservationsRequest(
            algorithm=algorithm,
            env_id=env_id,
            metric=objective.metric or space.DEFAULT_METRIC,
            minimize=objective.direction == pb.DIRECTION_MINIMIZE,
            best=BEST_RUNS,
            newest=newest,
            param_keys=[PARAM_KEYS.get(name, name) for name in dists],
        ),
        timeout=CALL_TIMEOUT_S,
    )
    found = []
    for row in reply.observations:
        if not math.isfinite(row.value):
            continue
        params: dict[str, float] = {}
        for name, dist in dists.items():
            key = PARAM_KEYS.get(name, name)
            if key not in row.params:
                break
            number = row.params[key]
            if isinstance(dist, optuna.distributions.IntDistribution):
                number = round(number)
            if not _inside(dist, number):
                break
            params[name] = number
        else:
            found.append(Observation(params, row.value, row.training_seconds, row.run_id))
    return found


def _inside(dist: BaseDistribution, value: float) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    if isinstance(dist, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution):
        return dist.low <= value <= dist.high
    return False


def observations_from_sweep(record: Any, dists: dict[str, BaseDistribution]) -> list[Observation]:
    found = []
    for stored in record.trials:
        trial = trial_from_record(stored)
        if trial.state != pb.TRIAL_STATE_COMPLETE or not math.isfinite(trial.value):
            continue
        if set(trial.params) != set(dists):
            continue
        params = {
            name: round(value) if isinstance(dists[name], optuna.distributions.IntDistribution) else value
            for name, value in trial.params.items()
        }
        run_id = trial.run_ids[0] if trial.run_ids else ""
        found.append(Observation(params, trial.value, trial.training_seconds, run_id))
    return found


def study_of(
    observations: list[Observation],
    dists: dict[str, BaseDistribution],
    objective: pb.Objective,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    study = optuna.create_study(direction=_direction(objective), sampler=sampler)
    study.add_trials(
        [optuna.trial.create_trial(params=dict(o.params), distributions=dists, value=o.value) for o in observations]
    )
    return study


def best_of(observations: list[Observation], objective: pb.Objective) -> Observation:
    sign = -1.0 if objective.direction == pb.DIRECTION_MINIMIZE else 1.0
    return max(observations, key=lambda o: (sign * o.value, -o.training_seconds))


def suggest(
    request: pb.SuggestParamsRequest,
    observations: list[Observation],
    dists: dict[str, BaseDistribution],
    search_space: list[pb.ParameterRange],
) -> pb.SuggestParamsResponse:
    objective = request.objective
    sampler = space.make_sampler(request.sampler or pb.SAMPLER_TPE, search_space, 0, dists)
    study = study_of(observations, dists, objective, sampler)
    asked = study.ask(dists)
    reply = pb.SuggestParamsResponse(runs_used=len(observations))
    for name, value in asked.params.items():
        reply.suggested_params[name] = float(value)
    if observations:
        best = best_of(observations, objective)
        for name, value in best.params.items():
            reply.best_params[name] = float(value)
        reply.best_value = best.value
        reply.best_run_id = best.run_id
    return reply


def importance(
    observations: list[Observation], dists: dict[str, BaseDistribution], objective: pb.Objective
) -> pb.GetParamImportanceResponse:
    # Parameters that never varied explain nothing: left out (PED-ANOVA needs a spread).
    varied = {name: dist for name, dist in dists.items() if len({o.params[name] for o in observations}) > 1}
    if len(observations) < 2 or not varied:
        raise failed_precondition(
            f"parameter importance needs at least 2 completed trials whose parameters vary; found {len(observations)}",
            reason="NOT_ENOUGH_TRIALS",
        )
    study = study_of(observations, dists, objective)
    scores = optuna.importance.get_param_importances(
        study, evaluator=PedAnovaImportanceEvaluator(), params=sorted(varied)
    )
    return pb.GetParamImportanceResponse(
        importances=[pb.ParamImportance(name=name, importance=float(value)) for name, value in scores.items()],
        evaluator=IMPORTANCE_EVALUATOR,
        trials_used=len(observations),
    )


def sweep_space(record: Any) -> tuple[pb.SweepSpec, list[pb.ParameterRange]]:
    spec = spec_from_record(record)
    return spec, list(spec.search_space)


def algorithm_space(
    algorithm: trainer_service_pb2.AlgorithmInfo, requested: list[pb.ParameterRange]
) -> list[pb.ParameterRange]:
    return requested or space.default_space(algorithm)
