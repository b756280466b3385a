"""`taxi-driver`: train, browse and compare runs from a terminal, through the gateway.

Tables for people by default, `--json` for scripts. A failed call prints its
status code, message and each bad field, and exits 1 (never a traceback).
The gateway comes from `--gateway`, else TAXI_DRIVER_GATEWAY, else 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from taxidriver.client import (
    MODES,
    TERMINAL_STATUSES,
    ClientError,
    TaxiDriverClient,
    gateway_from_env,
    status_name,
)
from taxidriver.registry.v1 import resources_pb2

HYPERPARAMETERS = {
    "alpha": float,
    "gamma": float,
    "epsilon": float,
    "epsilon_min": float,
    "epsilon_decay": float,
    "training_episodes": int,
    "max_steps": int,
}


class Output:
    """Where results go: stdout (data) and stderr (progress, errors)."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False), file=self.out)

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def reply(self, message: Any, text: str) -> None:
        """A call's reply: the message as JSON with --json, else one line for people."""
        if self.as_json:
            self.json(to_dict(message))
        else:
            self.line(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_cell(value) for value in row] for row in rows]
        widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
        print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), file=self.out)
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=self.out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _metric(run: resources_pb2.Run, group: str, key: str) -> Any:
    struct = getattr(run, group)
    return struct[key] if key in struct else None


def _run_row(run: resources_pb2.Run) -> list[Any]:
    return [
        run.run_id,
        run.algorithm,
        status_name(run.status),
        run.mode,
        f"{run.episodes_recorded}/{run.episodes_planned}",
        _metric(run, "test_metrics", "success_rate"),
        _metric(run, "test_metrics", "avg_steps"),
        _metric(run, "test_metrics", "avg_reward"),
        run.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if run.HasField("create_time") else "",
    ]


RUN_HEADERS = ["run_id", "algorithm", "status", "mode", "episodes", "success", "avg_steps", "avg_reward", "created"]


def _print_runs(output: Output, runs: Sequence[resources_pb2.Run], total: int | None = None) -> None:
    if output.as_json:
        body: dict[str, Any] = {"runs": [to_dict(r) for r in runs]}
        if total is not None:
            body["total_size"] = total
        output.json(body)
        return
    output.table(RUN_HEADERS, [_run_row(r) for r in runs])
    if total is not None:
        output.line(f"{len(runs)} of {total} runs")


# Commands -----------------------------------------------------------------------------


def cmd_train(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS if getattr(args, name, None) is not None}
    started = client.start_run(
        args.algorithm,
        mode=args.mode,
        hyperparameters=hyperparameters,
        test_episodes=args.test_episodes or 0,
        seed=args.seed,
        time_budget_seconds=args.time_budget,
        env_id=args.env_id or "",
        request_id=args.request_id or "",
    )
    run_id = started.run_id
    print(f"run {run_id} {status_name(started.status)} (seed {started.seed})", file=output.err)
    progress = Progress(output.err, planned=started.hyperparameters.training_episodes, enabled=not args.no_progress)
    final_status = resources_pb2.RUN_STATUS_UNSPECIFIED
    try:
        for event in client.watch_run(run_id):
            if event.HasField("episodes"):
                progress.episodes(event.episodes)
            elif event.HasField("status_change"):
                change = event.status_change
                if change.episodes_planned:
                    progress.planned = change.episodes_planned
                final_status = change.status
                if change.status in TERMINAL_STATUSES:
                    break
    except KeyboardInterrupt:
        progress.finish()
        print(f"cancelling run {run_id}", file=output.err)
        client.cancel_run(run_id)
        return 130
    progress.finish()
    run = client.get_run(run_id)
    if output.as_json:
        output.json(to_dict(run))
    else:
        _print_run(output, run)
    if final_status != resources_pb2.RUN_STATUS_COMPLETED and run.status != resources_pb2.RUN_STATUS_COMPLETED:
        print(f"run {run_id} ended {status_name(run.status)}: {run.error_message or run.stop_reason}", file=output.err)
        return 1
    return 0


class Progress:
    """One self-rewriting line: episode, reward, epsilon and ETA from the watched episodes."""

    def __init__(self, stream: TextIO, *, planned: int, enabled: bool) -> None:
        self.stream = stream
        self.planned = planned
        self.enabled = enabled
        self.started = time.monotonic()
        self.done = 0
        self.shown = False

    def episodes(self, curves: resources_pb2.EpisodeCurves) -> None:
        count = len(curves.rewards)
        if count == 0:
            return
        self.done = curves.first_episode + count
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = (self.planned - self.done) / rate if rate > 0 and self.planned > self.done else 0.0
        width = 30
        filled = int(width * min(1.0, self.done / self.planned)) if self.planned else 0
        bar = "#" * filled + "-" * (width - filled)
        epsilon = curves.epsilons[-1] if curves.epsilons else float("nan")
        line = (
            f"\r[{bar}] episode {self.done}/{self.planned or '?'}  reward {curves.rewards[-1]:8.2f}"
            f"  epsilon {epsilon:.3f}  ETA {remaining:5.1f}s"
        )
        self.stream.write(line)
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _print_run(output: Output, run: resources_pb2.Run) -> None:
    output.line(f"run_id:          {run.run_id}")
    output.line(f"algorithm:       {run.algorithm}")
    output.line(f"status:          {status_name(run.status)}")
    output.line(f"mode:            {run.mode}")
    output.line(f"env_id:          {run.env_id}")
    output.line(f"episodes:        {run.episodes_recorded}/{run.episodes_planned}")
    if run.stop_reason:
        output.line(f"stop_reason:     {run.stop_reason}")
    if run.error_message:
        output.line(f"error:           {run.error_message}")
    output.line(f"execution_time:  {run.execution_time:.2f}s")
    if run.model_path:
        output.line(f"model_path:      {run.model_path}")
    if run.tags:
        output.line(f"tags:            {', '.join(run.tags)}")
    for group in (
        "params",
        "test_metrics",
        "training_metrics",
        "system_metrics",
        "learning_stability",
        "brute_force_metrics",
        "improvement_metrics",
        "plots",
    ):
        values = json_format.MessageToDict(getattr(run, group))
        if not values:
            continue
        output.line(f"{group}:")
        for key in sorted(values):
            value = values[key]
            shown = json.dumps(value) if isinstance(value, dict | list) else _cell(value)
            if len(shown) > 100:
                shown = shown[:97] + "..."
            output.line(f"  {key}: {shown}")


def cmd_runs_list(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    clauses = [args.filter] if args.filter else []
    if args.algorithm:
        clauses.append(f'algorithm = "{args.algorithm}"')
    if args.status:
        clauses.append(f'status = "{args.status}"')
    query = " AND ".join(f"({c})" if " OR " in c.upper() else c for c in clauses)
    runs, total = client.list_runs(filter=query, order_by=args.order_by or "", limit=args.limit)
    _print_runs(output, runs, total)
    return 0


def cmd_runs_show(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    run = client.get_run(args.run_id, curves=args.curves)
    if output.as_json:
        output.json(to_dict(run))
        return 0
    _print_run(output, run)
    if args.curves and run.HasField("curves"):
        output.line(f"curves: {len(run.curves.rewards)} episodes from {run.curves.first_episode}")
    annotations = client.annotations(args.run_id)
    for note in annotations:
        tags = f" [{', '.join(note.tags)}]" if note.tags else ""
        output.line(f"note: {note.annotation}{tags}")
    return 0


def cmd_runs_best(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    runs = client.best_runs(algorithm=args.algorithm or "", limit=args.limit, order_by=args.order_by or "")
    _print_runs(output, runs)
    return 0


def cmd_runs_stats(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    stats = client.statistics(filter=args.filter or "")
    if output.as_json:
        output.json(to_dict(stats))
        return 0
    output.line(f"total runs: {stats.total_runs}  completed: {stats.completed_runs}")
    output.table(
        ["algorithm", "runs", "completed", "avg_success", "avg_steps", "avg_reward", "best_success", "best_run"],
        [
            [
                a.algorithm,
                a.total_runs,
                a.completed_runs,
                a.avg_success_rate,
                a.avg_steps,
                a.avg_reward,
                a.best_success_rate,
                a.best_run_id,
            ]
            for a in stats.algorithms
        ],
    )
    if stats.daily:
        output.line()
        output.table(
            ["day", "runs", "avg_success", "avg_steps"],
            [[d.day.ToDatetime().date().isoformat(), d.runs, d.avg_success_rate, d.avg_steps] for d in stats.daily],
        )
    return 0


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _key_values(items: Sequence[str], option: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} expects key=value, got {item!r}")
        values[key.strip()] = _parse_value(raw.strip())
    return values


def cmd_runs_search(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    params = _key_values(args.param, "--param")
    if not params:
        raise UsageError("give at least one --param key=value (e.g. --param alpha=0.1)")
    runs = client.search_by_params(params, limit=args.limit)
    _print_runs(output, runs)
    return 0


def cmd_runs_compare(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    reply = client.compare_runs(args.run_ids)
    if output.as_json:
        output.json(to_dict(reply))
        return 0
    ids = [r.run_id for r in reply.runs] or list(args.run_ids)
    short = [run_id[:8] for run_id in ids]
    output.table(
        ["metric", *short, "best"],
        [[m.metric, *(_value(v) for v in m.values), (m.best_run_id or "")[:8] or "-"] for m in reply.metrics],
    )
    if reply.param_differences:
        output.line()
        output.table(["param", *short], [[d.key, *(_value(v) for v in d.values)] for d in reply.param_differences])
    return 0


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return json.dumps(json_format.MessageToDict(value))


def cmd_runs_annotate(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    note = client.annotate(args.run_id, args.text, args.tag or [], request_id=args.request_id or "")
    if output.as_json:
        output.json(to_dict(note))
    else:
        output.line(f"annotation {note.annotation_id} on run {note.run_id}")
    return 0


def cmd_runs_annotations(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    notes = client.annotations(args.run_id)
    if output.as_json:
        output.json({"annotations": [to_dict(n) for n in notes]})
        return 0
    output.table(
        ["annotation_id", "created", "tags", "annotation"],
        [
            [n.annotation_id, n.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"), ",".join(n.tags), n.annotation]
            for n in notes
        ],
    )
    return 0


def cmd_runs_delete(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    reply = client.delete_run(args.run_id)
    output.reply(
        reply,
        f"deleted run {reply.run_id}: {reply.episodes_deleted} episodes, {reply.annotations_deleted} annotations,"
        f" {reply.models_deleted} models, {reply.artifacts_deleted} artifacts",
    )
    return 0


def cmd_runs_cancel(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    reply = client.cancel_run(args.run_id)
    output.reply(reply, f"run {reply.run_id} {status_name(reply.status)}")
    return 0


def cmd_runs_resume(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    reply = client.resume_run(args.run_id)
    output.reply(reply, f"run {reply.run_id} {status_name(reply.status)} from episode {reply.resumed_from_episode}")
    return 0


def cmd_models_list(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    models = client.list_models(run_id=args.run_id or "")
    if output.as_json:
        output.json({"models": [to_dict(m) for m in models]})
        return 0
    output.table(
        ["model_id", "run_id", "model_name", "size", "model_path"],
        [[m.model_id, m.run_id or "-", m.model_name, m.model_size, m.model_path] for m in models],
    )
    return 0


def cmd_models_export(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    model, content = client.export_model(args.model_id)
    target = Path(args.output or model.model_name or f"{args.model_id}.npy")
    target.write_bytes(content)
    if output.as_json:
        output.json({"model": to_dict(model), "path": str(target), "bytes": len(content)})
    else:
        output.line(f"wrote {len(content)} bytes of model {model.model_id} to {target}")
    return 0


def cmd_models_import(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    source = Path(args.file)
    if not source.is_file():
        raise UsageError(f"no such file: {source}")
    model = client.import_model(
        source.read_bytes(),
        model_name=args.name or source.name,
        run_id=args.run_id or "",
        metadata=_key_values(args.meta or [], "--meta"),
        request_id=args.request_id or "",
    )
    if output.as_json:
        output.json(to_dict(model))
    else:
        output.line(f"imported model {model.model_id} ({model.model_size} bytes) as {model.model_name}")
    return 0


def cmd_plots(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    directory = Path(args.output)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    for artifact in client.list_artifacts(args.run_id, kind=resources_pb2.ARTIFACT_KIND_PLOT):
        meta, content = client.download_artifact(artifact.artifact_id)
        # Artifact names are the registry's; keep only the file name part.
        target = directory / Path(meta.name or artifact.name).name
        target.write_bytes(content)
        written.append({"artifact_id": artifact.artifact_id, "path": str(target), "bytes": len(content)})
    if output.as_json:
        output.json({"plots": written})
    elif not written:
        output.line(f"run {args.run_id} has no plots")
    else:
        for item in written:
            output.line(f"wrote {item['path']} ({item['bytes']} bytes)")
    return 0


def cmd_algorithms(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    reply = client.algorithms()
    if output.as_json:
        output.json(to_dict(reply))
        return 0
    output.table(
        ["name", "parameters", "description"],
        [[a.name, ",".join(a.parameter_names), a.description] for a in reply.algorithms],
    )
    if reply.parameters:
        output.line()
        output.table(
            ["parameter", "type", "range", "description"],
            [
                [
                    p.name,
                    p.type,
                    f"{'(' if p.minimum_exclusive else '['}{_cell(p.minimum)}, "
                    f"{_cell(p.maximum)}{')' if p.maximum_exclusive else ']'}",
                    p.description,
                ]
                for p in reply.parameters
            ],
        )
    if reply.env_ids:
        output.line()
        output.line(f"environments: {', '.join(reply.env_ids)}")
    return 0


# Parser -------------------------------------------------------------------------------


class UsageError(Exception):
    """Bad command-line input found after parsing (exit 2, like argparse)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taxi-driver", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gateway", default=None, help="gateway address (default: $TAXI_DRIVER_GATEWAY or 127.0.0.1:50051)"
    )
    parser.add_argument(
        "--api-key", default=None, help="API key sent as 'authorization: Bearer <key>' (default: $TAXI_DRIVER_API_KEY)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="start a run and follow it live")
    train.add_argument(
        "algorithm", help="brute_force, q_learning, sarsa, expected_sarsa, double_q_learning, monte_carlo"
    )
    train.add_argument("--mode", choices=list(MODES), default="optimized")
    for name, kind in HYPERPARAMETERS.items():
        flag = "--episodes" if name == "training_episodes" else f"--{name.replace('_', '-')}"
        train.add_argument(flag, dest=name, type=kind, default=None)
    train.add_argument("--test-episodes", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--time-budget", type=float, default=None, help="seconds (mode time_budget)")
    train.add_argument("--env-id", default=None)
    train.add_argument("--request-id", default=None, help="makes a retried start idempotent")
    train.add_argument("--no-progress", action="store_true", help="no live progress line")
    train.set_defaults(handler=cmd_train)

    runs = commands.add_parser("runs", help="browse, compare, annotate and delete runs").add_subparsers(
        dest="runs_command", required=True, metavar="ACTION"
    )
    listing = runs.add_parser("list", help="runs, newest first")
    listing.add_argument("--algorithm")
    listing.add_argument("--status", help="queued, running, completed, failed, cancelled, interrupted")
    listing.add_argument("--filter", help='AIP-160 filter, e.g. "params.alpha >= 0.1"')
    listing.add_argument("--order-by", help='e.g. "test_metrics.avg_steps asc"')
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(handler=cmd_runs_list)
    show = runs.add_parser("show", help="one run with all its metric groups")
    show.add_argument("run_id")
    show.add_argument("--curves", action="store_true", help="include per-episode curves")
    show.set_defaults(handler=cmd_runs_show)
    best = runs.add_parser("best", help="best completed runs, ranked")
    best.add_argument("--algorithm")
    best.add_argument("--limit", type=int, default=10)
    best.add_argument("--order-by")
    best.set_defaults(handler=cmd_runs_best)
    stats = runs.add_parser("stats", help="totals and averages per algorithm, trend per day")
    stats.add_argument("--filter")
    stats.set_defaults(handler=cmd_runs_stats)
    search = runs.add_parser("search", help="runs whose params match")
    search.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    search.add_argument("--limit", type=int, default=50)
    search.set_defaults(handler=cmd_runs_search)
    compare = runs.add_parser("compare", help="metrics side by side and parameter differences")
    compare.add_argument("run_ids", nargs="+")
    compare.set_defaults(handler=cmd_runs_compare)
    annotate = runs.add_parser("annotate", help="add a note with tags to a run")
    annotate.add_argument("run_id")
    annotate.add_argument("--text", required=True)
    annotate.add_argument("--tag", action="append")
    annotate.add_argument("--request-id")
    annotate.set_defaults(handler=cmd_runs_annotate)
    annotations = runs.add_parser("annotations", help="a run's notes")
    annotations.add_argument("run_id")
    annotations.set_defaults(handler=cmd_runs_annotations)
    delete = runs.add_parser("delete", help="delete a run and everything that hangs off it")
    delete.add_argument("run_id")
    delete.set_defaults(handler=cmd_runs_delete)
    cancel = runs.add_parser("cancel", help="stop a queued or running run")
    cancel.add_argument("run_id")
    cancel.set_defaults(handler=cmd_runs_cancel)
    resume = runs.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    resume.add_argument("run_id")
    resume.set_defaults(handler=cmd_runs_resume)

    models = commands.add_parser("models", help="saved models").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    models_list = models.add_parser("list")
    models_list.add_argument("--run-id")
    models_list.set_defaults(handler=cmd_models_list)
    export = models.add_parser("export", help="download a model's bytes")
    export.add_argument("model_id")
    export.add_argument("-o", "--output", help="file to write (default: the model's name)")
    export.set_defaults(handler=cmd_models_export)
    imported = models.add_parser("import", help="upload a model file")
    imported.add_argument("file")
    imported.add_argument("--name")
    imported.add_argument("--run-id")
    imported.add_argument("--meta", action="append", metavar="KEY=VALUE")
    imported.add_argument("--request-id")
    imported.set_defaults(handler=cmd_models_import)

    plots = commands.add_parser("plots", help="download a run's PNG plots")
    plots.add_argument("run_id")
    plots.add_argument("-o", "--output", default=".", help="directory (default: current)")
    plots.set_defaults(handler=cmd_plots)

    algorithms = commands.add_parser("algorithms", help="algorithms, parameter ranges, presets")
    algorithms.set_defaults(handler=cmd_algorithms)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    output = Output(args.json, out, err)
    handler: Callable[[TaxiDriverClient, argparse.Namespace, Output], int] = args.handler
    gateway = args.gateway or gateway_from_env()
    try:
        with TaxiDriverClient(gateway, timeout=args.timeout, api_key=args.api_key) as client:
            return handler(client, args, output)
    except ClientError as error:
        if args.json:
            body = {
                "error": {
                    "code": error.code.name,
                    "message": error.message,
                    "reason": error.reason,
                    "field_violations": [{"field": v.field, "description": v.description} for v in error.violations],
                }
            }
            print(json.dumps(body, indent=2), file=err)
        else:
            print(f"error: {error}", file=err)
            if error.code.name == "UNAUTHENTICATED":
                print("(pass --api-key or set TAXI_DRIVER_API_KEY)", file=err)
            if error.code.name == "UNAVAILABLE":
                print(f"(is the gateway running at {gateway}? set --gateway or TAXI_DRIVER_GATEWAY)", file=err)
        return 1
    except (UsageError, ValueError) as error:
        print(f"taxi-driver: error: {error}", file=err)
        return 2
    except OSError as error:
        print(f"taxi-driver: error: {error}", file=err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
