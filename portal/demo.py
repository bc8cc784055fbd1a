"""Believable demo data for `make run`; never used in production."""

import random
from datetime import timedelta

from sqlalchemy import func, select

from portal import policy
from portal.accounts.models import User
from portal.billing.models import Purchase, PurchaseStatus
from portal.db import db
from portal.errors import InsufficientCredits
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason
from portal.ledger import services as ledger
from portal.timeutil import utcnow

# (package, days ago): one purchase is past the 30-day refund window on purpose.
DEMO_PURCHASES = (("pro", 58), ("basic", 40), ("premium", 21), ("starter", 2))
DEMO_JOBS = 320
OPERATIONS = ("upscale", "background-removal", "colorize", "denoise", "style-transfer")


def seed_demo_history(customer: User, seed: int = 2026) -> bool:
    """Give the demo customer purchases and jobs over the last 60 days, once.

    Returns False when the customer already has a history.
    """
    has_history = db.session.scalar(
        select(func.count()).select_from(Purchase).where(Purchase.user_id == customer.id)
    )
    if has_history:
        return False
    rng = random.Random(seed)  # noqa: S311  (repeatable demo data, not secrets)
    now = utcnow()
    timeline = [(now - timedelta(days=days), "purchase", code) for code, days in DEMO_PURCHASES]
    first = timeline[0][0]
    span = (now - first).total_seconds()
    for _ in range(DEMO_JOBS):
        when = first + timedelta(seconds=rng.uniform(3600, span - 60))
        timeline.append((when, "job", rng.choice(OPERATIONS)))
    timeline.sort(key=lambda event: event[0])

    for number, (when, kind, what) in enumerate(timeline):
        if kind == "purchase":
            _credited_purchase(customer, policy.PACKAGES_BY_CODE[what], when, number)
            continue
        try:
            job, _ = jobs.charge_job(
                f"demo-{customer.id}-{number}", customer.email, what, rng.randint(1, 4), at=when
            )
        except InsufficientCredits:
            continue
        finished = when + timedelta(seconds=rng.randint(5, 240))
        outcome = rng.random()
        if outcome < 0.07:
            jobs.fail_job(job.id, FailureReason.PLATFORM_ERROR, "GPU worker lost", at=finished)
        elif outcome < 0.11:
            jobs.fail_job(job.id, FailureReason.INVALID_INPUT, "Corrupt image file", at=finished)
        elif when < now - timedelta(minutes=10):
            jobs.complete_job(job.id, at=finished)
    return True


def _credited_purchase(customer: User, package: policy.Package, when, number: int) -> None:
    purchase = Purchase(
        user_id=customer.id,
        package_code=package.code,
        credits=package.credits,
        amount_cents=package.price_cents,
        currency=package.currency,
        status=PurchaseStatus.CREDITED,
        stripe_checkout_session_id=f"cs_demo_{customer.id}_{number}",
        stripe_payment_intent_id=f"pi_demo_{customer.id}_{number}",
        created_at=when,
        paid_at=when,
        credited_at=when,
    )
    db.session.add(purchase)
    db.session.flush()
    ledger.credit_purchase(purchase, purchase.credit_key, at=when)
    db.session.commit()
