"""Reconciliation with Stripe: what a lost webhook would have told us.

Paid Checkout Sessions are credited, refunds still pending and disputes open or recent
are settled as Stripe says they stand.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from portal.billing.fulfilment import Fulfilment, dispute_changed, fulfil_checkout
from portal.billing.gateway import gateway, purchase_id_of
from portal.billing.money_back import checks, reported
from portal.db import db
from portal.errors import PaymentProviderError

log = logging.getLogger(__name__)

# -- reconciliation ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReconcileResult:
    session_id: str
    purchase_id: int | None
    outcome: Fulfilment


def reconcile(since: datetime) -> list[ReconcileResult]:
    """Run fulfilment on every completed Checkout Session since `since`; return them all.

    This is how a payment whose webhook was lost still gets its credits.
    """
    results = []
    for session in gateway().completed_checkout_sessions(int(since.astimezone(UTC).timestamp())):
        outcome = fulfil_checkout(session["id"])
        results.append(ReconcileResult(session["id"], purchase_id_of(session), outcome))
    return results


@dataclass(frozen=True)
class MoneyBackCheck:
    refunds: int
    disputes: int
    unanswered: int


def reconcile_money_back(now: datetime, since: datetime) -> MoneyBackCheck:
    """Ask Stripe again about every refund still pending a while after it was sent, every
    dispute still open and every dispute opened since `since`, and settle them as Stripe
    says they stand: how a refund or a dispute whose webhooks were lost still ends.

    One object Stripe cannot answer for is logged and skipped, not allowed to stop the
    others; listing the disputes needs Stripe, and its failure ends the run.
    """
    refunds = checks.refunds_to_recheck(now)
    disputes = set(checks.open_disputes())
    disputes.update(
        dispute["id"]
        for dispute in gateway().disputes_since(int(since.astimezone(UTC).timestamp()))
    )
    steps = [(reported.refund_changed, refund_id) for refund_id in refunds]
    steps += [(dispute_changed, dispute_id) for dispute_id in sorted(disputes)]
    unanswered = 0
    for step, stripe_id in steps:
        try:
            step(stripe_id)
        except PaymentProviderError as error:
            # Ends the reads the step made before Stripe failed to answer; it wrote nothing.
            db.session.rollback()
            unanswered += 1
            log.warning("reconciliation could not settle %s: %s", stripe_id, error)
    return MoneyBackCheck(len(refunds), len(disputes), unanswered)
