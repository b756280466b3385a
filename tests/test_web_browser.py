"""The dashboard in a real browser: Debian's Chromium driven by Playwright for Python.

Playwright's own browser download is never used (`playwright install` is not run):
the tests launch /usr/bin/chromium and skip, saying so, where it is missing
(`apt-get install chromium`; CI installs it in .ci/run). Each test saves a
screenshot of the pages it visits under its temporary folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import InProcessService
from tests.web_support import WebServer, http, keys, secured_gateway, train, web

__all__ = ["keys", "secured_gateway", "web"]  # fixtures used by this module

CHROMIUM = Path("/usr/bin/chromium")
ALGORITHM_CELLS = "[...document.querySelectorAll('table.runs tbody tr td:nth-child(3)')]"
STATUS_CELLS = "[...document.querySelectorAll('table.runs tbody tr td:nth-child(4)')]"
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser tests not run: /usr/bin/chromium is missing (apt-get install chromium)",
)

# Where the README's screenshot comes from (copied by hand from a run of this module).
README_SCREENSHOT = "run-live.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, chromium_sandbox=False)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def runs(secured_gateway: InProcessService, keys: dict[str, str]) -> list[str]:
    return [
        train(secured_gateway.target, keys["trainer"], "q_learning", episodes=400, alpha=0.2),
        train(secured_gateway.target, keys["trainer"], "sarsa", episodes=400, alpha=0.4),
    ]


def signed_in(browser, web: WebServer, key: str):  # type: ignore[no-untyped-def]
    """A fresh browser context signed in with `key` through the login form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{web.url}/")
    assert page.url.endswith("/login")
    page.fill("input[name=api_key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{web.url}/")
    return context, page


def ready(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#app[data-ready=true]")


def shot(page, tmp_path: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_sign_in_list_and_filter_runs(
    browser, web: WebServer, keys: dict[str, str], runs: list[str], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    context, page = signed_in(browser, web, keys["reader"])
    cookie = next(c for c in context.cookies() if c["name"] == "td_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").find("td_session") == -1  # not readable by scripts
    ready(page)
    page.wait_for_selector("table.runs tbody tr")
    listed = page.eval_on_selector_all("table.runs tbody tr", "rows => rows.map(r => r.dataset.runId)")
    assert set(runs) <= set(listed)
    # Who started each run (the trainer key's user), in its own column.
    creators = page.eval_on_selector_all(
        "table.runs tbody tr",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.runId, r.querySelector('td.creator').textContent]))",
    )
    assert {creators[run_id] for run_id in runs} == {"web-test-trainer"}
    shot(page, tmp_path, "runs.png")
    # The AIP-160 filter box.
    page.fill("input[name=filter]", 'algorithm = "sarsa"')
    page.click("form.filter button")
    page.wait_for_function(
        f"() => {ALGORITHM_CELLS}.every(td => td.textContent === 'sarsa')"
        " && document.querySelectorAll('table.runs tbody tr').length > 0"
    )
    sarsa = page.eval_on_selector_all("table.runs tbody tr", "rows => rows.map(r => r.dataset.runId)")
    assert runs[1] in sarsa and runs[0] not in sarsa
    # The status facet narrows further; a facet that matches nothing empties the table.
    page.fill("input[name=filter]", "")
    page.click("form.filter button")
    page.click(".facet[data-facet=algorithm] button[data-value=q_learning]")
    page.wait_for_function(
        "() => document.querySelectorAll('table.runs tbody tr').length > 0 && "
        f"{ALGORITHM_CELLS}.every(td => td.textContent === 'q_learning')"
    )
    page.click(".facet[data-facet=status] button[data-value=completed]")
    page.wait_for_selector(".facet[data-facet=status] button.on[data-value=completed]")
    page.wait_for_function(
        "() => document.querySelectorAll('table.runs tbody tr').length > 0 && "
        f"{ALGORITHM_CELLS}.every(td => td.textContent === 'q_learning') && "
        f"{STATUS_CELLS}.every(td => td.textContent === 'completed')"
    )
    assert runs[0] in page.eval_on_selector_all("table.runs tbody tr", "rows => rows.map(r => r.dataset.runId)")
    shot(page, tmp_path, "runs-filtered.png")
    # Sorting by a column header.
    page.click(".facet[data-facet=status] button:text('all')")
    page.click("th[data-sort='test_metrics.success_rate']")
    page.wait_for_selector("th[data-sort='test_metrics.success_rate']:has-text('▼')")
    context.close()


def test_a_refused_key_stays_on_the_sign_in_page(browser, web: WebServer) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{web.url}/login")
    page.fill("input[name=api_key]", "tdk_not-a-real-key")
    page.click("button[type=submit]")
    page.wait_for_selector("p.error")
    assert "refused" in page.inner_text("p.error")
    assert not [c for c in context.cookies() if c["name"] == "td_session"]
    context.close()


def test_start_a_training_and_watch_its_curve_grow(
    browser, web: WebServer, keys: dict[str, str], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    context, page = signed_in(browser, web, keys["trainer"])
    page.goto(f"{web.url}/train")
    ready(page)
    page.select_option("select[name=algorithm]", "q_learning")
    page.select_option("select[name=mode]", "optimized")
    # Long enough to be watched while it trains; cancelled at the end.
    page.fill("input[name=training_episodes]", "1000000")
    page.fill("input[name=test_episodes]", "10")
    shot(page, tmp_path, "train.png")
    page.click("form.train button[type=submit]")
    page.wait_for_url(f"{web.url}/runs/*")
    run_id = page.url.rsplit("/", 1)[1]
    ready(page)
    # The curve grows: the live episode count takes a value, then a larger one.
    page.wait_for_function("() => Number(document.querySelector('#curves').dataset.episodes) > 0", timeout=120_000)
    first = int(page.get_attribute("#curves", "data-episodes") or 0)
    page.wait_for_function(
        f"() => Number(document.querySelector('#curves').dataset.episodes) > {first}", timeout=120_000
    )
    points = int(page.get_attribute(".chart[data-curve=rewards]", "data-points") or 0)
    assert points > 0
    assert page.locator(".chart[data-curve=rewards] canvas").count() == 1
    for curve in ("rewards", "steps", "epsilons", "td_errors", "successes"):
        assert page.locator(f".chart[data-curve={curve}]").count() == 1
    shot(page, tmp_path, README_SCREENSHOT)
    # The trainer may cancel (and sees no delete button).
    assert page.locator("button.delete").count() == 0
    page.click("button.cancel")
    page.wait_for_function("() => document.querySelector('#run-status').textContent === 'cancelled'", timeout=120_000)
    with http(web, keys["trainer"]) as client:
        assert client.get(f"/database/runs/{run_id}").json()["run"]["status"] == "RUN_STATUS_CANCELLED"
    context.close()


def test_compare_two_runs(browser, web: WebServer, keys: dict[str, str], runs: list[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context, page = signed_in(browser, web, keys["reader"])
    ready(page)
    for run_id in runs:
        page.check(f"tr[data-run-id='{run_id}'] input[name=select]")
    page.click("text=Compare selected")
    page.wait_for_url(f"{web.url}/compare?ids=*")
    ready(page)
    overlay = page.locator("#overlay .chart[data-curve=rewards]")
    assert overlay.get_attribute("data-series") == "2"
    assert overlay.locator("canvas").count() == 1
    legend = page.inner_text("#overlay .chart[data-curve=rewards]")
    assert runs[0][:8] in legend and runs[1][:8] in legend
    assert page.locator("table.param-diff th", has_text=re.compile(r"^alpha$")).count() == 1
    assert page.locator("table.side-by-side th", has_text=re.compile(r"^test_metrics\.success_rate$")).count() == 1
    shot(page, tmp_path, "compare.png")
    context.close()


def test_a_reader_sees_no_delete_button_and_is_refused_anyway(  # type: ignore[no-untyped-def]
    browser, web: WebServer, keys: dict[str, str], runs: list[str], tmp_path: Path
) -> None:
    context, page = signed_in(browser, web, keys["reader"])
    page.goto(f"{web.url}/runs/{runs[0]}")
    ready(page)
    page.wait_for_selector("section.metrics table")
    assert page.locator("button.delete").count() == 0
    assert page.locator("form.annotate").count() == 0
    assert page.locator("header nav a", has_text="Train").count() == 0
    # The plots, the model link, the annotations and every metric group are there for a reader.
    assert page.locator(".plots img").count() >= 1
    assert page.locator("a.download").count() == 1
    shot(page, tmp_path, "run-reader.png")
    # Posting anyway, with the session's own CSRF token: the gateway refuses the role.
    status = page.evaluate(
        """async (runId) => {
            const token = document.querySelector('meta[name=csrf-token]').content;
            const reply = await fetch(`/database/runs/${runId}`, {method: 'DELETE', headers: {'X-CSRF-Token': token}});
            return [reply.status, (await reply.json()).code];
        }""",
        runs[0],
    )
    assert status == [403, 7]
    with http(web, keys["reader"]) as client:
        assert client.get(f"/database/runs/{runs[0]}").status_code == 200
    context.close()


def test_an_admin_sees_delete_and_a_forged_post_without_the_token_is_refused(  # type: ignore[no-untyped-def]
    browser, web: WebServer, secured_gateway: InProcessService, keys: dict[str, str]
) -> None:
    doomed = train(secured_gateway.target, keys["trainer"], "q_learning", episodes=100)
    context, page = signed_in(browser, web, keys["admin"])
    page.goto(f"{web.url}/runs/{doomed}")
    ready(page)
    assert page.locator("button.delete").count() == 1
    # Without the CSRF header (what another site's form would send), the cookie is not enough.
    status = page.evaluate(
        "async (runId) => (await fetch(`/database/runs/${runId}`, {method: 'DELETE'})).status", doomed
    )
    assert status == 403
    page.click("button.delete")
    page.click("button.confirm-delete")
    page.wait_for_url(f"{web.url}/runs")
    with http(web, keys["admin"]) as client:
        assert client.get(f"/database/runs/{doomed}").status_code == 404
    context.close()


def test_annotate_a_run(browser, web: WebServer, keys: dict[str, str], runs: list[str]) -> None:  # type: ignore[no-untyped-def]
    context, page = signed_in(browser, web, keys["trainer"])
    page.goto(f"{web.url}/runs/{runs[1]}")
    ready(page)
    page.fill("form.annotate textarea", "<b>not bold</b> from the browser")
    page.fill("form.annotate input[name=tags]", "browser, ui")
    page.click("form.annotate button")
    page.wait_for_selector("ul.annotations li:has-text('from the browser')")
    item = page.locator("ul.annotations li", has_text="from the browser")
    assert item.locator("b").count() == 0  # shown as text, never as markup
    assert item.locator(".tag").all_inner_texts() == ["browser", "ui"]
    context.close()


def test_statistics_are_charts(browser, web: WebServer, keys: dict[str, str], runs: list[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context, page = signed_in(browser, web, keys["reader"])
    page.goto(f"{web.url}/statistics")
    ready(page)
    assert page.locator("#per-algorithm canvas").count() == 3
    assert page.locator("#per-day canvas").count() == 2
    # Exactly "sarsa" (has_text alone would also match "expected_sarsa").
    assert page.locator("table.stats td", has_text=re.compile(r"^sarsa$")).count() == 1
    shot(page, tmp_path, "statistics.png")
    context.close()


def test_pages_fetch_nothing_from_other_origins(
    browser, web: WebServer, keys: dict[str, str], runs: list[str], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    context, page = signed_in(browser, web, keys["reader"])
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    for path in ("/", f"/runs/{runs[0]}", "/statistics", f"/compare?ids={runs[0]},{runs[1]}", "/docs"):
        page.goto(f"{web.url}{path}")
        if path == "/docs":
            page.wait_for_selector(".opblock-summary-path")
            shot(page, tmp_path, "docs.png")
        else:
            ready(page)
    assert requested
    strangers = [url for url in requested if not url.startswith(web.url) and not url.startswith("data:")]
    assert strangers == []
    context.close()
