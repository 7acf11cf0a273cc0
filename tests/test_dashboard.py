"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real broker (SQLite
store), a real node and the `zerotask dashboard` command as a subprocess."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zerotask import TaskError
from zerotask.exceptions import UnknownMethod
from zerotask.testing import Cluster, ManagedProcess, free_port, scaled, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = "<img src=x onerror=alert(1)>"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(store="tasks.db") as cluster:
        cluster.start_broker()
        cluster.start_node("tests.tasks", "tests.dashboard_tasks", workers=2)
        yield cluster


def start_dashboard(cluster: Cluster, log_name: str = "dashboard.log") -> tuple[ManagedProcess, str]:
    """`zerotask dashboard` for the cluster's broker, serving; its process and its address."""
    port = free_port()
    keys = cluster.keys.peer_args("admin") if cluster.keys is not None else []
    args = [sys.executable, "-m", "zerotask.cli", "dashboard", "--broker", cluster.endpoint, "--http", f"127.0.0.1:{port}"]
    process = ManagedProcess([*args, *keys], cluster.directory / log_name)
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if not process.alive():
            raise RuntimeError(f"the dashboard exited:\n{process.output()}")
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(serving, 20, "the dashboard to serve")
    except BaseException:
        process.stop()
        raise
    return process, url


@pytest.fixture(scope="module")
def dashboard(cluster: Cluster) -> Iterator[str]:
    process, url = start_dashboard(cluster)
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, dashboard: str) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    page.set_default_timeout(scaled(15) * 1000)
    yield page
    page.close()


def needs(cluster: Cluster, method: str, params: dict[str, Any]) -> None:
    """Skip unless the broker answers ``method`` (the admin methods of issue 12 item 1)."""
    with cluster.client() as client:
        try:
            client.rpc(method, params, scaled(5))
        except UnknownMethod:
            pytest.skip(f"this broker does not serve {method} yet")
        except Exception:  # noqa: BLE001 - any other answer (unknown task...) means it is served
            pass


def test_page_shows_nodes_and_tasks_live(page: Any, dashboard: str, cluster: Cluster) -> None:
    page.goto(dashboard + "/")
    node_name = cluster.info()["nodes"][0]["name"]
    playwright_api.expect(page.locator("#nodes tbody")).to_contain_text(node_name)
    playwright_api.expect(page.locator("#status")).to_have_text("live")

    task_id = cluster.client().submit("add", 2, 3)
    row = page.locator("#recent tbody tr", has_text=task_id)
    playwright_api.expect(row).to_contain_text("FINISHED")
    if os.environ.get("ZEROTASK_DASHBOARD_SCREENSHOT"):  # docs/dashboard.png: a few seconds of traffic first
        client = cluster.client()
        for i in range(40):
            client.submit("sleep", 0.1 * (i % 5))
        client.submit("fail", "for the picture")
        page.wait_for_timeout(6000)
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_failed_task_is_retried_from_the_page(page: Any, dashboard: str, cluster: Cluster, tmp_path: Path) -> None:
    needs(cluster, "zerotask.broker.tasks", {"state": "FAILED", "limit": 1})
    needs(cluster, "zerotask.broker.retry", {"task_id": "no-such-task"})
    page.goto(dashboard + "/")
    client = cluster.client()
    task_id = client.submit("fails_once", str(tmp_path / "flag"))
    failed = page.locator("#failed tbody tr", has_text=task_id)
    playwright_api.expect(failed).to_contain_text("ValueError")

    failed.locator("button.retry").click()
    playwright_api.expect(page.locator("#recent tbody tr", has_text=task_id)).to_contain_text("FINISHED")
    assert client.result(task_id, timeout=scaled(10)) == "second time lucky"
    playwright_api.expect(failed).to_have_count(0)


def test_hostile_argument_is_shown_as_text(page: Any, dashboard: str, cluster: Cluster) -> None:
    needs(cluster, "zerotask.broker.task", {"task_id": "no-such-task"})
    client = cluster.client()
    task_id = client.submit("echo", HOSTILE, note=HOSTILE)
    assert client.result(task_id, timeout=scaled(10)) == {"args": [HOSTILE], "kwargs": {"note": HOSTILE}}
    page.goto(f"{dashboard}/task/{task_id}")
    playwright_api.expect(page.locator("#task-fields")).to_contain_text("FINISHED")
    playwright_api.expect(page.locator("#task-outcome")).to_contain_text(HOSTILE)
    # A finished task keeps only its result; a failed one keeps its arguments (to be retried): both shown as text.
    failing = client.submit("fail", HOSTILE)
    with pytest.raises(TaskError):
        client.result(failing, timeout=scaled(10))
    page.goto(f"{dashboard}/task/{failing}")
    playwright_api.expect(page.locator("#task-args")).to_contain_text(HOSTILE)
    playwright_api.expect(page.locator("#task-outcome")).to_contain_text(HOSTILE)
    assert page.locator("img").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []


def _post(url: str, path: str, headers: dict[str, str]) -> int:
    host = url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=scaled(10))
    try:
        connection.request("POST", path, body=b'{"task_id": "x"}', headers={"Content-Type": "application/json", **headers})
        return connection.getresponse().status
    finally:
        connection.close()


def test_cross_site_posts_are_refused(dashboard: str) -> None:
    host = dashboard.removeprefix("http://")
    assert _post(dashboard, "/api/revoke", {}) == 403  # no X-Zerotask header: a plain form could send this
    assert _post(dashboard, "/api/revoke", {"X-Zerotask": "1", "Origin": "http://evil.example"}) == 403
    assert _post(dashboard, "/api/revoke", {"X-Zerotask": "1", "Host": "evil.example"}) == 421  # DNS rebinding
    assert _post(dashboard, "/api/revoke", {"X-Zerotask": "1", "Origin": f"http://{host}"}) == 404  # unknown task x


def test_refuses_a_non_loopback_address_without_insecure() -> None:
    command = [sys.executable, "-m", "zerotask.cli", "dashboard", "--http", "0.0.0.0:8080"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30))
    assert done.returncode == 2
    assert "--insecure" in done.stderr


def test_history_survives_a_restart_of_the_dashboard_and_the_broker(page: Any) -> None:
    """Unlike Flower, the dashboard keeps no history of its own: it reads the broker's store."""
    with Cluster(store="tasks.db") as own:
        own.start_broker()
        own.start_node("tests.tasks", workers=1)
        client = own.client()
        task_id = client.submit("fail", "remember me")
        with pytest.raises(TaskError):
            client.result(task_id, timeout=scaled(10))
        first, _ = start_dashboard(own, "dashboard-1.log")
        first.stop()
        assert own.broker is not None
        own.broker.stop()
        own.start_broker()  # the same SQLite file
        second, url = start_dashboard(own, "dashboard-2.log")
        try:
            page.goto(url + "/")
            failed = page.locator("#failed tbody tr", has_text=task_id)
            playwright_api.expect(failed).to_contain_text("remember me")
        finally:
            second.stop()
