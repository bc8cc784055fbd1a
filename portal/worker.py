"""The background worker: answers sign-ups and resets, sends due refunds, charges
auto-recharges, sends outbox e-mails, runs periodic tasks.

Run with `flask --app portal worker`. On SIGTERM or SIGINT it finishes the item in hand
and stops claiming more.
"""

import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime

from flask import Flask

from portal.accounts.services import answer_account_requests
from portal.accounts.views import account_links
from portal.billing import auto_recharge
from portal.billing.money_back.sending import send_due_refunds
from portal.db import roll_back
from portal.notifications.services import deliver_pending
from portal.ops.schedule import run_due_tasks
from portal.timeutil import utcnow

log = logging.getLogger(__name__)


def wait_for_server(url: str, timeout: float, stopping: threading.Event) -> bool:
    """Wait until `url` answers at all (any HTTP status); False if `timeout` passes first.

    A worker started beside its server (`make run`) reaches the server's Stripe sandbox
    over HTTP: without this its first round fails with "connection refused".
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) address: {url!r}")
    deadline = time.monotonic() + timeout
    while not stopping.is_set():
        try:
            # The operator's own address, from the command line, checked to be http(s).
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310  # nosec B310
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            if time.monotonic() >= deadline:
                return False
            stopping.wait(0.25)
    return False


class Worker:
    def __init__(self, app: Flask, interval_seconds: float = 5.0):
        self.app = app
        self.interval = interval_seconds
        self.stopping = threading.Event()

    def run_once(self) -> dict[str, int]:
        """Do one round of every kind of work; return how much of each was done.

        Each kind runs on its own: one that fails is logged and counted as nothing done,
        and the others still run (a worker that cannot write sign-up links still sends
        refunds and e-mails).
        """
        steps: dict[str, Callable[[datetime], int]] = {
            "refunds": send_due_refunds,
            "recharges": auto_recharge.run,
            "account_requests": lambda now: answer_account_requests(now, account_links()),
        }
        if self.app.config["MAIL_BACKEND"] == "smtp":
            steps["emails"] = lambda now: deliver_pending()
        steps["periodic"] = lambda now: len(run_due_tasks(now))
        done = {}
        with self.app.app_context():
            now = utcnow()
            for name, step in steps.items():
                try:
                    done[name] = step(now)
                except Exception:  # one kind of work must not starve the others
                    roll_back()
                    log.exception("worker step %s failed", name)
                    done[name] = 0
        return done

    def stop(self, *_signal_args) -> None:
        self.stopping.set()

    def run(self, wait_for: str | None = None, wait_seconds: float = 60.0) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if wait_for is not None:
            if wait_for_server(wait_for, wait_seconds, self.stopping):
                log.info("%s answers; starting", wait_for)
            else:
                log.warning("%s did not answer in %s s; starting anyway", wait_for, wait_seconds)
        log.info("worker started; polling every %s s", self.interval)
        while not self.stopping.is_set():
            try:
                done = self.run_once()
            except Exception:  # one bad round must not end the worker
                log.exception("worker round failed")
            else:
                if any(done.values()):
                    log.info("worker round: %s", done)
            self.stopping.wait(self.interval)
        log.info("worker stopped")
