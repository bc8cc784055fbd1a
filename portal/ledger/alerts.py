"""Low-balance alerts: one e-mail each time a customer's balance falls below the number of
credits they chose, and the suggestion of that number from their recent use.

The ledger calls `watch_balance` for every entry it posts, while it holds the customer's
row lock (see `services._post`). The alert's state lives on that same row
(`User.low_balance_alert_armed`), so deciding to send and recording that it was sent are
one step under one lock: of twenty charges that cross the threshold at once, the first
to get the lock sends the e-mail and disarms the alert, and the others, waiting on the
lock, find it disarmed. The e-mail is queued in the outbox in the same transaction, so it
goes if and only if the charge is committed.

Which entries send it: job charges only. A refund's claw-back or a dispute's hold also
lowers the balance, but the customer asked for that refund or raised that dispute and
hears about it in its own words; a "buy more credits" e-mail on top would be out of place.
Such an entry leaves the alert armed instead, so the next job charged below the threshold
sends it: the warning still comes, when the customer is actually using credits.

What re-arms it: credits the customer gains (a purchase, a grant, credits released or put
back) that bring the balance back to the threshold or above. A failed job's credits coming
back do not: during an outage a platform retrying a job would otherwise charge, fail and
return it over and over, and each charge would send another e-mail for the same fall.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from portal.accounts.models import User
from portal.db import db, locked, transactional
from portal.errors import NotFound, ValidationError
from portal.ledger.models import EntryKind, LedgerEntry
from portal.links import external_url_or_none
from portal.money import format_credits
from portal.notifications.services import queue_email

# The thresholds a customer may choose, in credits.
THRESHOLD_MIN = 1
THRESHOLD_MAX = 100_000
# The suggestion: about this many days of the customer's average daily use over the window.
USE_WINDOW_DAYS = 30
SUGGESTED_DAYS_OF_USE = 7

# The entries whose crossing is told at once (see the module's docstring).
SENDS_ALERT = frozenset({EntryKind.JOB_CHARGE})
# Entries that raise the balance without re-arming a sent alert (see the docstring).
KEEPS_ALERT_USED = frozenset({EntryKind.JOB_REFUND})


def watch_balance(account: User, kind: EntryKind) -> None:
    """Re-arm the alert, or send it, after an entry changed the locked account's balance."""
    threshold = account.low_balance_threshold
    if threshold is None:
        return
    if account.credits_balance >= threshold:
        if kind not in KEEPS_ALERT_USED:
            account.low_balance_alert_armed = True
    elif account.low_balance_alert_armed and kind in SENDS_ALERT:
        account.low_balance_alert_armed = False
        queue_alert(account.email, account.credits_balance, threshold)


def _credits(count: int) -> str:
    return f"{format_credits(count)} credit{'' if count == 1 else 's'}"


def queue_alert(email: str, balance: int, threshold: int) -> None:
    """Queue the alert e-mail, in the caller's transaction: the balance fell to `balance`,
    below `threshold`. `watch_balance` decides when (and PostgreSQL's `charge_job`, which
    only says that it is due: see portal.jobs.services)."""
    buy = external_url_or_none("billing.buy")
    settings = external_url_or_none("accounts.settings")
    body = (
        f"Your balance is {_credits(balance)}, below the "
        f"{_credits(threshold)} you asked us to warn you at. Jobs are charged from this "
        "balance: once it runs out, new jobs are refused until you buy more credits.\n\n"
        + (f"Buy credits: {buy}" if buy else "Buy credits in the portal under Buy credits.")
        + "\n\n"
        f"This is the only alert until your balance is back at {_credits(threshold)} or "
        "more and falls below it again. To change the amount or turn the alert off, go to "
        + (f"your Account page: {settings}" if settings else "your Account page in the portal.")
    )
    queue_email(email, f"Your balance is below {_credits(threshold)}", body)


@transactional
def set_alert(user_id: int, threshold: int) -> User:
    """E-mail the customer when their balance falls below `threshold` credits.

    The alert is armed only if the balance is at or above the threshold now: it tells of a
    fall, and a balance already below it is what the customer is looking at.

    :raises ValidationError: the threshold is not a whole number in the allowed range.
    :raises NotFound: no such account.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValidationError("Write a whole number of credits.", field="threshold")
    if not THRESHOLD_MIN <= threshold <= THRESHOLD_MAX:
        raise ValidationError(
            f"Choose between {THRESHOLD_MIN:,} and {THRESHOLD_MAX:,} credits.", field="threshold"
        )
    # The same lock as every balance change, so a charge running now sees either the old
    # alert or the new one, never half of each.
    account = locked(User, User.id == user_id)
    if account is None:
        raise NotFound("no such account")
    account.low_balance_threshold = threshold
    account.low_balance_alert_armed = account.credits_balance >= threshold
    return account


@transactional
def turn_off_alert(user_id: int) -> None:
    """Stop low-balance e-mails for this customer.

    :raises NotFound: no such account.
    """
    account = locked(User, User.id == user_id)
    if account is None:
        raise NotFound("no such account")
    account.low_balance_threshold = None
    account.low_balance_alert_armed = False


@dataclass(frozen=True)
class Suggestion:
    """A threshold worth about `days_covered` days of what the customer used lately."""

    threshold: int
    credits_used: int
    window_days: int
    days_covered: int

    @property
    def per_day_tenths(self) -> int:
        """The average daily use over the window in tenths of a credit, rounded (14 is 1.4)."""
        return (20 * self.credits_used + self.window_days) // (2 * self.window_days)


def _round_up_to_two_figures(credits: int) -> int:
    """288 -> 290, 1,234 -> 1,300, 37 -> 37: a number a person would pick, never lower."""
    step = 10 ** max(0, len(str(credits)) - 2)
    return -(-credits // step) * step


def suggest_threshold(user_id: int, now: datetime) -> Suggestion | None:
    """Suggest a threshold from the customer's job use over the last USE_WINDOW_DAYS days.

    Use is the credits charged for jobs less those given back for failed jobs. About
    SUGGESTED_DAYS_OF_USE days of it, rounded up to two significant figures, leaves time
    to buy more before jobs are refused. None when there was no use to go by.
    """
    charged = db.session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.credits), 0)).where(
            LedgerEntry.user_id == user_id,
            LedgerEntry.kind.in_([EntryKind.JOB_CHARGE, EntryKind.JOB_REFUND]),
            LedgerEntry.created_at >= now - timedelta(days=USE_WINDOW_DAYS),
        )
    )
    used = -charged
    if used <= 0:
        return None
    # Integer ceiling of used * days / window: no floats near credits.
    covered = -(-used * SUGGESTED_DAYS_OF_USE // USE_WINDOW_DAYS)
    threshold = min(max(_round_up_to_two_figures(covered), THRESHOLD_MIN), THRESHOLD_MAX)
    return Suggestion(threshold, used, USE_WINDOW_DAYS, SUGGESTED_DAYS_OF_USE)
