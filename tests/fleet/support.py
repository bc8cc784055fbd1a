"""The fleet's moving parts: processes, a local SMTP sink, a Stripe gate, HTTP helpers.

Everything listens on 127.0.0.1 only, every wait is bounded in time and in count, and
every process is started in its own process group so that stopping it (gunicorn's master
and its worker alike) needs nothing but its id.
"""

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs

import requests

REPO = Path(__file__).resolve().parent.parent.parent
HTTP_TIMEOUT = 15  # seconds, for every request the test makes
POLL = 0.05  # seconds between two looks at something we wait for


class FleetTimeout(AssertionError):
    """Something the fleet should have done did not happen in time."""


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    describe: Callable[[], str] | None = None,
):
    """Return the first truthy value of `predicate` within `timeout` seconds, or fail.

    Bounded twice: by the clock and by a number of looks, so that a slow predicate cannot
    stretch the wait without limit either.
    """
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL) + 1):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    details = f"\n{describe()}" if describe else ""
    raise FleetTimeout(f"timed out after {timeout:.0f} s waiting for {what}{details}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- processes ------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Running, as opposed to exited; never reaps it (see Processes.signal)."""
        if self.popen.returncode is not None:
            return False
        try:
            exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return exited is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Every process the fleet starts; `stop_all` ends each one, whatever happened."""

    log_dir: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        try:
            popen = subprocess.Popen(  # noqa: S603 (our own argv, no shell)
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches children
            )
        except BaseException:
            log_file.close()
            raise
        process = Process(name, popen, log_path, log_file)
        self.started.append(process)
        return process

    @staticmethod
    def signal(process: Process, signum: int) -> None:
        """Send `signum` to the process group the fleet started for `process`.

        Only while the process is not reaped: until then its id, which is also its group's
        id, cannot belong to anyone else.
        """
        if process.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    def stop(self, process: Process, grace: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; return the exit status."""
        if process.popen.returncode is None:
            if process.alive():
                self.signal(process, signal.SIGTERM)
                deadline = time.monotonic() + grace
                for _ in range(int(grace / POLL) + 1):
                    if not process.alive() or time.monotonic() >= deadline:
                        break
                    time.sleep(POLL)
            # Exited or not, it is not reaped yet: end whatever is left of its group (a
            # gunicorn worker may outlive its master), then reap it.
            self.signal(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)
        process.log_file.close()
        return process.popen.returncode

    def stop_all(self) -> None:
        failures = []
        for process in reversed(self.started):
            try:
                self.stop(process)
            except Exception as error:  # stop the others all the same
                failures.append(error)
        if failures:
            raise failures[0]

    def describe(self, lines: int = 30) -> str:
        parts = []
        for process in self.started:
            state = "running" if process.alive() else f"exited {process.popen.returncode}"
            parts.append(f"--- {process.name} (pid {process.pid}, {state}) ---\n")
            parts.append(process.tail(lines) + "\n")
        return "".join(parts)


# -- the SMTP sink ----------------------------------------------------------------------


class SmtpSink:
    """A local SMTP server (aiosmtpd) that records each delivered message."""

    def __init__(self):
        self._lock = threading.Lock()
        self._received: list[tuple[str, str]] = []
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        message = BytesParser(policy=default_policy).parsebytes(envelope.content)
        subject = str(message.get("Subject", ""))
        with self._lock:
            for recipient in envelope.rcpt_tos:
                self._received.append((recipient.lower(), subject))
        return "250 Message accepted for delivery"

    def start(self) -> int:
        from aiosmtpd.controller import Controller

        last_error = None
        for _ in range(5):  # another program may grab the free port first
            port = free_port()
            controller = Controller(self, hostname="127.0.0.1", port=port, ready_timeout=10)
            try:
                controller.start()
            except Exception as error:  # try another port
                last_error = error
                continue
            self.controller = controller
            return port
        raise RuntimeError(f"could not start the SMTP sink: {last_error!r}")

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def received(self) -> list[tuple[str, str]]:
        """(recipient, subject) of every message received so far, in order."""
        with self._lock:
            return list(self._received)

    def count(self) -> int:
        with self._lock:
            return len(self._received)


# -- the Stripe gate ----------------------------------------------------------------------


def _header(pairs, name: str) -> str:
    return next((value for key, value in pairs if key.lower() == name.lower()), "")


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}


@dataclass
class HeldCall:
    """A refund call whose caller never got an answer.

    `answer` is Stripe's, when the gate let the call through before cutting it off (the
    refund was made), or None when the call never reached Stripe.
    """

    gate: "StripeGate"
    path: str
    headers: dict[str, str]
    body: bytes
    answer: tuple[int, list, bytes] | None

    @property
    def idempotency_key(self) -> str:
        return _header(self.headers.items(), "Idempotency-Key")

    @property
    def refund_id(self) -> int:
        """Our Refund row's id, from the call's metadata[refund_id]."""
        values = parse_qs(self.body.decode()).get("metadata[refund_id]")
        assert values, f"no metadata[refund_id] in the held refund call: {self.body!r}"
        return int(values[0])


class HoldFirstRefund:
    """Shared by the gates: the first refund call any worker makes is held, once.

    With `reaches_stripe` the call is passed on first and only its answer is held back
    (Stripe made the refund, the worker never hears of it); without, the call itself is
    held (Stripe never sees it).
    """

    def __init__(self, reaches_stripe: bool):
        self.reaches_stripe = reaches_stripe
        self._lock = threading.Lock()
        self._claimed = False
        self.held: HeldCall | None = None
        self.release = threading.Event()

    def claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True


class _GateHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server: "_GateServer"

    def log_message(self, format, *args):
        pass

    def _relay(self) -> None:
        gate = self.server.gate
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        refund_call = self.command == "POST" and self.path.split("?")[0].endswith("/v1/refunds")
        if refund_call and gate.policy.claim():
            # The worker never gets an answer: it is stuck mid-call, with the refund
            # claimed, until the test kills it.
            answer = None
            if gate.policy.reaches_stripe:
                answer = gate.forward(self.command, self.path, headers, body)
            gate.policy.held = HeldCall(gate, self.path, headers, body, answer)
            gate.policy.release.wait(60)
            self.close_connection = True
            return
        status, answer_headers, content = gate.forward(self.command, self.path, headers, body)
        if refund_call:
            replayed = _header(answer_headers, "Idempotent-Replayed") == "true"
            key = _header(headers.items(), "Idempotency-Key")
            gate.refund_calls.append((key, status, replayed))
        self.send_response(status)
        for name, value in answer_headers:
            if name.lower() not in _HOP_BY_HOP | {"content-length", "server", "date"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_DELETE = _relay


class _GateServer(ThreadingHTTPServer):
    daemon_threads = True
    gate: "StripeGate"


class StripeGate:
    """A loopback relay between one worker and the sandbox Stripe on server A.

    It passes every call through, except the first refund call of the whole fleet (see
    HoldFirstRefund), which it holds: the worker that made it hangs mid-call.
    """

    def __init__(self, name: str, upstream_port: int, policy: HoldFirstRefund):
        self.name = name
        self.upstream_port = upstream_port
        self.policy = policy
        # (Idempotency-Key, status, replayed by Stripe?) of every refund call passed on.
        self.refund_calls: list[tuple[str, int, bool]] = []
        self.server = _GateServer(("127.0.0.1", 0), _GateHandler)
        self.server.gate = self
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/sandbox"

    def forward(self, method: str, path: str, headers: dict, body: bytes):
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.policy.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# -- the portal's pages, over HTTP ---------------------------------------------------------

_CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(browser: requests.Session, url: str) -> str:
    """GET `url` and return the CSRF token of its first form."""
    page = browser.get(url, timeout=HTTP_TIMEOUT, allow_redirects=False)
    assert page.status_code == 200, f"GET {url} answered {page.status_code}"
    match = _CSRF.search(page.text)
    assert match, f"no CSRF token on {url}"
    return match.group(1)


def post_login(browser: requests.Session, base: str, email: str, password: str):
    """Submit the real log-in form on the server at `base`; return the response."""
    token = csrf_token(browser, f"{base}/login")
    return browser.post(
        f"{base}/login",
        data={"email": email, "password": password, "csrf_token": token},
        timeout=HTTP_TIMEOUT,
        allow_redirects=False,
    )


def log_in(browser: requests.Session, base: str, email: str, password: str) -> None:
    response = post_login(browser, base, email, password)
    assert response.status_code == 303, (
        f"log-in on {base} answered {response.status_code}: {response.text[:500]}"
    )


def log_out(browser: requests.Session, base: str) -> None:
    token = csrf_token(browser, f"{base}/dashboard")
    response = browser.post(
        f"{base}/logout", data={"csrf_token": token}, timeout=HTTP_TIMEOUT, allow_redirects=False
    )
    assert response.status_code == 303, f"log-out on {base} answered {response.status_code}"


def buy_and_pay_pro(browser: requests.Session, base: str, card: str) -> str:
    """Buy Pro on `base`, pay it on the sandbox's hosted page; return the session id."""
    token = csrf_token(browser, f"{base}/credits/buy")
    response = browser.post(
        f"{base}/credits/buy",
        data={"package": "pro", "csrf_token": token},
        timeout=HTTP_TIMEOUT,
        allow_redirects=False,
    )
    assert response.status_code == 303, (
        f"POST {base}/credits/buy answered {response.status_code}: {response.text[:500]}"
    )
    checkout = response.headers["Location"]
    assert "/sandbox/checkout/" in checkout, checkout
    session_id = checkout.rstrip("/").rsplit("/", 1)[1]
    token = csrf_token(browser, checkout)
    response = browser.post(
        f"{checkout}/pay",
        data={"card": card, "csrf_token": token},
        timeout=HTTP_TIMEOUT,
        allow_redirects=False,
    )
    assert response.status_code == 303, f"paying {session_id} answered {response.status_code}"
    success = response.headers["Location"]
    assert success.startswith(base), f"the success page {success} is not on {base}"
    page = browser.get(success, timeout=HTTP_TIMEOUT, allow_redirects=False)
    assert page.status_code == 200, f"the success page answered {page.status_code}"
    return session_id
