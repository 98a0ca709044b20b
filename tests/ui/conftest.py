"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real stack
(``tests/stack.py``: PostgreSQL, Redis, moto's S3, the API under uvicorn with auth on, one real
``celery worker``). Every test fails on a JavaScript error or a failed same-origin request.

``MMKD_UI_SCREENSHOTS=<folder>`` saves the pages' screenshots there (``make screenshots`` writes
docs/ui/). Without chromium the tests are skipped on a developer's machine, but under ``CI=true``
a missing chromium fails them: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_claims import DatabaseClaims
from stack import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def ui_stack(
    new_postgres_database: Callable[[str], str], redis_databases: DatabaseClaims, moto_server: Any, tmp_path_factory
) -> Iterator[Stack]:
    """The stack with auth on and a session secret, and one worker."""
    with redis_databases.database() as broker:
        bucket = f"mmkd-ui-{uuid.uuid4().hex[:8]}"
        home = tmp_path_factory.mktemp("ui-stack")
        built = Stack(home, new_postgres_database("mmkd_ui"), broker, moto_server, bucket)
        built.env.update(MMKD_SESSION_SECRET=uuid.uuid4().hex, MMKD_STREAM_POLL_SECONDS="0.25")
        built.env.update(MMKD_LOG_FLUSH_SECONDS="0.5")
        built.ensure_bucket()
        built.start_api()
        built.start_worker("worker")
        try:
            yield built
        finally:
            built.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for the session."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make install` installs Debian's chromium")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


class Watched:
    """A browser page whose console errors, page errors and failed same-origin requests are kept."""

    def __init__(self, context: Any, origin: str) -> None:
        self.context = context
        self.page = context.new_page()
        self.problems: list[str] = []
        #: Paths a test visits to see them refused (a 404 page logs its status to the console).
        self.refusals: set[str] = set()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "requestfailed",
            # A request still in flight when the page navigates away is aborted, not failed.
            lambda r: self.problems.append(f"failed: {r.url} {r.failure}")
            if r.url.startswith(origin) and r.failure != "net::ERR_ABORTED"
            else None,
        )


    def _console(self, message: Any) -> None:
        url = message.location.get("url", "")
        if message.type == "error" and not any(url.endswith(path) for path in self.refusals):
            self.problems.append(f"console: {message.text} at {url}")


@pytest.fixture
def open_page(browser: Any, ui_stack: Stack) -> Iterator[Callable[[], Watched]]:
    """New pages in fresh browser contexts (no shared cookies); each must end without JS problems."""
    opened: list[Watched] = []

    def make() -> Watched:
        context = browser.new_context(base_url=ui_stack.api_url, viewport={"width": 1400, "height": 1000})
        watched = Watched(context, ui_stack.api_url)
        watched.page.on("dialog", lambda dialog: dialog.accept())
        opened.append(watched)
        return watched

    yield make
    problems = [problem for watched in opened for problem in watched.problems]
    for watched in opened:
        watched.context.close()
    assert problems == []


@pytest.fixture(scope="session")
def screenshot() -> Callable[[Any, str], None]:
    """Save a page's screenshot for docs/ui.md when ``MMKD_UI_SCREENSHOTS`` names a folder."""
    folder = os.environ.get("MMKD_UI_SCREENSHOTS")

    def save(page: Any, name: str) -> None:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)

    return save
