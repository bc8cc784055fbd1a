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
