"""`taxi-driver`: train, browse and compare runs from a terminal, through the gateway.

Tables for people by default, `--json` for scripts. A failed call prints its
status code, message and each bad field, and exits 1 (never a traceback).
The gateway comes from `--gateway`, else TAXI_DRIVER_GATEWAY, else 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from taxidriver.client import (
    MODES,
    ClientError,
    TaxiDriverClient,
    gateway_from_env,
    status_name,
)
from taxidriver.registry.v1 import resources_pb2
from taxidriver.tuner.v1 import tuner_service_pb2
from taxidriver.vocabulary import STOPPED_STATUSES

HYPERPARAMETERS = {
    "alpha": float,
    "gamma": float,
    "epsilon": float,
    "epsilon_min": float,
    "epsilon_decay": float,
    "training_episodes": int,
    "max_steps": int,
}
# Every integer up to 2**53 is exact as a double, the type of a JSON / Struct number:
# the trainer accepts seeds up to there, so a seed shown here reproduces its run.
MAX_EXACT_INTEGER = 2**53


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def exact(value: Any) -> Any:
    """Integral doubles (Struct and JSON numbers) as the integers they are, recursively:
    a seed, an episode count or a pid is printed `2522016404133378`, never `2.522e+15`."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [exact(item) for item in value]
    return value


class Output:
    """Where results go: stdout (data) and stderr (progress, errors)."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def json(self, value: Any) -> None:
        print(json.dumps(exact(value), indent=2, sort_keys=True, ensure_ascii=False), file=self.out)

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def reply(self, message: Any, text: str) -> None:
        """A call's reply: the message as JSON with --json, else one line for people."""
        if self.as_json:
            self.json(to_dict(message))
        else:
            self.line(text)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, literal: int = -1) -> None:
        """A table drawn by rich: numbers right-aligned, bold headers on a terminal. Never
        wrapped nor truncated, whatever the width: run ids are copied from it. Headers are
        shown upper-case: all of them, or only the first `literal` ones (the others are run ids)."""
        terminal = is_terminal(self.out)
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold" if terminal else "")
        numeric = [
            any(_is_number(row[i]) for row in rows) and all(_is_number(row[i]) or row[i] is None for row in rows)
            for i in range(len(headers))
        ]
        for index, (header, right) in enumerate(zip(headers, numeric, strict=True)):
            shown = header.upper() if literal < 0 or index < literal else header
            table.add_column(shown, justify="right" if right else "left", no_wrap=True)
        for row in rows:
            table.add_row(*(_cell(value) for value in row))
        buffer = io.StringIO()
        Console(
            file=buffer,
            width=10_000,
            force_terminal=terminal,
            no_color=not terminal,
            highlight=False,
            emoji=False,
            markup=False,
        ).print(table)
        for text in buffer.getvalue().splitlines():
            print(text.rstrip(), file=self.out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    """A value for people: integers whole (up to 2**53), other numbers with 4 significant
    digits or one decimal from 1000 up; an exponent only for tiny values (below 1e-4)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value.is_integer() and abs(value) <= MAX_EXACT_INTEGER:
            return str(int(value))
        magnitude = abs(value)
        if magnitude >= 1e3:
            return f"{value:.1f}"
        if magnitude < 1e-4:
            return f"{value:.2e}"
        return f"{value:.4g}"
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
        run.creator or UNKNOWN_OWNER,
    ]


RUN_HEADERS = [
    "run_id", "algorithm", "status", "mode", "episodes", "success", "avg_steps", "avg_reward", "created", "creator"
]  # fmt: skip
# Runs recorded before owners were (or with authentication off) have no creator.
UNKNOWN_OWNER = "(unknown)"


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
    asked = time.monotonic()
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
    # A new trainer worker loads (or compiles) its kernels before its first run: say what we wait for.
    waiting = "; waiting for a free trainer worker" if started.status == resources_pb2.RUN_STATUS_QUEUED else ""
    print(f"run {run_id} {status_name(started.status)} (seed {started.seed}){waiting}", file=output.err)
    return _follow(
        client,
        run_id,
        output,
        planned=started.hyperparameters.training_episodes,
        progress_shown=not args.no_progress,
        asked=asked,
        cancel_on_interrupt=True,
    )


def cmd_runs_watch(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    """Follow a run started elsewhere (another terminal, a sweep, a backend): Ctrl-C stops
    watching and leaves the run alone."""
    run = client.get_run(args.run_id)
    if run.status in STOPPED_STATUSES:
        # Replaying its stored episodes as "progress" (with an ETA) would mean nothing.
        print(f"run {run.run_id} is already {status_name(run.status)}; nothing to follow", file=output.err)
        return _print_stopped(output, run)
    print(f"run {run.run_id} {status_name(run.status)}", file=output.err)
    return _follow(
        client,
        run.run_id,
        output,
        planned=run.episodes_planned,
        progress_shown=not args.no_progress,
        asked=time.monotonic(),
        cancel_on_interrupt=False,
        # Live from what is stored now: the rate (and ETA) counts only episodes trained while watched.
        from_episode=run.episodes_recorded,
    )


def _follow(
    client: TaxiDriverClient,
    run_id: str,
    output: Output,
    *,
    planned: int,
    progress_shown: bool,
    asked: float,
    cancel_on_interrupt: bool,
    from_episode: int = 0,
) -> int:
    """Show a run's progress live until it stops, then the run; exit 1 unless it completed."""
    progress = make_progress(output.err, planned=planned, enabled=progress_shown, start_episode=from_episode)
    final_status = resources_pb2.RUN_STATUS_UNSPECIFIED
    running_at: float | None = None
    try:
        for event in client.watch_run(run_id, from_episode=from_episode):
            if event.HasField("episodes"):
                running_at = running_at or time.monotonic()
                progress.episodes(event.episodes)
            elif event.HasField("status_change"):
                change = event.status_change
                if change.episodes_planned:
                    progress.planned = change.episodes_planned
                final_status = change.status
                if change.status == resources_pb2.RUN_STATUS_RUNNING and running_at is None:
                    running_at = time.monotonic()
                # Stopped: terminal, or INTERRUPTED (nobody trains it now; resume it).
                if change.status in STOPPED_STATUSES:
                    break
    except KeyboardInterrupt:
        progress.finish()
        if not cancel_on_interrupt:
            print(
                f"stopped watching run {run_id}; it goes on (taxi-driver runs cancel {run_id} stops it)",
                file=output.err,
            )
            return 130
        print(f"cancelling run {run_id}", file=output.err)
        client.cancel_run(run_id)
        return 130
    progress.finish()
    ended = time.monotonic()
    run = client.get_run(run_id)
    print(
        f"run {run_id} {status_name(run.status)}: {run.execution_time:.2f}s of training,"
        f" {ended - asked:.1f}s in all ({(running_at or ended) - asked:.1f}s before it started)",
        file=output.err,
    )
    if final_status == resources_pb2.RUN_STATUS_COMPLETED and run.status != resources_pb2.RUN_STATUS_COMPLETED:
        run.status = final_status  # the watch saw it complete; a lagging read does not undo that
    return _print_stopped(output, run)


def _print_stopped(output: Output, run: resources_pb2.Run) -> int:
    """A stopped run, as data; exit 1 (saying why) unless it completed."""
    if output.as_json:
        output.json(to_dict(run))
    else:
        _print_run(output, run)
    if run.status != resources_pb2.RUN_STATUS_COMPLETED:
        print(
            f"run {run.run_id} ended {status_name(run.status)}: {run.error_message or run.stop_reason}",
            file=output.err,
        )
        return 1
    return 0


class LineProgress:
    """Live progress of a watched run: a rich bar on a terminal; elsewhere (a pipe, a
    log file) plain lines at every tenth of the run, never carriage returns."""

    def __init__(self, stream: TextIO, *, planned: int, enabled: bool, start_episode: int = 0) -> None:
        self.stream = stream
        self.planned = planned
        self.enabled = enabled
        self.started = time.monotonic()
        # Episodes done before we watched: shown as done, never counted in the rate.
        self.start_episode = start_episode
        self.done = start_episode
        self.next_line = 0.0

    def episodes(self, curves: resources_pb2.EpisodeCurves) -> None:
        count = len(curves.rewards)
        if count == 0:
            return
        self.done = curves.first_episode + count
        if not self.enabled:
            return
        fraction = self.done / self.planned if self.planned else 0.0
        if fraction < self.next_line and self.done < self.planned:
            return
        self.next_line = math.floor(fraction * 10 + 1e-9) / 10 + 0.1
        elapsed = time.monotonic() - self.started
        rate = (self.done - self.start_episode) / elapsed if elapsed > 0 else 0.0
        remaining = (self.planned - self.done) / rate if rate > 0 and self.planned > self.done else 0.0
        epsilon = curves.epsilons[-1] if curves.epsilons else float("nan")
        print(
            f"episode {self.done}/{self.planned or '?'} ({100 * fraction:.0f}%)  reward {curves.rewards[-1]:.2f}"
            f"  epsilon {epsilon:.3f}  ETA {remaining:.1f}s",
            file=self.stream,
            flush=True,
        )

    def finish(self) -> None:
        pass


class LiveProgress(LineProgress):
    """The same, as a rich progress bar redrawn in place (terminals only)."""

    def __init__(self, stream: TextIO, *, planned: int, enabled: bool, start_episode: int = 0) -> None:
        super().__init__(stream, planned=planned, enabled=enabled, start_episode=start_episode)
        self.bar = Progress(
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes  reward {task.fields[reward]}  epsilon {task.fields[epsilon]}"),
            TimeRemainingColumn(),
            console=Console(file=stream, highlight=False),
            transient=False,
        )
        # Starts at the episodes already done, so rich's speed (and time left) counts only live ones.
        self.task = self.bar.add_task("train", total=planned or None, completed=start_episode, reward="-", epsilon="-")
        self.bar.start()

    def episodes(self, curves: resources_pb2.EpisodeCurves) -> None:
        count = len(curves.rewards)
        if count == 0:
            return
        self.done = curves.first_episode + count
        epsilon = f"{curves.epsilons[-1]:.3f}" if curves.epsilons else "-"
        self.bar.update(
            self.task,
            completed=self.done,
            total=self.planned or None,
            reward=f"{curves.rewards[-1]:.2f}",
            epsilon=epsilon,
        )

    def finish(self) -> None:
        self.bar.stop()


def make_progress(stream: TextIO, *, planned: int, enabled: bool, start_episode: int = 0) -> LineProgress:
    if enabled and is_terminal(stream):
        return LiveProgress(stream, planned=planned, enabled=True, start_episode=start_episode)
    return LineProgress(stream, planned=planned, enabled=enabled, start_episode=start_episode)


def _print_run(output: Output, run: resources_pb2.Run) -> None:
    output.line(f"run_id:          {run.run_id}")
    output.line(f"algorithm:       {run.algorithm}")
    output.line(f"status:          {status_name(run.status)}")
    output.line(f"mode:            {run.mode}")
    output.line(f"env_id:          {run.env_id}")
    output.line(f"creator:         {run.creator or UNKNOWN_OWNER}")
    if run.resumed_by:
        output.line(f"resumed_by:      {run.resumed_by}")
    if run.cancelled_by:
        output.line(f"cancelled_by:    {run.cancelled_by}")
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
            shown = json.dumps(exact(value)) if isinstance(value, dict | list) else _cell(value)
            if len(shown) > 100:
                shown = shown[:97] + "..."
            output.line(f"  {key}: {shown}")


def cmd_runs_list(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    clauses = [args.filter] if args.filter else []
    if args.algorithm:
        clauses.append(f'algorithm = "{args.algorithm}"')
    if args.status:
        clauses.append(f'status = "{args.status}"')
    if args.mine:
        me = client.current_user().username
        if not me:
            raise UsageError("--mine needs a gateway that checks API keys (this one does not say who you are)")
        clauses.append(f"creator = {json.dumps(me)}")
    query = " AND ".join(f"({c})" if " OR " in c.upper() else c for c in clauses)
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.all:
        runs, total = client.list_runs(filter=query, order_by=args.order_by or "", limit=None)
        next_token = ""
    else:
        runs, next_token, total = client.list_runs_page(
            filter=query, order_by=args.order_by or "", page_size=args.limit, page_token=args.page_token or ""
        )
    if output.as_json:
        output.json({"runs": [to_dict(r) for r in runs], "total_size": total, "next_page_token": next_token})
        return 0
    output.table(RUN_HEADERS, [_run_row(r) for r in runs])
    output.line(f"{len(runs)} of {total} runs")
    if next_token:
        # On stderr: `runs list | ...` pipes the table alone.
        print(f"next page: --page-token {next_token}   (or --all for every run)", file=output.err)
    return 0


CURVE_SERIES = ("rewards", "steps", "epsilons", "td_errors", "successes")
SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """The series in `width` buckets (mean of each), one block character per bucket."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return ""
    buckets = min(width, len(values))
    means = []
    for index in range(buckets):
        chunk = values[index * len(values) // buckets : (index + 1) * len(values) // buckets]
        chunk_values = [float(v) for v in chunk if not math.isnan(float(v))]
        means.append(sum(chunk_values) / len(chunk_values) if chunk_values else math.nan)
    low, high = min(finite), max(finite)
    span = high - low
    return "".join(
        " " if math.isnan(m) else SPARKS[0 if span == 0 else min(7, int((m - low) / span * 8))] for m in means
    )


def _print_curves(output: Output, curves: resources_pb2.EpisodeCurves) -> None:
    count = len(curves.rewards)
    last = curves.first_episode + count - 1
    output.line(f"curves: episodes {curves.first_episode}..{last} ({count}), left to right; --csv FILE writes them")
    rows = []
    for name in CURVE_SERIES:
        values = [float(v) for v in getattr(curves, name)]
        if not values:
            continue
        tail = values[-min(100, len(values)) :]
        rows.append(
            [
                name,
                min(values),
                sum(values) / len(values),
                max(values),
                sum(tail) / len(tail),
                sparkline(values),
            ]
        )
    output.table(["series", "min", "mean", "max", "last100_mean", "trend"], rows)


def write_curves_csv(curves: resources_pb2.EpisodeCurves, target: Path) -> int:
    series = {name: list(getattr(curves, name)) for name in CURVE_SERIES}
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["episode", *CURVE_SERIES])
        for index in range(len(curves.rewards)):
            row: list[Any] = [curves.first_episode + index]
            for name in CURVE_SERIES:
                values = series[name]
                value = values[index] if index < len(values) else ""
                row.append(int(value) if isinstance(value, bool) else value)
            writer.writerow(row)
    return len(curves.rewards)


def cmd_runs_show(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    run = client.get_run(args.run_id, curves=args.curves or bool(args.csv))
    if args.csv:
        written = write_curves_csv(run.curves, Path(args.csv))
        print(f"wrote {written} episodes of curves to {args.csv}", file=output.err)
    if output.as_json:
        output.json(to_dict(run))
        return 0
    _print_run(output, run)
    if args.curves and run.HasField("curves"):
        _print_curves(output, run.curves)
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
    rows = [[m.metric, *(_value(v) for v in m.values), _best(m)] for m in reply.metrics]
    output.table(["metric", *short, "BEST"], rows, literal=1)
    if reply.param_differences:
        output.line()
        differences = [[d.key, *(_value(v) for v in d.values)] for d in reply.param_differences]
        output.table(["param", *short], differences, literal=1)
    if any(len(group.run_ids) > 1 for group in reply.param_groups):
        # Seeds of one configuration together: mean, IQM and 95% stratified-bootstrap interval.
        output.line()
        rows = [
            [
                index,
                len(group.run_ids),
                m.metric,
                round(m.statistics.mean, 4),
                round(m.statistics.iqm, 4),
                f"[{m.statistics.ci_low:.3f}, {m.statistics.ci_high:.3f}]",
            ]
            for index, group in enumerate(reply.param_groups)
            for m in group.metrics
        ]
        output.table(["config", "runs", "metric", "mean", "iqm", "95% ci"], rows)
    return 0


def _best(comparison: Any) -> str:
    """The registry's answer: the best run's short id; "tie" when several share the best
    value; "-" when no best is defined (not an outcome, an unknown metric, no values)."""
    if comparison.best_run_id:
        return str(comparison.best_run_id[:8])
    if comparison.tied_run_ids:
        return "tie"
    return "-"


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
    return json.dumps(exact(json_format.MessageToDict(value)))


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
        ["annotation_id", "created", "author", "tags", "annotation"],
        [
            [
                n.annotation_id,
                n.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M"),
                n.author or UNKNOWN_OWNER,
                ",".join(n.tags),
                n.annotation,
            ]
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
        ["model_id", "run_id", "model_name", "size", "imported_by", "model_path"],
        # A run's own model has no importer: its run's creator owns it (runs show RUN_ID).
        [[m.model_id, m.run_id or "-", m.model_name, m.model_size, m.imported_by or "-", m.model_path] for m in models],
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
        # The registry renders a run's plots on this first read once it is completed.
        status = client.get_run(args.run_id).status
        if status != resources_pb2.RUN_STATUS_COMPLETED:
            word = resources_pb2.RunStatus.Name(status).removeprefix("RUN_STATUS_")
            output.line(f"run {args.run_id} has no plots yet: it is {word}; plots are made once it is completed")
        else:
            output.line(f"run {args.run_id} has no plots (it has no episodes)")
    else:
        for item in written:
            output.line(f"wrote {item['path']} ({item['bytes']} bytes)")
    return 0


def _preset_value(algorithm: Any, name: str) -> Any:
    """A preset's value, or None where the algorithm does not use the parameter."""
    if name not in algorithm.parameter_names or not algorithm.optimized_preset.HasField(name):
        return None
    return getattr(algorithm.optimized_preset, name)


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
    presets = [a for a in reply.algorithms if a.HasField("optimized_preset") and a.optimized_preset.ListFields()]
    if presets:
        names = [p.name for p in reply.parameters] or list(HYPERPARAMETERS)
        output.line()
        output.line("optimized presets (--mode optimized):")
        output.table(
            ["algorithm", *names],
            [[a.name, *(_preset_value(a, n) for n in names)] for a in presets],
        )
        if args.notes:
            for a in presets:
                if a.preset_note:
                    output.line(f"{a.name}: {a.preset_note}")
        else:
            output.line("(--notes: how each preset was measured)")
    if reply.env_ids:
        output.line()
        output.line(f"environments: {', '.join(reply.env_ids)}")
    return 0


# Parser -------------------------------------------------------------------------------


class UsageError(Exception):
    """Bad command-line input found after parsing (exit 2, like argparse)."""


def seed_value(text: str) -> int:
    """A seed the run can be reproduced from: an integer in [0, 2**53]."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer, got {text!r}") from None
    if not 0 <= seed <= MAX_EXACT_INTEGER:
        raise argparse.ArgumentTypeError(f"a seed is in [0, 2**53] (= {MAX_EXACT_INTEGER}), got {seed}")
    return seed


# Sweeps and recommendations (the tuner) ------------------------------------------------------

SAMPLERS = {
    "tpe": tuner_service_pb2.SAMPLER_TPE,
    "random": tuner_service_pb2.SAMPLER_RANDOM,
    "grid": tuner_service_pb2.SAMPLER_GRID,
    "cma-es": tuner_service_pb2.SAMPLER_CMA_ES,
}
SWEEP_STATES = {
    tuner_service_pb2.SWEEP_STATE_RUNNING: "running",
    tuner_service_pb2.SWEEP_STATE_SUCCEEDED: "succeeded",
    tuner_service_pb2.SWEEP_STATE_CANCELLED: "cancelled",
    tuner_service_pb2.SWEEP_STATE_FAILED: "failed",
}
TRIAL_STATES = {
    tuner_service_pb2.TRIAL_STATE_RUNNING: "running",
    tuner_service_pb2.TRIAL_STATE_COMPLETE: "complete",
    tuner_service_pb2.TRIAL_STATE_FAILED: "failed",
    tuner_service_pb2.TRIAL_STATE_CANCELLED: "cancelled",
}


def parse_range(text: str) -> tuner_service_pb2.ParameterRange:
    """NAME=LOW:HIGH[:log] or NAME=V1,V2,... (choices)."""
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise UsageError(f"--param wants NAME=LOW:HIGH[:log] or NAME=V1,V2,...; got {text!r}")
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise ValueError(spec)
            return tuner_service_pb2.ParameterRange(
                name=name, low=float(parts[0]), high=float(parts[1]), log=len(parts) == 3
            )
        return tuner_service_pb2.ParameterRange(name=name, choices=[float(v) for v in spec.split(",")])
    except ValueError:
        raise UsageError(f"--param wants NAME=LOW:HIGH[:log] or NAME=V1,V2,...; got {text!r}") from None


def _objective(args: argparse.Namespace) -> tuner_service_pb2.Objective:
    return tuner_service_pb2.Objective(
        metric=args.metric or "",
        direction=tuner_service_pb2.DIRECTION_MINIMIZE if args.minimize else tuner_service_pb2.DIRECTION_MAXIMIZE,
    )


def _params_text(params: Any) -> str:
    return " ".join(f"{name}={exact(round(value, 6))}" for name, value in sorted(params.items()))


def _trial_row(trial: tuner_service_pb2.Trial, best: int) -> list[Any]:
    stats = trial.statistics
    finished = trial.state == tuner_service_pb2.TRIAL_STATE_COMPLETE
    return [
        f"{trial.number}{'*' if trial.number == best else ''}",
        TRIAL_STATES.get(trial.state, "?"),
        round(trial.value, 4) if finished else None,
        round(stats.iqm, 4) if finished else None,
        f"[{stats.ci_low:.3f}, {stats.ci_high:.3f}]" if finished else "",
        len(trial.run_ids),
        round(trial.training_seconds, 2) if finished else None,
        _params_text(trial.params),
    ]


TRIAL_HEADERS = ["trial", "state", "value", "iqm", "95% ci", "runs", "train_s", "params"]


def _print_sweep(output: Output, sweep: tuner_service_pb2.Sweep) -> None:
    spec = sweep.spec
    output.line(
        f"sweep {sweep.sweep_id}: {spec.algorithm}, {SWEEP_STATES.get(sweep.state, '?')}, "
        f"{sweep.trials_complete}/{spec.n_trials} trials complete, {spec.seeds_per_trial} seeds each, "
        f"objective {spec.objective.metric} "
        f"({'min' if spec.objective.direction == tuner_service_pb2.DIRECTION_MINIMIZE else 'max'})"
    )
    if sweep.trials:
        output.table(TRIAL_HEADERS, [_trial_row(t, sweep.best_trial) for t in sweep.trials])
    if sweep.best_trial >= 0:
        best = next(t for t in sweep.trials if t.number == sweep.best_trial)
        output.line(f"best: trial {best.number} value {best.value:.4f}: {_params_text(best.params)}")
    if sweep.error_message:
        output.line(f"error: {sweep.error_message}")


def cmd_sweep_start(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    spec = tuner_service_pb2.SweepSpec(
        algorithm=args.algorithm,
        search_space=[parse_range(text) for text in args.param],
        objective=_objective(args),
        n_trials=args.trials,
        parallelism=args.parallelism,
        seeds_per_trial=args.seeds,
        sampler=SAMPLERS[args.sampler],
        base_seed=args.base_seed,
        test_episodes=args.test_episodes or 0,
    )
    for name, value in _key_values(args.fixed or [], "--fixed").items():
        if not _is_number(value):
            raise UsageError(f"--fixed {name} wants a number")
        spec.fixed_params[name] = float(value)
    sweep = client.start_sweep(spec, request_id=args.request_id or "")
    if not args.watch:
        output.reply(sweep, f"sweep {sweep.sweep_id} started: {spec.n_trials} trials of {spec.algorithm}")
        return 0
    if not output.as_json:
        output.line(f"sweep {sweep.sweep_id} started")
    return _watch(client, sweep.sweep_id, output)


def _watch(client: TaxiDriverClient, sweep_id: str, output: Output) -> int:
    """The trials as they land: one row each (a live table that also reads well in a pipe)."""
    widths = [6, 9, 8, 8, 16, 4, 8]
    if not output.as_json:
        output.line("  ".join(h.upper().ljust(w) for h, w in zip(TRIAL_HEADERS, [*widths, 0], strict=True)).rstrip())
    state = tuner_service_pb2.SWEEP_STATE_RUNNING
    for message in client.watch_sweep(sweep_id):
        state = message.sweep_state
        if output.as_json:
            output.json(to_dict(message))
            continue
        if message.HasField("trial"):
            row = _trial_row(message.trial, message.best_trial)
            cells = ["" if v is None else str(v) for v in row]
            output.line("  ".join(c.ljust(w) for c, w in zip(cells, [*widths, 0], strict=True)).rstrip())
            output.out.flush()
    if not output.as_json:
        sweep = client.get_sweep(sweep_id)
        output.line(f"sweep {SWEEP_STATES.get(state, '?')}")
        if sweep.best_trial >= 0:
            best = next(t for t in sweep.trials if t.number == sweep.best_trial)
            output.line(f"best: trial {best.number} value {best.value:.4f}: {_params_text(best.params)}")
    return 0 if state == tuner_service_pb2.SWEEP_STATE_SUCCEEDED else 1


def cmd_sweep_show(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    sweep = client.get_sweep(args.sweep_id)
    if output.as_json:
        output.json(to_dict(sweep))
    else:
        _print_sweep(output, sweep)
    return 0


def cmd_sweep_list(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    reply = client.list_sweeps(algorithm=args.algorithm or "", page_size=args.limit)
    if output.as_json:
        output.json(to_dict(reply))
        return 0
    rows = [
        [s.sweep_id, s.spec.algorithm, SWEEP_STATES.get(s.state, "?"), s.spec.n_trials, s.owner or "-"]
        for s in reply.sweeps
    ]
    output.table(["sweep", "algorithm", "state", "trials", "owner"], rows)
    return 0


def cmd_sweep_watch(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    return _watch(client, args.sweep_id, output)


def cmd_sweep_cancel(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    sweep = client.cancel_sweep(args.sweep_id)
    output.reply(sweep, f"sweep {sweep.sweep_id} {SWEEP_STATES.get(sweep.state, '?')}")
    return 0


def cmd_suggest(client: TaxiDriverClient, args: argparse.Namespace, output: Output) -> int:
    request = tuner_service_pb2.SuggestParamsRequest(
        algorithm=args.algorithm,
        search_space=[parse_range(text) for text in args.param],
        objective=_objective(args),
        sweep_id=args.sweep_id or "",
        env_id=args.env_id or "",
        max_runs=args.max_runs,
    )
    reply = client.suggest_params(request)
    if output.as_json:
        output.json(to_dict(reply))
        return 0
    output.line(f"learned from {reply.runs_used} completed runs")
    if reply.best_run_id:
        output.line(
            f"best known: {_params_text(reply.best_params)} (value {reply.best_value:.4f}, run {reply.best_run_id})"
        )
    output.line(f"try next:   {_params_text(reply.suggested_params)}")
    return 0


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
    train.add_argument("algorithm", help="an algorithm the trainer offers (`taxi-driver algorithms` lists them)")
    train.add_argument("--mode", choices=list(MODES), default="optimized")
    for name, kind in HYPERPARAMETERS.items():
        flag = "--episodes" if name == "training_episodes" else f"--{name.replace('_', '-')}"
        train.add_argument(flag, dest=name, type=kind, default=None)
    train.add_argument("--test-episodes", type=int, default=None)
    train.add_argument("--seed", type=seed_value, default=None, help="0 .. 2**53 (random when unset)")
    train.add_argument("--time-budget", type=float, default=None, help="seconds (mode time_budget)")
    train.add_argument("--env-id", default=None)
    train.add_argument("--request-id", default=None, help="makes a retried start idempotent")
    train.add_argument("--no-progress", action="store_true", help="no live progress line")
    train.set_defaults(handler=cmd_train)

    runs = commands.add_parser("runs", help="browse, compare, annotate and delete runs").add_subparsers(
        dest="runs_command", required=True, metavar="ACTION"
    )
    listing = runs.add_parser("list", help="runs, newest first, a page at a time")
    listing.add_argument("--algorithm")
    listing.add_argument("--status", help="queued, running, completed, failed, cancelled, interrupted")
    listing.add_argument("--filter", help='AIP-160 filter, e.g. "params.alpha >= 0.1"')
    listing.add_argument("--order-by", help='e.g. "test_metrics.avg_steps asc"')
    listing.add_argument("--limit", type=int, default=20, help="runs per page (default 20)")
    listing.add_argument("--page-token", help="the next page, as printed after the previous one")
    listing.add_argument("--all", action="store_true", help="every matching run (follows the page tokens)")
    listing.add_argument("--mine", action="store_true", help="only the runs I started (the API key's user)")
    listing.set_defaults(handler=cmd_runs_list)
    show = runs.add_parser("show", help="one run with all its metric groups")
    show.add_argument("run_id")
    show.add_argument("--curves", action="store_true", help="per-episode curves: a summary and a sparkline each")
    show.add_argument("--csv", metavar="FILE", help="write the per-episode curves to a CSV file")
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
    watch = runs.add_parser("watch", help="follow a run live to its end (Ctrl-C stops watching, not the run)")
    watch.add_argument("run_id")
    watch.add_argument("--no-progress", action="store_true", help="no live progress line")
    watch.set_defaults(handler=cmd_runs_watch)

    models = commands.add_parser("models", help="saved models").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    models_list = models.add_parser("list", help="saved models (--run-id: of one run)")
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
    algorithms.add_argument("--notes", action="store_true", help="how each optimized preset was measured")
    algorithms.set_defaults(handler=cmd_algorithms)

    sweep = commands.add_parser("sweep", help="hyper-parameter sweeps (Optuna) over training runs").add_subparsers(
        dest="sweep_command", required=True, metavar="ACTION"
    )
    start = sweep.add_parser("start", help="start a sweep (and follow its trials with --watch)")
    start.add_argument("algorithm", help="q_learning, sarsa, expected_sarsa, double_q_learning, monte_carlo")
    start.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="SPEC",
        help="searched parameter: NAME=LOW:HIGH[:log] or NAME=V1,V2,... (default: the tuner's ranges)",
    )
    start.add_argument("--fixed", action="append", metavar="KEY=VALUE", help="a parameter fixed for every trial")
    start.add_argument("--trials", type=int, default=20)
    start.add_argument("--parallelism", type=int, default=2)
    start.add_argument("--seeds", type=int, default=3, help="seeds per trial")
    start.add_argument("--sampler", choices=list(SAMPLERS), default="tpe")
    start.add_argument("--metric", help="objective (default: optimal_start_state_fraction)")
    start.add_argument("--minimize", action="store_true", help="minimize the metric (default: maximize)")
    start.add_argument("--base-seed", type=seed_value, default=0)
    start.add_argument("--test-episodes", type=int, default=None)
    start.add_argument("--request-id", help="makes a retried start idempotent")
    start.add_argument("--watch", action="store_true", help="print each trial as it lands until the sweep ends")
    start.set_defaults(handler=cmd_sweep_start)
    sweep_show = sweep.add_parser("show", help="a sweep's trials with their across-seed statistics")
    sweep_show.add_argument("sweep_id")
    sweep_show.set_defaults(handler=cmd_sweep_show)
    sweep_list = sweep.add_parser("list", help="sweeps, newest first")
    sweep_list.add_argument("--algorithm")
    sweep_list.add_argument("--limit", type=int, default=20)
    sweep_list.set_defaults(handler=cmd_sweep_list)
    sweep_watch = sweep.add_parser("watch", help="each trial as it lands, until the sweep ends")
    sweep_watch.add_argument("sweep_id")
    sweep_watch.set_defaults(handler=cmd_sweep_watch)
    sweep_cancel = sweep.add_parser("cancel", help="stop a sweep and its unfinished trials' runs")
    sweep_cancel.add_argument("sweep_id")
    sweep_cancel.set_defaults(handler=cmd_sweep_cancel)

    suggest = commands.add_parser("suggest", help="parameters to try next, learned from the stored runs")
    suggest.add_argument("algorithm")
    suggest.add_argument("--param", action="append", default=[], metavar="SPEC", help="as for sweep start")
    suggest.add_argument("--sweep-id", help="learn from this sweep's trials only")
    suggest.add_argument("--env-id", help="learn from runs of this environment only")
    suggest.add_argument("--metric")
    suggest.add_argument("--minimize", action="store_true")
    suggest.add_argument("--max-runs", type=int, default=0, help="newest runs to learn from (default 10000)")
    suggest.set_defaults(handler=cmd_suggest)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    output = Output(args.json, out, err)
    handler: Callable[[TaxiDriverClient, argparse.Namespace, Output], int] = args.handler
    gateway = args.gateway or gateway_from_env()
    try:
        with TaxiDriverClient(gateway, timeout=args.timeout, api_key=args.api_key) as client:
            code = handler(client, args, output)
            out.flush()
            return code
    except BrokenPipeError:
        # The reader went away (`taxi-driver --json runs list | head`): stop quietly, as
        # Unix tools do. Later writes (the interpreter's own flush at exit) go nowhere.
        _silence(out)
        return 141
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


def _silence(stream: TextIO) -> None:
    try:
        fileno = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
