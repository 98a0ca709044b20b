"""The dashboard's server side on a real server, without a browser (tests/ui drives chromium): the
session cookie's integrity and revocation, login CSRF, the security headers, the list's filters,
and the answer when no session secret is configured."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer
from live_servers import ApiServer
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from jobs.keys import hash_key, revoke_key

SECRET = "test-session-secret"
SPEC = {
    "name": "page-test",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
    "method": {"name": "student_only"},
}


@pytest.fixture(scope="module")
def server(postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    api = ApiServer(postgres_url, redis_url, tmp_path_factory.mktemp("ui-home"))
    api.env.update(MMKD_SESSION_SECRET=SECRET, MMKD_AUTH_CACHE_SECONDS="0")
    api.start()
    yield api
    api.stop()


def _signed_in(server: ApiServer, key: str) -> httpx.Client:
    browser = httpx.Client(base_url=server.url, follow_redirects=False)
    form = browser.get("/signin")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
    assert token is not None
    answer = browser.post("/signin", data={"csrf_token": token.group(1), "api_key": key})
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    return browser


def test_sign_in_cookie_and_what_breaks_it(server: ApiServer) -> None:
    key = server.new_key()
    browser = _signed_in(server, key)
    cookie = next(c for c in browser.cookies.jar if c.name == "mmkd_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and key not in cookie.value
    assert browser.get("/").status_code == 200

    # One whole character of the signature changed: the last one carries base64 padding bits that
    # decoding ignores, so changing only the tail can leave the signature as it was.
    flipped = "A" if cookie.value[-5] != "A" else "B"
    tampered_value = cookie.value[:-5] + flipped + cookie.value[-4:]
    tampered = httpx.Client(base_url=server.url, cookies={"mmkd_session": tampered_value})
    assert tampered.get("/").headers["location"] == "/signin"
    forged_value = URLSafeTimedSerializer("another-secret", salt="mmkd-session").dumps({"k": hash_key(key), "n": "x"})
    forged = httpx.Client(base_url=server.url, cookies={"mmkd_session": forged_value})
    assert forged.get("/").headers["location"] == "/signin"
    assert forged.get("/ui/fragments/jobs").status_code == 401  # fragments and streams do not redirect

    engine = create_engine(server.database_url)
    with Session(engine) as session:
        revoke_key(session, key_ref="_".join(key.split("_")[:2]))
    engine.dispose()
    assert browser.get("/").headers["location"] == "/signin"  # the revoked key's session ended


def test_login_csrf_wrong_key_and_headers(server: ApiServer) -> None:
    browser = httpx.Client(base_url=server.url, follow_redirects=False)
    page = browser.get("/signin")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and "<script>" not in page.text
    without = httpx.post(f"{server.url}/signin", data={"api_key": server.new_key()}, follow_redirects=False)
    assert without.status_code == 403 and "mmkd_session" not in without.cookies
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert token is not None
    wrong = browser.post("/signin", data={"csrf_token": token.group(1), "api_key": "mmkd_nope_nope"})
    assert wrong.status_code == 401 and "Unknown or revoked API key" in wrong.text


def test_the_list_filters_by_status_and_name(server: ApiServer) -> None:
    key = server.new_key()
    auth = {"Authorization": f"Bearer {key}"}
    first = httpx.post(f"{server.url}/v1/jobs", json=SPEC, headers=auth).json()["id"]
    other = httpx.post(f"{server.url}/v1/jobs", json={**SPEC, "name": "another"}, headers=auth).json()["id"]
    httpx.post(f"{server.url}/v1/jobs/{other}/cancel", headers=auth)
    browser = _signed_in(server, key)

    def ids(**params: str | list[str]) -> set[str]:
        return set(re.findall(r'data-job-id="(\d+)"', browser.get("/ui/fragments/jobs", params=params).text))

    assert ids() == {str(first), str(other)}
    assert ids(status="cancelled") == {str(other)}
    assert ids(name="page-") == {str(first)}
    assert ids(name="%") == set()  # a LIKE wildcard is a plain character here
    assert browser.get(f"/jobs/{first}").status_code == 200
    assert browser.get("/compare", params={"ids": f"{first}"}).status_code == 422
    for path in ("/jobs/" + "9" * 40, f"/ui/jobs/{first}/artifacts/" + "9" * 5000):  # out of range: not a query
        assert browser.get(path).status_code == 422


def test_without_a_session_secret_the_pages_say_so(api_server: ApiServer) -> None:
    answer = httpx.get(f"{api_server.url}/signin")
    assert answer.status_code == 503 and "MMKD_SESSION_SECRET" in answer.text
    assert httpx.get(f"{api_server.url}/healthz").status_code == 200


def test_with_auth_off_the_tokens_are_this_process_own() -> None:
    """Auth off has no cookie to bind a token to: the token must not be computable from the source."""
    import subprocess
    import sys

    from service.config import ApiSettings
    from service.ui.session import CsrfRefused, check_csrf, csrf_token

    settings = ApiSettings(auth=False)
    code = "from service.config import ApiSettings; from service.ui.session import csrf_token; "
    code += "print(csrf_token(ApiSettings(auth=False), 'local'))"
    elsewhere = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert len(elsewhere) == 64 and elsewhere != csrf_token(settings, "local")
    with pytest.raises(CsrfRefused):
        check_csrf(settings, "local", elsewhere)
    check_csrf(settings, "local", csrf_token(settings, "local"))


@pytest.mark.parametrize(
    ("task", "metric"),
    [("classification", "accuracy"), ("multilabel", "mean_ap"), ("regression", "mae"), ("retrieval", "r@1")],
)
def test_a_row_shows_the_student_metric_the_trainer_reports(task: str, metric: str) -> None:
    """The row's metric is the task's primary one, under the name the trainer's result uses."""
    import datetime as dt

    from jobs.models import Job
    from jobs.status import JobStatus
    from service.ui.views import job_view

    now = dt.datetime.now(dt.UTC)
    job = Job(
        id=1,
        name="j",
        spec={"task": task, "method": {"name": "paper"}, "dataset": {"name": "mfeat"}},
        status=JobStatus.SUCCEEDED,
        started_at=now - dt.timedelta(seconds=75),
        finished_at=now,
        result={"student": {metric: 0.8125, "other": 0.1}, "gain": {"value": 0.015}},
    )
    shown = job_view(job)
    assert (shown.student, shown.gain, shown.duration, shown.percent) == (f"{metric} 0.8125", "+0.0150", "1m15s", 100.0)


def test_a_probe_job_shows_its_verdict_and_figures() -> None:
    """A probe's result (``kind: probe``) gets its own card: the verdict, the validation figures and one
    row per primary set; a training job's result gets none."""
    import datetime as dt

    from jobs.models import Job
    from jobs.status import JobStatus
    from service.ui.rendering import templates
    from service.ui.views import job_view

    now = dt.datetime.now(dt.UTC)
    result = {
        "kind": "probe",
        "verdict": "expect a <modest> gain",
        "teacher_val": {"accuracy": 0.975},
        "reachable_val": {"accuracy": 0.9125},
        "student_val": {"accuracy": 0.8875},
        "room": 0.025,
        "weighted_r2": 0.61234,
        "sets": {
            "all primary": {"general_share": 0.5, "decisive_general_share": 0.625, "weighted_r2": 0.61234},
            "fou": {"general_share": 0.25, "decisive_general_share": None, "weighted_r2": 0.3},
        },
    }
    job = Job(
        id=7,
        name="p",
        spec={"kind": "probe", "method": {"name": "logit_kd"}, "dataset": {"name": "mfeat"}},
        status=JobStatus.SUCCEEDED,
        started_at=now,
        finished_at=now,
        result=result,
    )
    shown = job_view(job)
    assert shown.probe is not None and shown.probe.room == "+0.0250" and shown.probe.reachable == "0.9125"
    html = templates.get_template("artifacts.html").render(job=shown, artifacts=[])
    assert "expect a &lt;modest&gt; gain" in html  # escaped like everything a worker wrote
    assert re.search(r"<td>all primary</td><td>0\.500</td><td>0\.625</td><td>0\.612</td>", html)
    assert re.search(r"<td>fou</td><td>0\.250</td><td>—</td><td>0\.300</td>", html)
    assert "0.9750" in html and "0.8875" in html and 'id="probe-room">+0.0250<' in html
    trained = Job(id=8, name="t", spec={}, status=JobStatus.SUCCEEDED, result={"student": {"accuracy": 0.9}})
    assert job_view(trained).probe is None
    assert "probe" not in templates.get_template("artifacts.html").render(job=job_view(trained), artifacts=[])
