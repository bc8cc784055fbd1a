"""One job's charge has two implementations that must not drift apart: on PostgreSQL one
call of the database function `charge_job`, elsewhere (SQLite, and every batch) the
Python path, `_plan` and `ledger.spend_many`. Here both run side by side on PostgreSQL,
each in a world of its own (twin customers, twin lots, twin settings), through the same
random history of charges; they must give the same answers and leave the same rows."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from portal.accounts.models import AccountStatus, User
from portal.db import db
from portal.errors import PortalError
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason, Job, JobStatus
from portal.ledger import alerts
from portal.ledger.models import CreditLot, DayEndBalance, LedgerEntry, LotAllocation
from portal.notifications.models import OutboxEmail
from tests.factories import make_purchase, make_staff, make_user
from tests.ledger.test_properties import empty_all_tables

pytestmark = pytest.mark.postgres

# Two worlds: the same history charged through each implementation (the database's
# through `charge`, which chooses it on PostgreSQL).
WORLDS = {"python": jobs._charge_one, "database": jobs.charge}
# Late in a UTC day, so that a history's charges fall on two days' closing balances.
START = datetime(2026, 12, 7, 23, 40, tzinfo=UTC)

SETUPS = st.fixed_dictionaries(
    {
        # Each bought on one of three days: lots the same age, or older than the lot
        # bought before them, are told apart as the ledger does (age, then id).
        "packages": st.lists(
            st.tuples(st.sampled_from(["starter", "basic"]), st.integers(0, 2)), max_size=3
        ),
        "alert_below": st.none() | st.integers(min_value=1, max_value=150),
        "recharge_below": st.none() | st.integers(min_value=1, max_value=150),
        "terminated": st.sampled_from([False, False, False, True]),
    }
)
# Who is named, which external id (a few, so that they repeat and collide), what is asked;
# or a job that failed on the platform, its credits given back (which raises the balance
# without re-arming a sent alert: the next charge decides whether it is armed again).
STEPS = st.lists(
    st.tuples(
        st.sampled_from(["main", "main", "main", "other", "unknown", "staff", "closed"]),
        st.integers(min_value=0, max_value=4),
        st.sampled_from(["upscale", "denoise"]),
        st.integers(min_value=1, max_value=90),
        st.booleans(),  # the address as the platform might send it: " MAIN-…@EXAMPLE.COM "
    )
    | st.tuples(st.just("failed"), st.integers(min_value=0, max_value=4)),
    min_size=1,
    max_size=12,
)


def build_world(world: str, setup: dict) -> dict[str, str]:
    """The world's customers, created alike; returns their e-mail by role."""
    emails = {role: f"{role}-{world}@example.com" for role in ("main", "other", "unknown")}
    main = make_user(email=emails["main"])
    for package, day in setup["packages"]:
        make_purchase(main, package, paid_at=START - timedelta(days=30 - day))
    if setup["alert_below"] is not None:
        alerts.set_alert(main.id, setup["alert_below"])
    db.session.execute(
        update(User)
        .where(User.id == main.id)
        .values(
            auto_recharge_below=setup["recharge_below"],
            status=AccountStatus.TERMINATED if setup["terminated"] else AccountStatus.ACTIVE,
        )
    )
    db.session.commit()
    make_purchase(make_user(email=emails["other"]), "starter", paid_at=START - timedelta(days=9))
    emails["staff"] = make_staff(email=f"staff-{world}@example.com").email
    emails["closed"] = make_user(
        email=f"closed-{world}@example.com", status=AccountStatus.CLOSED
    ).email
    return emails


def answer(charge_one, request: jobs.JobRequest, at: datetime) -> tuple:
    """What the implementation answered, without the world's own ids and names."""
    try:
        charged = charge_one(request, at)
    except PortalError as refusal:
        return ("refused", type(refusal).__name__, str(refusal), getattr(refusal, "balance", None))
    # The job answered is the job stored, column for column and type for type.
    job = charged.job
    stored = db.session.get(Job, job.id)
    db.session.refresh(stored)
    values = [getattr(job, column.key) for column in Job.__table__.columns]
    assert values == [getattr(stored, column.key) for column in Job.__table__.columns]
    assert [type(value) for value in values] == [
        type(getattr(stored, column.key)) for column in Job.__table__.columns
    ]
    return (
        "charged",
        charged.created,
        charged.balance_after,
        charged.low_balance_threshold,
        job.external_id.split("-", 1)[1],
        db.session.get(User, job.user_id).email.split("-")[0],
        [
            value
            for column, value in zip(Job.__table__.columns, values, strict=True)
            if column.key not in ("id", "user_id", "external_id")
        ],
    )


def flags(email: str) -> tuple:
    """What the customer's row says just after a step, beyond the balance answered."""
    return tuple(
        db.session.execute(
            select(User.low_balance_alert_armed, User.auto_recharge_wanted).where(
                User.email == email
            )
        ).one()
    )


def fail(external_id: str, at: datetime) -> tuple:
    """The job under `external_id`, if there is one still running, failed on the platform."""
    job = db.session.scalar(select(Job).where(Job.external_id == external_id))
    if job is None or job.status != JobStatus.RUNNING:
        return ("nothing to fail",)
    failed = jobs.fail_job(job.id, FailureReason.PLATFORM_ERROR, "GPU node lost", at)
    return ("failed", failed.credits_restored)


def rows(world: str) -> dict:
    """Everything the charges wrote in the world, named as the history named it."""
    db.session.expire_all()
    users = {
        user.email.split("-")[0]: user
        for user in db.session.scalars(select(User).where(User.email.like(f"%-{world}@%")))
    }
    role_of = {user.id: role for role, user in users.items()}
    job_name = {
        job.id: job.external_id.removeprefix(f"{world}-")
        for job in db.session.scalars(select(Job).where(Job.external_id.like(f"{world}-%")))
    }
    lots = {
        lot.id: index
        for index, lot in enumerate(
            db.session.scalars(
                select(CreditLot)
                .where(CreditLot.user_id.in_(role_of))
                .order_by(CreditLot.user_id, CreditLot.created_at, CreditLot.id)
            )
        )
    }
    entries = db.session.scalars(
        select(LedgerEntry).where(LedgerEntry.user_id.in_(role_of)).order_by(LedgerEntry.id)
    ).all()
    allocations = db.session.scalars(
        select(LotAllocation)
        .where(LotAllocation.ledger_entry_id.in_([entry.id for entry in entries]))
        .order_by(LotAllocation.ledger_entry_id, LotAllocation.lot_id)
    ).all()
    entry_index = {entry.id: index for index, entry in enumerate(entries)}
    return {
        "accounts": {
            role: (
                user.credits_balance,
                user.credits_used,
                user.low_balance_alert_armed,
                user.auto_recharge_wanted,
            )
            for role, user in users.items()
        },
        "jobs": sorted(
            (
                job_name[job.id],
                role_of[job.user_id],
                job.operation,
                job.credits,
                job.status,
                job.credits_restored,
                job.created_at,
            )
            for job in db.session.scalars(select(Job).where(Job.id.in_(job_name)))
        ),
        "entries": [
            (role_of[entry.user_id], entry.kind, entry.credits, entry.balance_after)
            + (
                (
                    job_name[entry.job_id],
                    entry.idempotency_key.replace(str(entry.job_id), job_name[entry.job_id]),
                    entry.memo,
                    entry.created_at,
                )
                if entry.job_id
                else ()  # the purchases' entries, made alike by the set-up
            )
            for entry in entries
        ],
        "allocations": [
            (entry_index[allocation.ledger_entry_id], lots[allocation.lot_id], allocation.credits)
            for allocation in allocations
        ],
        "lots": sorted(
            (lots[lot.id], lot.credits_remaining)
            for lot in db.session.scalars(select(CreditLot).where(CreditLot.id.in_(lots)))
        ),
        "day_ends": sorted(
            (role_of[row.user_id], row.day, row.balance)
            for row in db.session.scalars(
                select(DayEndBalance).where(DayEndBalance.user_id.in_(role_of))
            )
        ),
        "emails": [
            (email.to_address.split("-")[0], email.subject, email.body_text)
            for email in db.session.scalars(
                select(OutboxEmail)
                .where(OutboxEmail.to_address.like(f"%-{world}@%"))
                .order_by(OutboxEmail.id)
            )
        ],
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(setup=SETUPS, steps=STEPS)
# The alert's one subtle path, always tried: sent, the job's credits given back (the
# alert stays used), then a charge that leaves the balance above the threshold re-arms it,
# and the next fall sends it again.
@example(
    setup={
        "packages": [("starter", 0)],
        "alert_below": 40,
        "recharge_below": 30,
        "terminated": False,
    },
    steps=[
        ("main", 0, "upscale", 20, False),
        ("failed", 0),
        ("main", 1, "upscale", 5, True),
        ("main", 2, "denoise", 10, False),
        ("main", 3, "denoise", 10, False),
    ],
)
def test_the_database_function_charges_as_the_python_path_does(app, setup, steps):
    empty_all_tables()
    emails = {world: build_world(world, setup) for world in WORLDS}
    answers = {world: [] for world in WORLDS}
    for number, step in enumerate(steps):
        at = START + timedelta(minutes=7 * number)
        for world, charge_one in WORLDS.items():
            if step[0] == "failed":
                answers[world].append(fail(f"{world}-{step[1]}", at))
                continue
            who, external, operation, credits, shouted = step
            email = f" {emails[world][who].upper()} " if shouted else emails[world][who]
            asked = jobs.JobRequest(f"{world}-{external}", email, operation, credits)
            answers[world].append(answer(charge_one, asked, at) + flags(emails[world]["main"]))
    assert answers["database"] == answers["python"]
    assert rows("database") == rows("python")
