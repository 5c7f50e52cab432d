"""The service serves the MiniWoB pages over HTTP so that Chromium caches them between episodes."""

from __future__ import annotations

import httpx
import pytest

from browser_control.env_service.tasks import MiniwobPageServer, serve_miniwob_pages


@pytest.fixture()
def page_server() -> MiniwobPageServer:
    server = MiniwobPageServer()
    yield server
    server.stop()


def test_pages_are_served_read_only_with_a_cache_lifetime(page_server: MiniwobPageServer) -> None:
    base = page_server.base_url
    assert base.startswith("http://127.0.0.1:") and base.endswith("/miniwob/")
    page = httpx.get(base + "click-test.html", timeout=30)
    assert page.status_code == 200 and "core.js" in page.text
    assert "max-age=" in page.headers["cache-control"]
    script = httpx.get(base + "../core/jquery-ui/jquery-ui.min.js", timeout=30)
    assert script.status_code == 200 and "max-age=" in script.headers["cache-control"]
    root = base.removesuffix("miniwob/")
    assert httpx.get(root, timeout=30).status_code == 404  # no listings
    assert httpx.get(root + "miniwob/", timeout=30).status_code == 404
    # Raw path: httpx would normalise the dots away before sending.
    escape = httpx.get(root + "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", timeout=30)
    assert escape.status_code == 404
    assert httpx.post(base + "click-test.html", timeout=30).status_code == 501


def test_miniwob_url_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIWOB_URL", "http://pages.example/miniwob")
    assert serve_miniwob_pages() == ("http://pages.example/miniwob/", None)


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_a_reset_in_place_loads_only_the_page_itself_again(
    chromium: str | None, page_server: MiniwobPageServer
) -> None:
    """jQuery, jQuery UI, d3 and the other scripts come from the browser's cache after the first episode."""
    from browser_control.env_service.browser import BrowserOptions, BrowserSession, BrowserWorker
    from browser_control.env_service.tasks import task_classes

    worker = BrowserWorker(0, BrowserOptions(chromium_executable=chromium))
    session = BrowserSession("pages", worker)
    task_cls = task_classes()["click-checkboxes"]
    try:
        observation = worker.submit(
            lambda: session.reset(task_cls, "click-checkboxes", 1, page_server.base_url, None)
        ).result(timeout=120)
        assert observation["url"] == page_server.base_url + "click-checkboxes.html"
        first = page_server.requests
        assert first >= 6  # the page, its scripts and style sheets
        for seed in (2, 3):
            again = worker.submit(
                lambda seed=seed: session.reset(task_cls, "click-checkboxes", seed, page_server.base_url, None)
            ).result(timeout=120)
            assert "checkbox" in again["axtree_txt"]
        assert page_server.requests - first <= 2  # at most the page revalidated, once per reset
        worker.submit(session.close).result(timeout=60)
    finally:
        worker.stop()
