"""The background worker: answers sign-ups and resets, sends due refunds and outbox
e-mails, runs periodic tasks.

Run with `flask --app portal worker`. On SIGTERM or SIGINT it finishes the item in hand
and stops claiming more.
"""

import logging
import signal
import threading

from flask import Flask

from portal.accounts.services import answer_account_requests
from portal.accounts.views import account_links
from portal.billing.money_back.sending import send_due_refunds
from portal.notifications.services import deliver_pending
from portal.ops.schedule import run_due_tasks
from portal.timeutil import utcnow

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, app: Flask, interval_seconds: float = 5.0):
        self.app = app
        self.interval = interval_seconds
        self.stopping = threading.Event()

    def run_once(self) -> dict[str, int]:
        """Do one round of every kind of work; return how much of each was done."""
        with self.app.app_context():
            now = utcnow()
            done = {
                "refunds": send_due_refunds(now),
                "account_requests": answer_account_requests(now, account_links()),
            }
            if self.app.config["MAIL_BACKEND"] == "smtp":
                done["emails"] = deliver_pending()
            done["periodic"] = len(run_due_tasks(now))
            return done

    def stop(self, *_signal_args) -> None:
        self.stopping.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
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
