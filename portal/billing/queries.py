"""What the customer's purchase pages read: purchases with their unused credits."""

from sqlalchemy import func, select

from portal.billing.models import Purchase, PurchaseOrigin
from portal.db import db
from portal.errors import NotFound
from portal.ledger.models import CreditLot
from portal.pagination import Page, keyset_page

_unused = func.coalesce(CreditLot.credits_remaining, 0).label("unused_credits")


def _purchases_query(user_id: int):
    return (
        select(Purchase, _unused)
        .outerjoin(CreditLot, CreditLot.purchase_id == Purchase.id)
        .where(Purchase.user_id == user_id)
    )


def purchases_page(user_id: int, size: int, before: int | None, after: int | None) -> Page:
    """Return one page of the customer's purchases, newest first, each with unused credits."""
    return keyset_page(
        _purchases_query(user_id), Purchase.id, size, before, after, row_id=lambda row: row[0].id
    )


def latest_purchases(user_id: int, limit: int = 5) -> list:
    return db.session.execute(
        _purchases_query(user_id).order_by(Purchase.id.desc()).limit(limit)
    ).all()


def purchase_for_customer(user_id: int, purchase_id: int):
    """Return (purchase, unused credits) of the customer's purchase.

    :raises NotFound: no such purchase, or it belongs to someone else.
    """
    row = db.session.execute(_purchases_query(user_id).where(Purchase.id == purchase_id)).first()
    if row is None:
        raise NotFound("no such purchase")
    return row


def recent_recharges(user_id: int, limit: int = 5) -> list[Purchase]:
    """The customer's latest auto-recharges, newest first."""
    return db.session.scalars(
        select(Purchase)
        .where(Purchase.user_id == user_id, Purchase.origin == PurchaseOrigin.AUTO_RECHARGE)
        .order_by(Purchase.id.desc())
        .limit(limit)
    ).all()
