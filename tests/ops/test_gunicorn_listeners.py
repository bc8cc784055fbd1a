"""Under gunicorn.conf.py every worker listens on a socket of its own (SO_REUSEPORT).

With one shared socket, the first worker to wake accepted every connection of a burst;
with one socket per worker the kernel spreads them. The test runs gunicorn with the
production file and counts the listening sockets on its port in /proc/net/tcp.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads the sockets from Linux's /proc/net/tcp"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listeners(port: int) -> int:
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        count += local_port == port and fields[3] == LISTEN
    return count


def _serve(port: int, extra_env: dict) -> subprocess.Popen:
    env = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2"}
    env.update(extra_env)
    return subprocess.Popen(  # noqa: S603  (our own arguments)
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "tests.bench.hello_app:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _settled_listeners(port: int, expected: int) -> int:
    deadline = time.monotonic() + 30
    while (count := _listeners(port)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


@pytest.mark.parametrize(("setting", "expected"), [({}, 2), ({"GUNICORN_REUSE_PORT": "0"}, 1)])
def test_each_worker_listens_on_its_own_socket_unless_turned_off(setting, expected):
    port = _free_port()
    server = _serve(port, setting)
    try:
        assert _settled_listeners(port, expected) == expected
        time.sleep(0.5)  # no third socket comes later
        assert _listeners(port) == expected
    finally:
        server.terminate()
        server.wait(timeout=30)
