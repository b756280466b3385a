"""The dashboard's server side: downsampled curves, sign-in and sign-out forms."""

from __future__ import annotations

import httpx
import pytest

from taxidriver.registry.v1 import resources_pb2
from tests.support import InProcessService
from tests.web_support import WebServer, http, keys, secured_gateway, train, web
from web.dashboard import LOGIN_COOKIE, curves_payload, downsample, moving_average
from web.session import COOKIE

__all__ = ["keys", "secured_gateway", "web"]  # fixtures used by this module


def test_downsampling_100000_episodes_keeps_every_spike_in_1000_buckets() -> None:
    values = [0.0] * 100_000
    values[54_321] = 1000.0
    values[77_777] = -500.0
    buckets = downsample(values, 1000)
    assert len(buckets["x"]) == 1000
    assert buckets["x"] == sorted(buckets["x"]) and buckets["x"][0] == 0
    assert max(buckets["max"]) == 1000.0 and min(buckets["min"]) == -500.0
    spike = buckets["x"].index(54_300)
    assert buckets["max"][spike] == 1000.0 and buckets["mean"][spike] == pytest.approx(10.0)


def test_small_runs_are_drawn_exactly() -> None:
    values = [3.0, 1.0, 2.0]
    assert downsample(values, 1000) == {"x": [0, 1, 2], "min": values, "max": values, "mean": values}
    assert downsample([], 10) == {"x": [], "min": [], "max": [], "mean": []}


def test_moving_average_is_the_trailing_mean() -> None:
    values = [float(v) for v in range(10)]
    averaged = moving_average(values, 3)
    for index, value in enumerate(averaged):
        window = values[max(0, index - 2) : index + 1]
        assert value == pytest.approx(sum(window) / len(window))


def test_curves_payload_has_every_series_with_its_moving_average_and_tail() -> None:
    curves = resources_pb2.EpisodeCurves(
        rewards=[float(i) for i in range(5000)],
        steps=[1] * 5000,
        epsilons=[0.5] * 5000,
        td_errors=[0.1] * 5000,
        successes=[True, False] * 2500,
    )
    payload = curves_payload(curves, 500)
    assert payload["episodes"] == 5000 and payload["bucket"] == 10 and payload["window"] == 100
    for name in ("rewards", "steps", "epsilons", "td_errors", "successes"):
        series = payload["series"][name]
        assert len(series["x"]) == len(series["moving_average"]) == 500
        assert len(series["tail"]) == 100
    assert payload["series"]["successes"]["mean"][0] == pytest.approx(0.5)
    assert payload["series"]["rewards"]["tail"][-1] == 4999.0


def test_the_curves_route_serves_a_real_run(
    web: WebServer, secured_gateway: InProcessService, keys: dict[str, str]
) -> None:
    run_id = train(secured_gateway.target, keys["trainer"], "sarsa", episodes=300)
    with http(web, keys["reader"]) as client:
        reply = client.get("/dashboard/curves", params={"run_id": run_id, "width": 100})
        too_wide = client.get("/dashboard/curves", params={"run_id": run_id, "width": 99999})
        none = client.get("/dashboard/curves")
    assert reply.status_code == 200, reply.text
    payload = reply.json()["runs"][run_id]
    assert payload["status"] == "RUN_STATUS_COMPLETED" and payload["episodes"] == 300
    assert len(payload["series"]["rewards"]["x"]) == 100 and payload["bucket"] == 3
    assert too_wide.status_code == 400 and too_wide.json()["details"][-1]["fieldViolations"][0]["field"] == "width"
    assert none.status_code == 400
    with http(web) as anonymous:
        assert anonymous.get("/dashboard/curves", params={"run_id": run_id}).status_code == 401


def test_sign_in_needs_the_forms_own_token(web: WebServer, keys: dict[str, str]) -> None:
    with httpx.Client(base_url=web.url, timeout=30) as browser:
        form = browser.get("/login")
        nonce = browser.cookies.get(LOGIN_COOKIE)
        assert nonce and f'value="{nonce}"' in form.text
        forged = browser.post("/login", data={"api_key": keys["reader"], "csrf_token": "guess"})
        assert forged.status_code == 403 and COOKIE not in browser.cookies
        signed = browser.post("/login", data={"api_key": keys["reader"], "csrf_token": nonce})
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        assert browser.cookies.get(COOKIE) == keys["reader"]
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")


def test_sign_out_needs_the_sessions_token(web: WebServer, keys: dict[str, str]) -> None:
    from web.session import csrf_token

    with httpx.Client(base_url=web.url, cookies={COOKIE: keys["reader"]}, timeout=30) as browser:
        forged = browser.post("/logout", data={"csrf_token": "nope"})
        assert forged.status_code == 403
        page = browser.get("/")
        assert page.status_code == 200 and 'name="csrf-token"' in page.text
        token = page.text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        assert token != csrf_token("another secret", keys["reader"])
        out = browser.post("/logout", data={"csrf_token": token})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        cleared = out.headers["set-cookie"]
        assert cleared.startswith(f"{COOKIE}=") and "Max-Age=0" in cleared


def test_pages_send_a_strict_content_security_policy(web: WebServer, keys: dict[str, str]) -> None:
    with httpx.Client(base_url=web.url, cookies={COOKIE: keys["reader"]}, timeout=30) as browser:
        for path in ("/", "/runs", "/statistics", "/compare", "/train"):
            page = browser.get(path)
            assert page.status_code == 200, path
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "default-src 'self'" in policy
        assert browser.get("/runs").text.count('data-can-delete="false"') == 1
