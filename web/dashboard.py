"""The dashboard: sign-in, one HTML shell per page, and the curve data its charts draw.

Pages are rendered in the browser by static/dashboard.js from the same transcoded
JSON API that curl users call, authenticated by the session cookie (and the
CSRF header on anything that changes state). Two things are served here because
the API has no route for them: signing in and out, and curves downsampled for
drawing (min / max / mean per pixel bucket, so 100,000 episodes stay readable).
"""

from __future__ import annotations

import hashlib
import html
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import grpc
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from taxidriver.errors import ServiceError
from taxidriver.registry.v1 import registry_service_pb2, registry_service_pb2_grpc, resources_pb2
from taxidriver.trainer.v1 import trainer_service_pb2, trainer_service_pb2_grpc
from web import session
from web.api import error_response
from web.transcoder import error_status, status_json

# Dashboard pages: scripts, styles, images and fetches from this origin only.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
LOGIN_COOKIE = "td_login"
PAGES = ("runs", "run", "compare", "statistics", "train")
MAX_CHART_WIDTH = 4000


@dataclass(frozen=True)
class Abilities:
    """Which state-changing buttons this key may use, as the gateway answers for it."""

    train: bool
    annotate: bool
    delete: bool


class AbilityCache:
    """Asks the gateway what a key may do, by calling each guarded method with an empty request.

    The gateway checks the role before the service sees the request: PERMISSION_DENIED means
    the role is too low; anything else (INVALID_ARGUMENT for the missing run id or algorithm,
    which each of these methods requires) means the role would do. No probe can change
    anything: an empty request of these methods is invalid by contract. Answers are cached
    briefly per key (by hash), like the gateway's own key cache.
    """

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Abilities]] = {}

    async def abilities(self, channel: grpc.aio.Channel, key: str, call_timeout: float) -> Abilities:
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        metadata = (("authorization", f"Bearer {key}"),)
        trainer = trainer_service_pb2_grpc.TrainerServiceStub(channel)
        registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        found = Abilities(
            train=await _allowed(
                trainer.StartRun(trainer_service_pb2.StartRunRequest(), metadata=metadata, timeout=call_timeout)
            ),
            annotate=await _allowed(
                registry.CreateAnnotation(
                    registry_service_pb2.CreateAnnotationRequest(), metadata=metadata, timeout=call_timeout
                )
            ),
            delete=await _allowed(
                registry.DeleteRun(registry_service_pb2.DeleteRunRequest(), metadata=metadata, timeout=call_timeout)
            ),
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl, found)
        return found


async def _allowed(call: Any) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return False
        return True
    return True


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind our pages post), without a multipart parser."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > 16_384:
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _secure(request: Request, force: bool) -> bool:
    return force or request.url.scheme == "https"


def _page(title: str, body: str, csrf: str = "", extra_head: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="csrf-token" content="{html.escape(csrf)}">
  <title>{html.escape(title)} · Taxi Driver</title>
  <link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">
  <link rel="stylesheet" href="/static/dashboard.css">
  {extra_head}
</head>
<body>
{body}
</body>
</html>
""",
        headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def _login_page(nonce: str, error: str = "", status_code: int = 200) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    response = _page(
        "Sign in",
        f"""<main class="login">
  <h1>Taxi Driver</h1>
  <form method="post" action="/login">
    <input type="hidden" name="csrf_token" value="{html.escape(nonce)}">
    <label>API key <input type="password" name="api_key" autocomplete="off" required autofocus></label>
    <button type="submit">Sign in</button>
    {message}
  </form>
  <p class="hint">A key from <code>taxi-driver users create</code> (or <code>make run</code>'s dev key).
  It stays in an HttpOnly cookie of this site. The API itself: <a href="/docs">/docs</a>.</p>
</main>""",
    )
    response.status_code = status_code
    return response


def downsample(values: list[float], width: int) -> dict[str, list[Any]]:
    """Min, max and mean of each of at most `width` buckets of consecutive episodes.

    `x` is the first episode of each bucket. With fewer values than buckets every value is
    its own bucket, so small runs are drawn exactly.
    """
    count = len(values)
    if count == 0:
        return {"x": [], "min": [], "max": [], "mean": []}
    size = max(1, math.ceil(count / max(1, width)))
    xs, lows, highs, means = [], [], [], []
    for start in range(0, count, size):
        bucket = values[start : start + size]
        xs.append(start)
        lows.append(_display(min(bucket)))
        highs.append(_display(max(bucket)))
        means.append(_display(sum(bucket) / len(bucket)))
    return {"x": xs, "min": lows, "max": highs, "mean": means}


def _display(value: float) -> float:
    """Six significant digits: a chart cannot show more, and full doubles triple the JSON."""
    return float(f"{value:.6g}")


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` episodes (fewer at the start), by cumulative sum."""
    total = 0.0
    out: list[float] = []
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


CURVE_SERIES = ("rewards", "steps", "epsilons", "td_errors", "successes")


def curves_payload(curves: resources_pb2.EpisodeCurves, width: int, window: int = 0) -> dict[str, Any]:
    """Every series of a run, downsampled, each with its moving average (also downsampled)."""
    episodes = len(curves.rewards)
    window = window or max(1, min(100, episodes // 20 or 1))
    series: dict[str, Any] = {}
    for name in CURVE_SERIES:
        raw = [float(v) for v in getattr(curves, name)]
        bucketed = downsample(raw, width)
        bucketed["moving_average"] = downsample(moving_average(raw, window), width)["mean"]
        # The last `window` raw values: the browser continues the moving average live from them.
        bucketed["tail"] = raw[-window:]
        series[name] = bucketed
    return {
        "first_episode": curves.first_episode,
        "episodes": episodes,
        "window": window,
        "bucket": max(1, math.ceil(episodes / max(1, width))) if episodes else 1,
        "series": series,
    }


def routes() -> list[BaseRoute]:
    abilities = AbilityCache()

    def state(request: Request) -> Any:
        return request.app.state.web

    async def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(24)
        response = _login_page(nonce)
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            httponly=True,
            samesite="strict",
            secure=_secure(request, state(request).settings.cookie_secure),
        )
        return response

    async def login(request: Request) -> Response:
        web = state(request)
        form = await form_fields(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        submitted = str(form.get("csrf_token", ""))
        if not nonce or not secrets.compare_digest(nonce, submitted):
            return _login_page(secrets.token_urlsafe(24), "The form expired; sign in again.", 403)
        key = str(form.get("api_key", "")).strip()
        if not key or not key.isprintable() or len(key) > 512:
            return _login_page(nonce, "Enter an API key.", 400)
        # The gateway is the judge of keys: one cheap read with it.
        stub = registry_service_pb2_grpc.RegistryServiceStub(web.transcoder.channel)
        try:
            await stub.ListRuns(
                registry_service_pb2.ListRunsRequest(page_size=1),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=web.settings.call_timeout,
            )
        except grpc.aio.AioRpcError as error:
            status = error_status(error)
            reason = "That key was refused." if error.code() == grpc.StatusCode.UNAUTHENTICATED else status.message
            return _login_page(nonce, reason, 401 if error.code() == grpc.StatusCode.UNAUTHENTICATED else 503)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            session.COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=_secure(request, web.settings.cookie_secure),
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    async def logout(request: Request) -> Response:
        web = state(request)
        key = session.session_key(request)
        if key:
            form = await form_fields(request)
            try:
                session.check_csrf(request, web.settings.session_secret, key, str(form.get("csrf_token", "")))
            except ServiceError as error:
                return error_response(error)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(session.COOKIE, path="/")
        return response

    async def page(request: Request) -> Response:
        web = state(request)
        key = session.session_key(request)
        if not key:
            return RedirectResponse("/login", status_code=303)
        run_id = request.path_params.get("run_id", "")
        name = "run" if run_id else request.url.path.strip("/") or "runs"
        try:
            can = await abilities.abilities(web.transcoder.channel, key, web.settings.call_timeout)
        except grpc.aio.AioRpcError as error:
            return error_response(error)
        csrf = session.csrf_token(web.settings.session_secret, key)
        nav = "".join(
            f'<a href="/{target}" class="{"active" if target == name else ""}">{label}</a>'
            for target, label in (
                ("runs", "Runs"),
                ("compare", "Compare"),
                ("statistics", "Statistics"),
                ("train", "Train"),
            )
            if target != "train" or can.train
        )
        body = f"""<header>
  <a class="brand" href="/">Taxi Driver</a>
  <nav>{nav}<a href="/docs">API</a></nav>
  <form method="post" action="/logout" class="logout">
    <input type="hidden" name="csrf_token" value="{html.escape(csrf)}">
    <button type="submit">Sign out</button>
  </form>
</header>
<main id="app" data-page="{html.escape(name)}" data-run-id="{html.escape(run_id)}"
      data-can-train="{str(can.train).lower()}" data-can-annotate="{str(can.annotate).lower()}"
      data-can-delete="{str(can.delete).lower()}"></main>
<script src="/static/vendor/uplot/uPlot.iife.min.js"></script>
<script src="/static/dashboard.js"></script>"""
        return _page(name.capitalize(), body, csrf)

    async def curves(request: Request) -> Response:
        """Downsampled curves of one or more runs: /dashboard/curves?run_id=..&run_id=..&width=800."""
        web = state(request)
        try:
            metadata = session.call_metadata(request, web.settings.session_secret)
            run_ids = request.query_params.getlist("run_id")
            width = int(request.query_params.get("width", "1000"))
        except ServiceError as error:
            return error_response(error)
        except ValueError:
            return _bad("width", "must be an integer")
        if not 1 <= width <= MAX_CHART_WIDTH:
            return _bad("width", f"must be between 1 and {MAX_CHART_WIDTH}")
        if not 1 <= len(run_ids) <= 20:
            return _bad("run_id", "give one to twenty run ids")
        stub = registry_service_pb2_grpc.RegistryServiceStub(web.transcoder.channel)
        payload = {}
        for run_id in run_ids:
            try:
                reply = await stub.GetRun(
                    registry_service_pb2.GetRunRequest(run_id=run_id, view=resources_pb2.RUN_VIEW_FULL),
                    metadata=metadata,
                    timeout=web.settings.call_timeout,
                )
            except grpc.aio.AioRpcError as error:
                return error_response(error)
            payload[run_id] = {
                "status": resources_pb2.RunStatus.Name(reply.run.status),
                "episodes_recorded": reply.run.episodes_recorded,
                **curves_payload(reply.run.curves, width),
            }
        return JSONResponse({"runs": payload})

    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/dashboard/curves", curves, methods=["GET"]),
        # Browsers ask for it on every page; without this it would reach POST /{algorithm} (405).
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        Route("/", page, methods=["GET"]),
        *(Route(f"/{name}", page, methods=["GET"]) for name in PAGES if name != "run"),
        Route("/runs/{run_id}", page, methods=["GET"]),
    ]


def _bad(field: str, description: str) -> JSONResponse:
    from taxidriver.errors import bad_field

    status = error_status(bad_field(field, description))
    return JSONResponse(status_json(status), status_code=400)
