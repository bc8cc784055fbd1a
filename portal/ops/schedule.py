"""Periodic tasks the worker runs: each at most once per period across the whole fleet.

A task is claimed by moving its `last_run_at` forward inside a transaction that holds a
PostgreSQL advisory lock named after the task, so that when several workers wake at the
same moment exactly one of them runs it. SQLite has no advisory locks: one worker only.
"""

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, text

from portal.billing.fulfilment import Fulfilment
from portal.billing.money_back import checks
from portal.billing.reconcile import reconcile, reconcile_money_back
from portal.db import db, roll_back, transactional
from portal.ledger.services import check_books
from portal.notifications.services import notify_staff
from portal.ops.models import ScheduledTask
from portal.staff.services import send_overdue_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    every: timedelta
    run: Callable[[datetime], str]


def _reconcile(now: datetime) -> str:
    since = now - timedelta(days=3)
    results = reconcile(since)
    fixed = sum(1 for result in results if result.outcome == Fulfilment.CREDITED)
    rechecked = reconcile_money_back(now, since)
    return (
        f"checked {len(results)} sessions, credited {fixed}; re-read "
        f"{rechecked.refunds} pending refunds and {rechecked.disputes} disputes"
    )


def _digest(now: datetime) -> str:
    return f"{send_overdue_digest(now)} overdue"


def _ledger_check(now: datetime) -> str:
    problems = check_books() + checks.problems()
    if problems:
        lines = [
            f"account {problem.user_id} <{problem.email}>: {problem.problem}"
            for problem in problems
        ]
        # Sent with the task's outcome, which run_due_tasks commits.
        notify_staff("Ledger check found problems", "\n".join(lines))
        return f"{len(problems)} problem(s); staff alerted"
    return "clean"


TASKS = (
    Task("reconcile", timedelta(hours=1), _reconcile),
    Task("overdue_digest", timedelta(days=1), _digest),
    Task("ledger_check", timedelta(days=1), _ledger_check),
)


@transactional
def _claim(task: Task, now: datetime) -> bool:
    """Mark `task` as run now if it is due and no other worker has it; say if we got it."""
    if db.engine.dialect.name == "postgresql":
        got_lock = db.session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:key)"),
            {"key": zlib.crc32(task.name.encode())},
        )
        if not got_lock:
            return False
    row = db.session.scalar(
        select(ScheduledTask).where(ScheduledTask.name == task.name).with_for_update()
    )
    if row is None:
        row = ScheduledTask(name=task.name)
        db.session.add(row)
    elif row.last_run_at is not None and row.last_run_at + task.every > now:
        return False
    row.last_run_at = now
    return True


def run_due_tasks(now: datetime, tasks: tuple[Task, ...] = TASKS) -> list[str]:
    """Run every task that is due; return the names of those this worker ran."""
    ran = []
    for task in tasks:
        if not _claim(task, now):
            continue
        try:
            outcome = task.run(now)
        except Exception as error:  # a failing task must not stop the others
            roll_back()
            log.exception("periodic task %s failed", task.name)
            outcome = f"failed: {error}"[:255]
        row = db.session.get(ScheduledTask, task.name)
        row.last_outcome = outcome[:255]
        db.session.commit()
        log.info("periodic task %s: %s", task.name, outcome)
        ran.append(task.name)
    return ran
