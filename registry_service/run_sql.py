"""The SQL of the run queries (pages of runs, counts, statistics), composed with psycopg.sql.

Each statement is a fixed template. What varies is a WHERE expression from the filter compiler
(`filters.Compiled`: whitelisted fragments, every literal a `%s` parameter), a page token's keyset
condition and a parsed order_by; they are slotted into the templates with `sql.SQL.format`, never
by text replacement, and their parameters travel beside them, in placeholder order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from registry_service.convert import RUN_COLUMNS
from registry_service.filters import Compiled, Ordering, all_of, filter_fields


@dataclass(frozen=True)
class Statement:
    """A composed statement and its parameters, in placeholder order."""

    query: sql.Composed
    params: list[Any] = field(default_factory=list)


def _sql(compiled: Compiled) -> sql.SQL:
    """A compiled expression as a fragment: its text is ours (the compiler's), its literals are `%s`."""
    return sql.SQL(compiled.sql)


COLUMNS = sql.SQL(RUN_COLUMNS)
RUN_BY_ID = sql.SQL("SELECT {columns} FROM training_runs r WHERE r.run_id = %s").format(columns=COLUMNS)
RUNS_BY_IDS = sql.SQL("SELECT {columns} FROM training_runs r WHERE r.run_id = ANY(%s)").format(columns=COLUMNS)

PAGE = sql.SQL(
    "SELECT {columns}, {sort_values} FROM training_runs r"
    " WHERE ({where}) AND ({after}) ORDER BY {order} LIMIT %s OFFSET %s"
)
# A filtered page in two steps: the page's run_ids and sort values (from an index alone when it
# holds the columns the filter tests: migration 0016), then the whole rows of those runs only.
# Reading every column of each run the filter rejects was most of a filtered page's time; without
# a filter nothing is rejected, and the one-step page reads fewer index pages.
FILTERED_PAGE = sql.SQL(
    "SELECT {columns}, {page_sort_values} FROM ("
    "SELECT r.run_id, {sort_values} FROM training_runs r"
    " WHERE ({where}) AND ({after}) ORDER BY {order} LIMIT %s OFFSET %s"
    ") page JOIN training_runs r USING (run_id) ORDER BY {order}"
)


def page(
    where: Compiled, after: Compiled | None, ordering: Ordering, *, limit: int, skip: int, filtered: bool
) -> Statement:
    """Up to `limit` runs matching `where` after a page token's position, with their sort values.

    `filtered`: the caller's filter may reject many runs (the two-step FILTERED_PAGE).
    """
    after = after or Compiled("TRUE")
    select = ordering.select_sql()
    order = ordering.order_sql()
    parts = {"columns": COLUMNS, "where": _sql(where), "after": _sql(after), "order": _sql(order)}
    params = [*select.params, *where.params, *after.params, *order.params, limit, skip]
    if not filtered:
        return Statement(PAGE.format(sort_values=_sql(select), **parts), params)
    page_sort_values = sql.SQL(", ").join(
        sql.Identifier("page", f"sort_{index}") for index in range(len(ordering.keys))
    )
    query = FILTERED_PAGE.format(sort_values=_sql(select), page_sort_values=page_sort_values, **parts)
    # The outer ORDER BY sorts the page's few rows again: the join does not keep their order.
    return Statement(query, [*params, *order.params])


COMPLETED = Compiled("r.status = 'completed'")


def best_runs_where(extra: Compiled, algorithm: str) -> Compiled:
    """ListBestRuns: completed runs matching the filter, of one algorithm when one is named."""
    parts = [COMPLETED, extra]
    if algorithm:
        parts.append(Compiled("r.algorithm = %s", [algorithm]))
    return all_of(*parts)


# The keys of the seed's /database/runs/search/params, indexed together (migration 0015), and
# the indexed expression of each (fixed text: the index serves only this exact expression).
SEED_SEARCH_KEYS = {
    "alpha": "r.params -> 'alpha' = %s",
    "gamma": "r.params -> 'gamma' = %s",
    "training_runs": "r.params -> 'training_runs' = %s",
}


def _is_scalar(value: Any) -> bool:
    """A JSON string, number or boolean (null and nested values keep the containment test)."""
    return isinstance(value, str | int | float | bool)


def search_where(wanted: dict[str, Any]) -> Compiled:
    """SearchRunsByParams: runs whose params contain `wanted`."""
    if wanted.keys() <= SEED_SEARCH_KEYS.keys() and all(_is_scalar(v) for v in wanted.values()):
        # The seed's search: containment of scalars is equality of each key (numbers compare
        # numerically in both; a nested or missing value matches neither), and equalities walk
        # training_runs_seed_params newest first (0.4 ms instead of 48 ms at 100k runs, when
        # containment read ~3,800 runs per page). Both forms at once misled the planner.
        return all_of(*(Compiled(SEED_SEARCH_KEYS[key], [Jsonb(value)]) for key, value in wanted.items()))
    return Compiled("r.params @> %s", [Jsonb(wanted)])


# ---------------------------------------------------------------- statistics

# Filtered statistics: aggregated over the matching runs, reading the generated metric columns.
STATISTICS_BY_ALGORITHM = sql.SQL("""
WITH runs AS MATERIALIZED (
    SELECT r.run_id, r.algorithm, r.status, r.success_rate, r.avg_steps, r.avg_reward, r.execution_time
    FROM training_runs r WHERE {where}
),
ranked AS (
    SELECT DISTINCT ON (algorithm) algorithm, run_id, success_rate AS best_success
    FROM runs WHERE status = 'completed' AND success_rate IS NOT NULL
    ORDER BY algorithm, success_rate DESC, avg_steps ASC NULLS LAST, run_id
),
totals AS (
    SELECT algorithm,
           count(*) AS total_runs,
           count(*) FILTER (WHERE status = 'completed') AS completed_runs,
           avg(success_rate) FILTER (WHERE status = 'completed') AS avg_success_rate,
           avg(avg_steps) FILTER (WHERE status = 'completed') AS avg_steps,
           avg(avg_reward) FILTER (WHERE status = 'completed') AS avg_reward,
           min(avg_steps) FILTER (WHERE status = 'completed') AS best_avg_steps,
           avg(execution_time) FILTER (WHERE status = 'completed') AS avg_execution_time
    FROM runs GROUP BY algorithm
)
SELECT totals.*, ranked.best_success AS best_success_rate, ranked.run_id::text AS best_run_id
FROM totals LEFT JOIN ranked USING (algorithm)
ORDER BY algorithm
""")

STATISTICS_BY_DAY = sql.SQL("""
SELECT date_trunc('day', r.created_at AT TIME ZONE 'UTC') AS day,
       count(*) AS runs,
       avg(r.success_rate) AS avg_success_rate,
       avg(r.avg_steps) AS avg_steps
FROM training_runs r WHERE {where}
GROUP BY 1 ORDER BY 1
""")

# Statistics unfiltered or filtered by algorithm and status only: the trigger-maintained
# run_statistics sums (it has both columns, so the compiled filter reads them as `r.`), plus one
# index probe per algorithm for its best run; a few hundred rows read whatever the number of runs.
SUMMARY_FIELDS = frozenset({"algorithm", "status"})

SUMMARY_BY_ALGORITHM = sql.SQL("""
WITH totals AS (
    SELECT algorithm,
           sum(runs)::bigint AS total_runs,
           coalesce(sum(runs) FILTER (WHERE status = 'completed'), 0)::bigint AS completed_runs,
           sum(success_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(success_count) FILTER (WHERE status = 'completed'), 0) AS avg_success_rate,
           sum(steps_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(steps_count) FILTER (WHERE status = 'completed'), 0) AS avg_steps,
           sum(reward_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(reward_count) FILTER (WHERE status = 'completed'), 0) AS avg_reward,
           sum(execution_sum) FILTER (WHERE status = 'completed')
               / nullif(sum(execution_count) FILTER (WHERE status = 'completed'), 0) AS avg_execution_time
    FROM run_statistics r WHERE {where} GROUP BY algorithm HAVING sum(runs) > 0
)
SELECT totals.*, best.success_rate AS best_success_rate, best.run_id::text AS best_run_id,
       (SELECT min(r.avg_steps) FROM training_runs r
        WHERE r.status = 'completed' AND r.algorithm = totals.algorithm AND {where}) AS best_avg_steps
FROM totals
LEFT JOIN LATERAL (
    SELECT r.run_id, r.success_rate FROM training_runs r
    WHERE r.status = 'completed' AND r.algorithm = totals.algorithm AND r.success_rate IS NOT NULL AND {where}
    ORDER BY r.success_rate DESC NULLS LAST, r.avg_steps ASC NULLS LAST, r.run_id ASC
    LIMIT 1
) best ON true
ORDER BY algorithm
""")

SUMMARY_BY_DAY = sql.SQL("""
SELECT day::timestamp AS day, sum(runs)::bigint AS runs,
       sum(success_sum) / nullif(sum(success_count), 0) AS avg_success_rate,
       sum(steps_sum) / nullif(sum(steps_count), 0) AS avg_steps
FROM run_statistics r WHERE {where} GROUP BY day HAVING sum(runs) > 0 ORDER BY day
""")


def reads_summary(filter_text: str) -> bool:
    """Whether a (valid) filter compares only fields the run_statistics sums hold."""
    return filter_fields(filter_text) <= SUMMARY_FIELDS


def statistics(where: Compiled, filter_text: str) -> tuple[Statement, Statement]:
    """The per-algorithm and per-day statements of GetStatistics for a compiled filter."""
    if reads_summary(filter_text):
        # {where} appears three times in the per-algorithm statement: its parameters, three times.
        return (
            Statement(SUMMARY_BY_ALGORITHM.format(where=_sql(where)), where.params * 3),
            Statement(SUMMARY_BY_DAY.format(where=_sql(where)), where.params),
        )
    return (
        Statement(STATISTICS_BY_ALGORITHM.format(where=_sql(where)), where.params),
        Statement(STATISTICS_BY_DAY.format(where=_sql(where)), where.params),
    )


# ---------------------------------------------------------------- total_size

COUNT_SUMMARY = sql.SQL("SELECT coalesce(sum(runs), 0)::bigint FROM run_statistics r WHERE {where}")
COUNT = sql.SQL("SELECT count(*) FROM training_runs r WHERE {where}")
ESTIMATE = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM training_runs r WHERE {where}")
# pg_class's row estimate (-1 before the first ANALYZE or VACUUM: a new table counts as small).
TABLE_ROWS_ESTIMATE = sql.SQL("SELECT reltuples FROM pg_class WHERE oid = 'training_runs'::regclass")


def count_statements(where: Compiled, filter_text: str) -> list[Statement]:
    """What ListRuns' total_size is decided from, sent in the page's round trip (a pipeline).

    The summary count when the filter reads only algorithm and status; otherwise the table's row
    estimate and the planner's estimate of the matches (planning only: nothing is counted).
    """
    if reads_summary(filter_text):
        return [Statement(COUNT_SUMMARY.format(where=_sql(where)), where.params)]
    return [Statement(TABLE_ROWS_ESTIMATE.format()), Statement(ESTIMATE.format(where=_sql(where)), where.params)]


async def total_size(
    conn: AsyncConnection[Any],
    where: Compiled,
    filter_text: str,
    answers: list[Any],
    *,
    whole: bool,
    shown: int,
    exact_limit: int,
) -> int:
    """ListRuns' total_size (AIP-158 lets it be an estimate; README "total_size" says when it is).

    `answers`: the first value of each of `count_statements`. Exact when the filter reads only
    algorithm and status (the run_statistics sums), when the first page holds every match, or
    while the table holds at most `exact_limit` rows (then counted: one more round trip);
    otherwise PostgreSQL's estimate of the matching rows, one planning step instead of counting
    tens of thousands of rows.
    """
    if reads_summary(filter_text):
        return int(answers[0] or 0)
    if whole:
        return shown
    rows, plan = answers
    if rows is None or rows <= exact_limit:
        cursor = await conn.execute(COUNT.format(where=_sql(where)), where.params)
        counted = await cursor.fetchone()
        return int(counted[0]) if counted else 0
    return round(plan[0]["Plan"]["Plan Rows"]) if plan else 0
