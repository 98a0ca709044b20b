"""The dashboard in chromium against a real worker training real jobs: sign-in, the list, a job
page whose curves and log grow live while the zoom holds, cancel from the page, compare, another
owner's job, and a form post without its CSRF token."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from stack import Stack
from tests_support import wait_until

#: About half a minute of training on this machine's CPU: long enough to watch it grow.
WATCHED = {
    "name": "watched",
    "dataset": {"name": "basic_motions", "primary": ["accelerometer"], "auxiliary": ["gyroscope"]},
    "model": {"hidden_dim": 16, "repr_dim": 8},
    "method": {"name": "paper"},
    "train": {"epochs": 60, "batch_size": 8, "device": "cpu", "eval_every_epochs": 1},
    "checkpoint": {"every_epochs": 20},
}
SHORT = {**WATCHED, "name": "short", "train": {**WATCHED["train"], "epochs": 3}}


@pytest.fixture(scope="module")
def api(ui_stack: Stack) -> Iterator[Any]:
    """The SDK as the stack's owner."""
    with ui_stack.client() as client:
        yield client


def _sign_in(watched: Any, key: str) -> Any:
    page = watched.page
    page.goto("/")
    page.wait_for_url(re.compile(r"/signin$"))
    page.fill("#api-key", key)
    page.click("#signin-submit")
    page.wait_for_url(re.compile(r"/$"))
    return page


def _points(page: Any, chart: str) -> int:
    return int(page.evaluate(f"() => (window.mmkdCharts['{chart}'] || {{points: 0}}).points"))


def test_sign_in_list_live_job_page_and_compare(
    ui_stack: Stack, api: Any, open_page: Callable[[], Any], screenshot: Callable[[Any, str], None]
) -> None:
    short = api.submit(SHORT)
    watched_job = api.submit(WATCHED)
    page = _sign_in(open_page(), ui_stack.api_key)
    row = page.locator(f"tr[data-job-id='{watched_job.id}']")
    row.wait_for()
    assert "watched" in row.inner_text() and "paper" in row.inner_text()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["mmkd_session"]["httpOnly"] and ui_stack.api_key not in cookies["mmkd_session"]["value"]

    api.wait(short.id, timeout=120)
    page.goto(f"/jobs/{watched_job.id}")
    wait_until(lambda: _points(page, "losses") > 20, 120, interval=0.2, what="the first loss points")
    screenshot(page, "job")
    # Zoom into the start of the loss chart as a user does (a drag on the plot), then let points come.
    over = page.locator("#chart-losses .u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + 10, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    zoom = page.evaluate("() => [mmkdCharts.losses.plot.scales.x.min, mmkdCharts.losses.plot.scales.x.max]")
    before, lines = _points(page, "losses"), int(page.get_attribute("#log-count", "data-lines") or 0)
    wait_until(lambda: _points(page, "losses") > before + 20, 60, interval=0.2, what="more loss points, live")
    assert page.evaluate("() => [mmkdCharts.losses.plot.scales.x.min, mmkdCharts.losses.plot.scales.x.max]") == zoom
    wait_until(
        lambda: int(page.get_attribute("#log-count", "data-lines") or 0) > lines, 30, interval=0.2, what="log lines"
    )
    assert _points(page, "validation") > 0 and page.locator("#events li[data-kind='started']").count() == 1

    page.goto(f"/compare?ids={short.id},{watched_job.id}")
    page.wait_for_selector("#compare[data-ready='true']")
    series = page.evaluate("() => mmkdCharts['train/total'].series.size")
    assert series == 2 and page.locator("tr[data-path='train.epochs']").count() == 1
    screenshot(page, "compare")
    page.goto("/")
    page.locator(f"tr[data-job-id='{short.id}'][data-status='succeeded']").wait_for()
    screenshot(page, "jobs")


def test_cancel_from_the_page(ui_stack: Stack, api: Any, open_page: Callable[[], Any]) -> None:
    job = api.submit({**WATCHED, "name": "to-cancel", "train": {**WATCHED["train"], "epochs": 400}})
    page = _sign_in(open_page(), ui_stack.api_key)
    page.goto(f"/jobs/{job.id}")
    page.wait_for_selector("#status.running", timeout=120_000)
    page.click("#cancel-button")  # the confirm dialog is accepted
    page.wait_for_selector("#status.cancelled", timeout=60_000)
    assert api.get(job.id).status == "cancelled"
    page.locator("#events li[data-kind='cancel_requested']").wait_for()


def test_other_owners_and_csrf(ui_stack: Stack, api: Any, open_page: Callable[[], Any], screenshot: Any) -> None:
    job = api.submit(SHORT)
    signin = open_page().page
    signin.goto("/signin")
    screenshot(signin, "signin")
    watched = open_page()
    watched.refusals.update({f"/jobs/{job.id}", "/jobs/999999"})
    stranger = _sign_in(watched, ui_stack.new_key())
    foreign = stranger.goto(f"/jobs/{job.id}")
    foreign_text = stranger.inner_text("[data-testid=error-page]")
    missing = stranger.goto("/jobs/999999")
    assert foreign.status == missing.status == 404
    assert foreign_text == stranger.inner_text("[data-testid=error-page]")  # no existence oracle
    assert stranger.request.get(f"/ui/jobs/{job.id}/stream").status == 404
    stranger.goto("/")
    stranger.locator("[data-testid=no-jobs]").wait_for()

    owner = _sign_in(open_page(), ui_stack.api_key)
    refused = owner.request.post(f"/jobs/{job.id}/cancel", form={"csrf_token": "0" * 64}, max_redirects=0)
    assert refused.status == 403 and "CSRF" in refused.text()
    bare = owner.request.post(f"/jobs/{job.id}/cancel", max_redirects=0)
    assert bare.status == 403
    assert [e.kind for e in api.events(job.id)].count("cancel_requested") == 0
    # Without a session a page sends the browser to sign in, and a fragment or stream is a 401.
    assert httpx.get(f"{ui_stack.api_url}/jobs/{job.id}").headers["location"] == "/signin"
    assert httpx.get(f"{ui_stack.api_url}/ui/jobs/{job.id}/stream").status_code == 401
