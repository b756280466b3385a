"""A completed run's plots, rendered by the registry on their first read (issue 15).

The five PNGs are a view of data the registry already stores (registry_service/plots.py says which),
so the trainer no longer renders them before CompleteRun: that was ~0.25 s of CPU on every
run's critical path, and five more round trips. Instead the first ListArtifacts of a completed
run that has episodes and no plots yet (the CLI's `plots`, the web dashboard's run page)
renders them and stores them as PLOT artifacts (the run's `plots` column then names them, as
before); every later read is a plain fetch of stored rows, byte for byte the same.

- Never on the event loop: matplotlib runs in a process of its own, a 1-process pool started
  on the first render (spawned: a registry that is never asked for plots never imports it)
  and started again if it dies.
- Single flight per run: concurrent first reads of one run await the same render. Two registry
  replicas may both render a run; both write the same bytes (rendering is deterministic) and
  the second write replaces the first.
- Never lost: nothing has to happen at completion for a run to get its plots, so no crash at
  any moment leaves a completed run without them; a reader either gets them or, if rendering
  failed (the error is logged), gets the artifacts without plots and the next read tries again.
- A run that is not completed has no plots yet: its listing has none (the CLI says why).

Why not render in the trainer after CompleteRun (another design considered): a reader right
after completion would find no plots until the trainer's upload, and a trainer dying between
the two would leave a completed run without plots unless a recovery sweep found it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from registry_service import episodes
from registry_service.artifacts import store_artifact

log = logging.getLogger(__name__)

# What a read needs to know about a run: whether its plots are still to be rendered.
NEEDS_PLOTS = """
SELECT status = 'completed' AND episodes_recorded > 0 AND plots = '{}'::jsonb AS needs_plots
FROM training_runs WHERE run_id = %s
"""
RUN_SCORES = """
SELECT test_metrics, brute_force_metrics FROM training_runs
WHERE run_id = %s AND status = 'completed' AND plots = '{}'::jsonb
"""


@dataclass(frozen=True)
class StoredScore:
    """Test-episode scores as stored in a metric group (registry_service.plots.Score)."""

    success_rate: float
    avg_steps: float
    avg_reward: float


@dataclass(frozen=True)
class StoredCurves:
    """A run's curves as stored (registry_service.plots.Curves)."""

    rewards: np.ndarray
    steps: np.ndarray
    epsilons: np.ndarray
    td_errors: np.ndarray


def _number(group: dict[str, Any], key: str) -> float:
    value = group.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def render(curves: StoredCurves, agent: StoredScore, random_agent: StoredScore) -> dict[str, bytes]:
    """In the rendering process: matplotlib is imported there only."""
    from registry_service.plots import render_plots

    return render_plots(curves, agent, random_agent)


class PlotRenderer:
    """Renders and stores a completed run's plots once, on demand (see the module docstring)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._executor: ProcessPoolExecutor | None = None
        self._inflight: dict[uuid.UUID, asyncio.Future[None]] = {}
        self.renders = 0  # runs rendered by this registry (tests check single flight)

    async def ensure(self, run_id: uuid.UUID) -> None:
        """Returns once the run's plots are stored, if it is a completed run that should have them."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(NEEDS_PLOTS, (run_id,))
            row = await cursor.fetchone()
        if row is None or not row[0]:
            return
        future = self._inflight.get(run_id)
        if future is None:
            future = asyncio.ensure_future(self._render_and_store(run_id))
            self._inflight[run_id] = future
            future.add_done_callback(lambda _: self._inflight.pop(run_id, None))
        try:
            # shield: a reader that gives up (deadline, cancel) does not stop the others' render.
            await asyncio.shield(future)
        except Exception:
            log.exception("run %s: plots not rendered (the next read tries again)", run_id)

    async def _render_and_store(self, run_id: uuid.UUID) -> None:
        async with self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(RUN_SCORES, (run_id,))
            scores = await cursor.fetchone()
            if scores is None:  # rendered meanwhile (another replica), or deleted
                return
            chunks = await episodes.read_chunks(conn, run_id)
        curves = _curves(chunks)
        tests, brute_force = scores["test_metrics"] or {}, scores["brute_force_metrics"] or {}
        agent = StoredScore(*(_number(tests, key) for key in ("success_rate", "avg_steps", "avg_reward")))
        random_agent = StoredScore(
            *(_number(brute_force, f"random_{key}") for key in ("success_rate", "avg_steps", "avg_reward"))
        )
        plots = await self._run(curves, agent, random_agent)
        self.renders += 1
        try:
            async with self.pool.connection() as conn, conn.transaction():
                for name, png in plots.items():
                    await store_artifact(
                        conn,
                        run_id=run_id,
                        kind="plot",
                        name=name,
                        content_type="image/png",
                        episode=0,
                        metadata={"rendered_by": "registry"},
                        data=png,
                    )
        except errors.ForeignKeyViolation:
            log.info("run %s was deleted while its plots were rendered", run_id)

    async def _run(self, curves: StoredCurves, agent: StoredScore, random_agent: StoredScore) -> dict[str, bytes]:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            if self._executor is None:
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            try:
                return await loop.run_in_executor(self._executor, render, curves, agent, random_agent)
            except BrokenProcessPool:
                # The rendering process died (killed, out of memory): a fresh one, once.
                self._executor = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _curves(chunks: list[dict[str, Any]]) -> StoredCurves:
    """The stored chunks' columns concatenated (a missing optional curve is zeros, as GetRun shows it)."""

    def column(name: str, dtype: type) -> np.ndarray:
        parts = [
            np.asarray(row[name], dtype=dtype) if row[name] is not None else np.zeros(row["episode_count"], dtype)
            for row in chunks
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    return StoredCurves(
        rewards=column("rewards", np.float64),
        steps=column("steps", np.float64),
        epsilons=column("epsilons", np.float64),
        td_errors=column("td_errors", np.float64),
    )
