"""A customer's data: download all of it, or close the account and erase what is personal.

Financial records (purchases, ledger entries, refunds) are kept as the law requires, tied
to the account's number only; e-mail address, password, free text and screenshots go.
"""

import io
import json
import secrets
import zipfile
from datetime import datetime
from tempfile import SpooledTemporaryFile

from sqlalchemy import delete, select, update

from portal import audit, csvfile, storage
from portal.accounts import sessions
from portal.accounts.models import AccountStatus, PasswordResetToken, User
from portal.accounts.passwords import hash_password
from portal.billing.models import AutoRecharge, Purchase
from portal.db import db, transactional
from portal.jobs.models import Job
from portal.ledger.models import LedgerEntry
from portal.ledger.queries import ENTRY_COLUMNS
from portal.notifications.models import OutboxEmail
from portal.refunds.models import Attachment, RefundRequest, RefundRequestEvent

ERASED = "[erased]"


def _csv(archive: zipfile.ZipFile, name: str, header: list[str], rows) -> None:
    with archive.open(name, "w") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
        writer = csvfile.writer(out)
        writer.writerow(header)
        writer.writerows(rows)


@transactional
def export_for(user: User, actor_id: int, ip_address: str | None) -> SpooledTemporaryFile:
    """Build `user`'s archive and record in the audit log who took it."""
    archive = export_archive(user)
    audit.record("account.exported", "user", user.id, actor_id=actor_id, ip_address=ip_address)
    return archive


def export_archive(user: User) -> SpooledTemporaryFile:
    """Write everything the portal holds about `user` into a zip; return it, rewound."""
    spool = SpooledTemporaryFile(max_size=16 * 1024 * 1024)  # noqa: SIM115  (returned open)
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for write_part in (_account, _purchases, _ledger, _jobs, _refund_requests):
            write_part(archive, user)
    spool.seek(0)
    return spool


def _account(archive: zipfile.ZipFile, user: User) -> None:
    account = {
        "id": user.id,
        "email": user.email,
        "role": user.role.value,
        "status": user.status.value,
        "created_at": user.created_at.isoformat(),
        "timezone": user.timezone,
        "credits_balance": user.credits_balance,
        "low_balance_threshold": user.low_balance_threshold,
    }
    archive.writestr("account.json", json.dumps(account, indent=2))


def _purchases(archive: zipfile.ZipFile, user: User) -> None:
    columns = [
        "id",
        "created_at",
        "package",
        "credits",
        "amount_cents",
        "currency",
        "status",
        "refunded_cents",
        "receipt_url",
    ]
    purchases = db.session.scalars(
        select(Purchase).where(Purchase.user_id == user.id).order_by(Purchase.id)
    )
    rows = (
        [
            p.id,
            p.created_at.isoformat(),
            p.package_code,
            p.credits,
            p.amount_cents,
            p.currency,
            p.status.value,
            p.refunded_cents,
            p.receipt_url or "",
        ]
        for p in purchases
    )
    _csv(archive, "purchases.csv", columns, rows)


def _ledger(archive: zipfile.ZipFile, user: User) -> None:
    entries = db.session.execute(
        select(*ENTRY_COLUMNS)
        .where(LedgerEntry.user_id == user.id)
        .order_by(LedgerEntry.id)
        .execution_options(stream_results=True, yield_per=2000)
    )
    rows = (
        [
            entry_id,
            created_at.isoformat(),
            kind.value,
            credits,
            balance_after,
            purchase_id or "",
            job_id or "",
            memo,
        ]
        for entry_id, created_at, kind, credits, balance_after, purchase_id, job_id, memo in entries
    )
    _csv(archive, "ledger.csv", [column.key for column in ENTRY_COLUMNS], rows)


def _jobs(archive: zipfile.ZipFile, user: User) -> None:
    columns = [
        "id",
        "external_id",
        "created_at",
        "operation",
        "credits",
        "status",
        "failure_reason",
        "credits_restored",
    ]
    jobs = db.session.execute(
        select(
            Job.id,
            Job.external_id,
            Job.created_at,
            Job.operation,
            Job.credits,
            Job.status,
            Job.failure_reason,
            Job.credits_restored,
        )
        .where(Job.user_id == user.id)
        .order_by(Job.id)
        .execution_options(stream_results=True, yield_per=2000)
    )
    rows = (
        [
            j.id,
            j.external_id,
            j.created_at.isoformat(),
            j.operation,
            j.credits,
            j.status.value,
            j.failure_reason.value if j.failure_reason else "",
            j.credits_restored,
        ]
        for j in jobs
    )
    _csv(archive, "jobs.csv", columns, rows)


def _refund_requests(archive: zipfile.ZipFile, user: User) -> None:
    requests = [
        {
            "reference": request.reference,
            "purchase_id": request.purchase_id,
            "reason": request.reason.value,
            "details": request.details,
            "status": request.status.value,
            "created_at": request.created_at.isoformat(),
            "timeline": [
                {"at": event.created_at.isoformat(), "kind": event.kind, "text": event.body}
                for event in request.events
                if event.visible_to_customer
            ],
        }
        for request in db.session.scalars(
            select(RefundRequest).where(RefundRequest.user_id == user.id).order_by(RefundRequest.id)
        )
    ]
    archive.writestr("refund_requests.json", json.dumps(requests, indent=2))


@transactional
def close_account(user: User, now: datetime, actor_id: int | None, ip_address: str | None) -> None:
    """Close the account: erase personal data, keep the financial records, end sessions.

    The screenshots are deleted with the rest, in the same transaction.
    """
    old_email = user.email
    anonymous = f"closed-{user.id}@closed.invalid"
    user.email = anonymous
    user.password_hash = hash_password(secrets.token_urlsafe(32))
    user.status = AccountStatus.CLOSED
    user.terminated_at = now
    user.termination_reason = "closed at the customer's request"
    user.timezone = None
    # A closed account is charged for no more jobs: nothing left to warn about.
    user.low_balance_threshold = None
    user.low_balance_alert_armed = False
    # No more recharges, and no card named: the settings go with the account.
    user.auto_recharge_below = None
    user.auto_recharge_wanted = False
    db.session.execute(delete(AutoRecharge).where(AutoRecharge.user_id == user.id))
    user.stripe_customer_id = None
    user.session_generation += 1
    sessions.end_all(user, now)
    db.session.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id == user.id))
    request_ids = select(RefundRequest.id).where(RefundRequest.user_id == user.id)
    db.session.execute(
        update(RefundRequest)
        .where(RefundRequest.user_id == user.id)
        .values(details=ERASED, transaction_ids="")
    )
    db.session.execute(
        update(RefundRequestEvent)
        .where(
            RefundRequestEvent.request_id.in_(request_ids),
            RefundRequestEvent.kind == "customer_message",
        )
        .values(body=ERASED)
    )
    files = db.session.scalars(
        select(Attachment.storage_key).where(Attachment.request_id.in_(request_ids))
    ).all()
    db.session.execute(delete(Attachment).where(Attachment.request_id.in_(request_ids)))
    storage.delete_files(files)
    db.session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.to_address == old_email)
        .values(to_address=anonymous, body_text=ERASED)
    )
    audit.record(
        "account.closed",
        "user",
        user.id,
        actor_id=actor_id,
        ip_address=ip_address,
        after={"personal_data": "erased", "financial_records": "kept"},
    )
