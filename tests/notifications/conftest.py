"""Fixtures for the outbox tests: a local SMTP server that keeps what it receives."""

import socket
import threading
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest


class SmtpCapture:
    """A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts."""

    def __init__(self):
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        message = BytesParser(policy=default_policy).parsebytes(envelope.content)
        with self._lock:
            self._messages.append(message)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp(app, monkeypatch):
    """Point the portal's SMTP settings at a local capture and switch the outbox to SMTP."""
    from aiosmtpd.controller import Controller

    capture = SmtpCapture()
    controller = None
    failures = []
    for _ in range(5):  # another program may take the free port first
        port = _free_port()
        candidate = Controller(capture, hostname="127.0.0.1", port=port, ready_timeout=10)
        try:
            candidate.start()
        except Exception as error:  # noqa: BLE001 (any failure to listen: try another port)
            failures.append(error)
        else:
            controller = candidate
            break
    assert controller is not None, f"could not start the local SMTP server: {failures!r}"
    monkeypatch.setitem(app.config, "MAIL_BACKEND", "smtp")
    monkeypatch.setitem(app.config, "MAIL_SERVER", "127.0.0.1")
    monkeypatch.setitem(app.config, "MAIL_PORT", port)
    monkeypatch.setitem(app.config, "MAIL_USE_TLS", False)
    monkeypatch.setitem(app.config, "MAIL_USERNAME", "")
    yield capture
    controller.stop()
