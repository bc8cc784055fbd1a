"""A worker started beside its server waits for the server before its first round."""

import http.server
import socket
import threading
import time

import pytest

from portal.worker import wait_for_server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (the standard library's name)
        self.send_response(503)  # any answer counts: the server is up
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_worker_waits_until_the_server_answers():
    port = _free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), _Answer)

    def start_late():
        time.sleep(1.0)
        server.serve_forever()

    started = time.monotonic()
    threading.Thread(target=start_late, daemon=True).start()
    try:
        assert wait_for_server(f"http://127.0.0.1:{port}/healthz", 30, threading.Event())
        assert time.monotonic() - started >= 0.9
    finally:
        server.shutdown()
        server.server_close()


def test_waiting_gives_up_after_its_time_or_when_stopped():
    url = f"http://127.0.0.1:{_free_port()}/healthz"
    assert wait_for_server(url, 0.5, threading.Event()) is False
    stopping = threading.Event()
    stopping.set()
    assert wait_for_server(url, 30, stopping) is False


def test_only_http_addresses_are_waited_for():
    with pytest.raises(ValueError, match="not an http"):
        wait_for_server("file:///etc/passwd", 1, threading.Event())


def test_a_kind_of_work_that_fails_does_not_starve_the_others(make_app, caplog):
    # A worker that cannot know the portal's address (no PORTAL_BASE_URL, no SERVER_NAME)
    # cannot write a sign-up link; its periodic tasks still run.
    from portal.accounts.services import ask_to_sign_up
    from portal.worker import Worker

    app = make_app(SERVER_NAME=None, PORTAL_BASE_URL="")
    with app.app_context():
        ask_to_sign_up("waiting@example.com", "a long and unusual passphrase")
    done = Worker(app).run_once()
    assert done["account_requests"] == 0
    assert done["periodic"] == 3
    assert "worker step account_requests failed" in caplog.text
    assert "PORTAL_BASE_URL is needed" in caplog.text
