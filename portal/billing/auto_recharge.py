"""Auto-recharge: buying the customer's chosen package with their saved card whenever a
job leaves the balance below the threshold they chose, never past a monthly cap.

This module owns the whole life cycle:

- Settings. `choose` records the threshold, package and cap; the card is set up for
  charges made without the customer through a setup-mode Checkout Session
  (`start_card_setup`, then `card_set_up` from the return page or the webhook).
  Auto-recharge is on once both are there (`User.auto_recharge_below` is set).
- Asking. A job charge that leaves the balance below the threshold raises
  `User.auto_recharge_wanted` under the balance's own lock (ledger/recharge_trigger.py).
- Starting (the worker, `run`). `_start` locks the account, takes the flag down and
  decides: nothing if a recharge is in flight, the cap would be passed or a purchase
  came in meanwhile; otherwise it records a pending recharge purchase. One transaction,
  and a partial unique index, so one recharge is in flight per customer however many
  workers race.
- Charging, in two steps. `_create_intent` makes the PaymentIntent unconfirmed (nothing
  is charged) and records its id on the purchase; `_confirm` then charges it
  off-session. From the moment a payment could exist, its id is known, so a worker that
  dies at any point finds it again by asking Stripe, never by sending a charge again
  (Stripe keeps idempotency keys for about a day, and an outage can last longer). Just
  before charging, the recharge is checked to be still wanted: switched off or a closed
  account in between, the PaymentIntent is cancelled instead.
- Settling. `_apply` acts on the PaymentIntent as Stripe has it: paid is credited by
  fulfilment's exactly-once path and invoiced; declined fails the purchase, and three
  declines in a row switch auto-recharge off; a bank asking for the cardholder leaves it
  waiting for them, with an e-mail linking to the page where they confirm it
  (`confirm_on_session`), for WAIT_FOR_CUSTOMER at most.

Stripe is never called while a database lock is held.
"""

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select

from portal import policy
from portal.accounts.models import AccountStatus, Role, User
from portal.billing import fulfilment
from portal.billing.checkout import stripe_customer
from portal.billing.gateway import NoSuchObject, gateway, purchase_id_of
from portal.billing.models import AutoRecharge, Purchase, PurchaseOrigin, PurchaseStatus
from portal.billing.money_back.state import lock_purchase
from portal.db import db, locked, parse_id, transactional
from portal.errors import NotFound, PaymentProviderError, ValidationError
from portal.links import external_url_or_none
from portal.money import format_cents
from portal.notifications.services import queue_email
from portal.timeutil import company_date, company_month, utcnow

log = logging.getLogger(__name__)

# The choices a customer may make.
THRESHOLD_MIN = 1
THRESHOLD_MAX = 100_000
CAP_MAX_CENTS = 500_000  # $5,000 a month
# Declined recharges in a row after which auto-recharge switches itself off.
FAILURES_BEFORE_OFF = 3
# How long a recharge waits for the cardholder to confirm it before it is cancelled.
WAIT_FOR_CUSTOMER = timedelta(days=3)
# Stripe's codes for a payment that needs the cardholder, not a decline.
NEEDS_CUSTOMER = frozenset({"authentication_required", "payment_intent_authentication_failure"})
# How long the worker keeps trying to invoice a paid recharge: less than the day for
# which Stripe keeps idempotency keys, so that a retry never makes a second invoice.
INVOICE_RETRIES_FOR = timedelta(hours=20)
# The most accounts one worker round starts recharges for.
BATCH = 100


# -- settings -----------------------------------------------------------------------


def settings_of(user_id: int) -> AutoRecharge | None:
    """The customer's auto-recharge choices, None before they made any."""
    return db.session.get(AutoRecharge, user_id)


def is_on(user: User) -> bool:
    """Whether job charges below the threshold start recharges."""
    return user.auto_recharge_below is not None


@transactional
def choose(user_id: int, threshold: int, package_code: str, monthly_cap_cents: int) -> bool:
    """Record the customer's auto-recharge settings; return whether it is on now.

    With a card already set up, the settings take effect (and auto-recharge is switched
    on) at once; without one, they wait for the card.

    :raises ValidationError: a value out of range, naming its field.
    :raises NotFound: no such customer account.
    """
    package = policy.PACKAGES_BY_CODE.get(package_code)
    if package is None:
        raise ValidationError("Choose one of the packages.", field="package")
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValidationError("Write a whole number of credits.", field="threshold")
    if not THRESHOLD_MIN <= threshold <= THRESHOLD_MAX:
        raise ValidationError(
            f"Choose between {THRESHOLD_MIN:,} and {THRESHOLD_MAX:,} credits.", field="threshold"
        )
    if isinstance(monthly_cap_cents, bool) or not isinstance(monthly_cap_cents, int):
        raise ValidationError("Write a whole number of dollars.", field="monthly_cap")
    if not package.price_cents <= monthly_cap_cents <= CAP_MAX_CENTS:
        raise ValidationError(
            f"Choose between {format_cents(package.price_cents)} (one {package.name} "
            f"package) and {format_cents(CAP_MAX_CENTS)} a month.",
            field="monthly_cap",
        )
    account = _lock_customer(user_id)
    settings = db.session.get(AutoRecharge, user_id)
    if settings is None:
        settings = AutoRecharge(user_id=user_id, failures_in_a_row=0)
        db.session.add(settings)
    settings.threshold = threshold
    settings.package_code = package.code
    settings.monthly_cap_cents = monthly_cap_cents
    if settings.payment_method_id and account.status == AccountStatus.ACTIVE:
        _switch_on(account, settings)
    return is_on(account)


@transactional
def switch_off(user_id: int) -> None:
    """Stop recharging; the choices are kept for switching on again.

    :raises NotFound: no such customer account.
    """
    account = _lock_customer(user_id)
    account.auto_recharge_below = None
    account.auto_recharge_wanted = False
    settings = db.session.get(AutoRecharge, user_id)
    if settings is not None:
        settings.setup_session_id = None


def _lock_customer(user_id: int) -> User:
    account = locked(User, User.id == user_id)
    if account is None or account.role != Role.CUSTOMER:
        raise NotFound("no such account")
    return account


def _switch_on(account: User, settings: AutoRecharge) -> None:
    """Switch on under the account's lock. A balance already below the threshold asks
    for a recharge now: no job may ever be charged again to ask for one."""
    account.auto_recharge_below = settings.threshold
    account.auto_recharge_wanted = account.credits_balance < settings.threshold
    settings.failures_in_a_row = 0
    settings.switched_off_because = None


def start_card_setup(user: User, success_url: str, cancel_url: str) -> str:
    """Open a setup-mode Checkout Session that saves a card for charges made without the
    customer; return its URL. `success_url` gets the session's id appended by Stripe.

    :raises PaymentProviderError: Stripe refused or could not be reached.
    """
    references = {"user_id": str(user.id), "purpose": "auto_recharge"}
    customer_id = stripe_customer(user)
    db.session.rollback()  # no transaction stays open while Stripe is called
    params = {
        "mode": "setup",
        "customer": customer_id,
        # Cards only: a recharge must be paid when it is made, not days later by a bank.
        "allowed_payment_method_types": ["card"],
        "metadata": references,
        "setup_intent_data": {"description": "Card for auto-recharge", "metadata": references},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    # A key of its own per session, kept through the library's retries. Two clicks make
    # two sessions, which is harmless: saving a card charges nothing, and the last card
    # saved is the one used.
    key = f"auto-recharge-card-{user.id}-{uuid.uuid4().hex}"
    session = gateway().create_checkout_session(params, key)
    _await_card(user.id, session.id)
    return session.url


@transactional
def _await_card(user_id: int, session_id: str) -> None:
    """Remember the setup session the customer is sent to: the one whose card counts."""
    locked(User, User.id == user_id)
    settings = db.session.get(AutoRecharge, user_id)
    if settings is None:
        raise NotFound("choose the settings before the card")
    settings.setup_session_id = session_id


def card_set_up(session_id: str, user_id: int | None = None) -> bool:
    """Keep the card a completed setup session saved, and switch auto-recharge on with
    it; return whether a new card was taken.

    Called from the return page (with the signed-in customer's id, which must match the
    session's) and from the webhook. Only the setup session the customer was last sent
    to counts, once: a late or repeated event cannot bring back an older card, nor switch
    on what the customer has since switched off.

    :raises PaymentProviderError: Stripe could not be asked; `NoSuchObject` when it has
        no such session.
    """
    db.session.rollback()  # no transaction stays open while Stripe is called
    session = gateway().retrieve_setup_session(session_id)
    metadata = session.get("metadata") or {}
    owner = metadata.get("user_id")
    owner = parse_id(owner) if isinstance(owner, str) else None
    intent = session.get("setup_intent")
    if (
        session.get("mode") != "setup"
        or metadata.get("purpose") != "auto_recharge"
        or owner is None
        or (user_id is not None and owner != user_id)
        or session.get("status") != "complete"
        or not isinstance(intent, dict)
        or intent.get("status") != "succeeded"
        or not isinstance(intent.get("payment_method"), dict)
    ):
        return False
    return _keep_card(owner, session_id, session.get("customer"), intent["payment_method"])


@transactional
def _keep_card(user_id: int, session_id: str, customer_id: str | None, method: dict) -> bool:
    account = locked(User, User.id == user_id)
    settings = db.session.get(AutoRecharge, user_id)
    if (
        account is None
        or account.status != AccountStatus.ACTIVE
        or settings is None
        or customer_id is None
        or account.stripe_customer_id != customer_id
        or settings.setup_session_id != session_id
    ):
        return False
    card = method.get("card") or {}
    settings.setup_session_id = None
    settings.payment_method_id = method["id"]
    settings.card_brand = card.get("brand")
    settings.card_last4 = card.get("last4")
    _switch_on(account, settings)
    return True


# -- the worker's round -------------------------------------------------------------


def run(now: datetime) -> int:
    """Start the recharges job charges asked for, follow up those left half done, and
    invoice paid ones; return how many purchases were acted on."""
    _resume_capped(now)
    done = 0
    wanted = db.session.scalars(
        select(User.id).where(User.auto_recharge_wanted.is_(True)).limit(BATCH)
    ).all()
    db.session.rollback()
    for user_id in wanted:
        purchase_id = _start(user_id, now)
        if purchase_id is not None:
            _safely(settle, purchase_id)
            done += 1
    for purchase_id, waiting_since in _unfinished(now):
        _safely(settle if waiting_since is None else _stop_waiting, purchase_id)
        done += 1
    for purchase_id in _uninvoiced(now):
        _safely(invoice, purchase_id)
        done += 1
    return done


def _safely(step, purchase_id: int) -> None:
    """Run one recharge's `step`; Stripe being away leaves it for the next round."""
    try:
        step(purchase_id)
    except PaymentProviderError as error:
        db.session.rollback()
        log.warning(
            "recharge %s: %s left for the next round: %s", purchase_id, step.__name__, error
        )


def _unfinished(now: datetime) -> list[tuple[int, datetime | None]]:
    """Pending recharges to follow up, with since when each waits for its cardholder:
    never charged (the worker stopped part way), charged but not settled, or waiting
    for the cardholder longer than WAIT_FOR_CUSTOMER."""
    rows = db.session.execute(
        select(Purchase.id, Purchase.needs_customer_since).where(
            Purchase.origin == PurchaseOrigin.AUTO_RECHARGE,
            Purchase.status == PurchaseStatus.PENDING,
            Purchase.created_at < now - timedelta(seconds=30),
            (Purchase.needs_customer_since.is_(None))
            | (Purchase.needs_customer_since < now - WAIT_FOR_CUSTOMER),
        )
    ).all()
    db.session.rollback()
    return [tuple(row) for row in rows]


def _uninvoiced(now: datetime) -> list[int]:
    """Paid recharges still without an invoice (Stripe was away when they were paid),
    for INVOICE_RETRIES_FOR."""
    ids = db.session.scalars(
        select(Purchase.id).where(
            Purchase.origin == PurchaseOrigin.AUTO_RECHARGE,
            Purchase.credited_at >= now - INVOICE_RETRIES_FOR,
            Purchase.stripe_invoice_id.is_(None),
        )
    ).all()
    db.session.rollback()
    return ids


def _resume_capped(now: datetime) -> None:
    """In a new month, ask again for the recharges the cap held back: their accounts may
    have too few credits left for any job to ask."""
    month = f"{company_date(now):%Y-%m}"
    held_back = db.session.scalars(
        select(User.id)
        .join(AutoRecharge, AutoRecharge.user_id == User.id)
        .where(
            AutoRecharge.cap_told_for.is_not(None),
            AutoRecharge.cap_told_for != month,
            User.auto_recharge_below.is_not(None),
            User.credits_balance < User.auto_recharge_below,
        )
        .limit(BATCH)
    ).all()
    db.session.rollback()
    for user_id in held_back:
        _ask_again(user_id)


@transactional
def _ask_again(user_id: int) -> None:
    account = locked(User, User.id == user_id)
    settings = db.session.get(AutoRecharge, user_id)
    settings.cap_told_for = None
    if account.auto_recharge_below is not None:
        account.auto_recharge_wanted = True


@transactional
def _start(user_id: int, now: datetime) -> int | None:
    """Take up the account's request for a recharge: record a pending recharge purchase
    if one is due, and return its id."""
    account = locked(User, User.id == user_id)
    if account is None or not account.auto_recharge_wanted:
        return None
    account.auto_recharge_wanted = False
    settings = db.session.get(AutoRecharge, user_id)
    if (
        account.status != AccountStatus.ACTIVE
        or account.auto_recharge_below is None
        or account.credits_balance >= account.auto_recharge_below
        or settings is None
        or not settings.payment_method_id
        or _in_flight(user_id)
    ):
        return None
    package = policy.PACKAGES_BY_CODE.get(settings.package_code)
    if package is None:
        log.error("auto-recharge of account %s names no package we sell", user_id)
        return None
    if spent_this_month(user_id, now) + package.price_cents > settings.monthly_cap_cents:
        _tell_cap_reached(account, settings, now)
        return None
    purchase = Purchase(
        user_id=user_id,
        origin=PurchaseOrigin.AUTO_RECHARGE,
        package_code=package.code,
        credits=package.credits,
        amount_cents=package.price_cents,
        currency=package.currency,
        # The card it is to be charged to, as the pages and e-mails name it until the
        # charge itself says how it was paid.
        payment_method_brand=settings.card_brand,
        payment_method_last4=settings.card_last4,
    )
    db.session.add(purchase)
    db.session.flush()
    return purchase.id


def _in_flight(user_id: int) -> bool:
    return (
        db.session.scalar(
            select(Purchase.id).where(
                Purchase.user_id == user_id,
                Purchase.origin == PurchaseOrigin.AUTO_RECHARGE,
                Purchase.status == PurchaseStatus.PENDING,
            )
        )
        is not None
    )


def spent_this_month(user_id: int, now: datetime) -> int:
    """What the recharges started this company-calendar month cost or may still cost:
    every one but those that did not go through (refunds do not give room back: the cap
    is on charges)."""
    start, _ = company_month(now)
    return db.session.scalar(
        select(func.coalesce(func.sum(Purchase.amount_cents), 0)).where(
            Purchase.user_id == user_id,
            Purchase.origin == PurchaseOrigin.AUTO_RECHARGE,
            Purchase.status.not_in([PurchaseStatus.FAILED, PurchaseStatus.EXPIRED]),
            Purchase.created_at >= start,
        )
    )


def _tell_cap_reached(account: User, settings: AutoRecharge, now: datetime) -> None:
    month = f"{company_date(now):%Y-%m}"
    if settings.cap_told_for == month:
        return
    settings.cap_told_for = month
    queue_email(
        account.email,
        "Auto-recharge paused until next month",
        f"Your balance is below {account.auto_recharge_below:,} credits, but another "
        f"{settings.package_code.capitalize()} package would take this month's auto-recharge "
        f"past the {format_cents(settings.monthly_cap_cents)} you set as its limit, so "
        "nothing was charged. On the 1st of next month "
        f"({policy.COMPANY_TIMEZONE_NAME} time) we recharge again if your balance is still "
        "below that.\n\n"
        f"You can buy credits yourself at any time, or raise the limit on {_settings_page()}",
    )


def _settings_page() -> str:
    page = external_url_or_none("billing.auto_recharge_settings")
    return f"the Auto-recharge page: {page}" if page else "the Auto-recharge page in the portal."


# -- charging and settling ------------------------------------------------------------


def _key(purchase: Purchase, step: str) -> str:
    # The creation time keeps keys apart if purchase ids restart against the same Stripe
    # account (a test database reset): Stripe refuses a key sent again with other values.
    return f"purchase-{purchase.id}-{purchase.created_at:%Y%m%dT%H%M%S%f}-{step}"


def settle(purchase_id: int) -> None:
    """Bring a pending recharge to where its payment stands, charging it if that is
    the step left: make the PaymentIntent if there is none, confirm it if it was made
    and never confirmed, else apply what Stripe says of it. The worker's only.

    :raises PaymentProviderError: Stripe could not be reached (nothing changed).
    """
    purchase = db.session.get(Purchase, purchase_id)
    if purchase is None or not purchase.is_recharge or purchase.status != PurchaseStatus.PENDING:
        db.session.rollback()
        return
    intent_id = purchase.stripe_payment_intent_id
    db.session.rollback()
    if intent_id is None:
        intent = _create_intent(purchase_id)
    else:
        intent = _current_intent(purchase_id, intent_id)
    if intent is not None and intent.get("status") == "requires_confirmation":
        intent = _confirm(purchase_id, intent["id"])
    if intent is not None:
        _apply(purchase_id, intent)


def refresh(purchase_id: int) -> None:
    """Apply what Stripe says of a recharge's payment now, without charging anything
    (for pages the customer opens).

    :raises PaymentProviderError: Stripe could not be reached.
    """
    purchase = db.session.get(Purchase, purchase_id)
    intent_id = purchase.stripe_payment_intent_id if purchase and purchase.is_recharge else None
    db.session.rollback()
    if intent_id is not None:
        intent = _current_intent(purchase_id, intent_id)
        if intent is not None:
            _apply(purchase_id, intent)


def _current_intent(purchase_id: int, intent_id: str) -> dict | None:
    """The recharge's PaymentIntent as Stripe has it; None when Stripe has no such
    PaymentIntent (then nothing was ever charged, and the recharge is cancelled)."""
    try:
        return gateway().retrieve_payment_intent(intent_id)
    except NoSuchObject:
        log.error(
            "recharge %s names PaymentIntent %s, which Stripe does not have", purchase_id, intent_id
        )
        _cancelled(purchase_id, tell=False)
        return None


def _create_intent(purchase_id: int) -> dict | None:
    """Make the recharge's PaymentIntent, unconfirmed, and record it on the purchase;
    None when Stripe refused it (nothing was charged: the recharge fails).

    :raises PaymentProviderError: Stripe could not be reached.
    """
    purchase = db.session.get(Purchase, purchase_id)
    settings = db.session.get(AutoRecharge, purchase.user_id)
    customer_id = purchase.user.stripe_customer_id
    payment_method = settings.payment_method_id if settings else None
    params = {
        "amount": purchase.amount_cents,
        "currency": purchase.currency,
        "customer": customer_id,
        "payment_method": payment_method,
        "description": f"Auto-recharge: {purchase.package_code.capitalize()} package, "
        f"{purchase.credits:,} credits",
        "metadata": {"purchase_id": str(purchase.id), "user_id": str(purchase.user_id)},
    }
    key = _key(purchase, "recharge")
    db.session.rollback()
    if not (customer_id and payment_method):
        _declined(purchase_id, "there is no card set up for auto-recharge")
        return None
    try:
        intent = gateway().create_payment_intent(params, key)
    except PaymentProviderError as error:
        if error.retryable:
            raise
        # An unconfirmed PaymentIntent charges nothing, and this one was not even made.
        if error.code == "resource_missing":
            _declined(purchase_id, "the card is no longer saved with our payment provider")
        else:
            log.error("Stripe refused recharge %s's PaymentIntent: %s", purchase_id, error)
            _cancelled(purchase_id, tell=False)
        return None
    _remember_intent(purchase_id, intent["id"])
    return intent


def _confirm(purchase_id: int, intent_id: str) -> dict:
    """Charge the recharge's PaymentIntent off-session, unless the recharge is no longer
    wanted (switched off, account closed): then cancel it. Stripe's answer either way.

    :raises PaymentProviderError: Stripe could not be reached.
    """
    if not _still_wanted(purchase_id):
        return _cancel_at_stripe(intent_id)
    purchase = db.session.get(Purchase, purchase_id)
    key = _key(purchase, "recharge-confirm")
    db.session.rollback()
    try:
        return gateway().confirm_off_session(intent_id, key)
    except PaymentProviderError as error:
        if error.retryable:
            raise
        # Refused in the state it is in (confirmed or cancelled meanwhile): that state
        # is the answer.
        return gateway().retrieve_payment_intent(intent_id)


def _still_wanted(purchase_id: int) -> bool:
    purchase = db.session.get(Purchase, purchase_id)
    account = purchase.user
    wanted = (
        purchase.status == PurchaseStatus.PENDING
        and account.status == AccountStatus.ACTIVE
        and is_on(account)
    )
    db.session.rollback()
    return wanted


def _cancel_at_stripe(intent_id: str) -> dict:
    intent = gateway().retrieve_payment_intent(intent_id)
    if intent.get("status") in CANCELABLE:
        intent = gateway().cancel_payment_intent(intent_id)
    return intent


CANCELABLE = frozenset({"requires_payment_method", "requires_action", "requires_confirmation"})


def _stop_waiting(purchase_id: int) -> None:
    """Cancel a recharge its cardholder did not confirm within WAIT_FOR_CUSTOMER, and say
    so."""
    purchase = db.session.get(Purchase, purchase_id)
    intent_id = purchase.stripe_payment_intent_id
    db.session.rollback()
    _apply(purchase_id, _cancel_at_stripe(intent_id), unconfirmed=True)


def _apply(purchase_id: int, intent: dict, unconfirmed: bool = False) -> None:
    """Act on a recharge's PaymentIntent as Stripe answered it (`unconfirmed`: cancelled
    because the cardholder never confirmed it)."""
    _remember_intent(purchase_id, intent["id"])
    status = intent.get("status")
    error = intent.get("last_payment_error") or {}
    if status == "succeeded":
        if fulfilment.fulfil_payment_intent(intent["id"]) == fulfilment.Fulfilment.CREDITED:
            _paid(purchase_id)
        _safely(invoice, purchase_id)
    elif status == "canceled":
        _cancelled(purchase_id, tell=unconfirmed)
    elif status == "requires_action" or error.get("code") in NEEDS_CUSTOMER:
        _needs_customer(purchase_id)
    elif status == "requires_payment_method" and error:
        _declined(purchase_id, _decline_words(error))
    # Processing, or made and not yet confirmed: the worker's next round, or Stripe's
    # event, takes it further.


@transactional
def _remember_intent(purchase_id: int, intent_id: str) -> None:
    purchase = lock_purchase(purchase_id)
    if purchase is not None and purchase.stripe_payment_intent_id is None:
        purchase.stripe_payment_intent_id = intent_id


DECLINE_WORDS = {
    "insufficient_funds": "the card has insufficient funds",
    "expired_card": "the card has expired",
    "lost_card": "the card was reported lost",
    "stolen_card": "the card was reported stolen",
    "card_velocity_exceeded": "the card is over its limit",
}


def _decline_words(error: dict) -> str:
    code = error.get("decline_code") or error.get("code") or ""
    return DECLINE_WORDS.get(code, "the card was declined")


@transactional
def _paid(purchase_id: int) -> None:
    """A recharge was just credited: declines are no longer in a row."""
    purchase = lock_purchase(purchase_id)
    locked(User, User.id == purchase.user_id)
    settings = db.session.get(AutoRecharge, purchase.user_id)
    if settings is not None:
        settings.failures_in_a_row = 0


@transactional
def _cancelled(purchase_id: int, tell: bool) -> None:
    """Fail a cancelled recharge; nobody declined anything, so it is not counted. `tell`:
    the customer did not ask for it (they never confirmed it), so say what happened."""
    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.status != PurchaseStatus.PENDING:
        return
    purchase.status = PurchaseStatus.FAILED
    purchase.needs_customer_since = None
    if not tell:
        return
    account = locked(User, User.id == purchase.user_id)
    queue_email(
        account.email,
        "Auto-recharge payment cancelled",
        f"The {format_cents(purchase.amount_cents, purchase.currency)} auto-recharge "
        f"payment your bank asked you to confirm was not confirmed within "
        f"{WAIT_FOR_CUSTOMER.days} days, so we cancelled it. Nothing was charged and no "
        "credits were added."
        + (
            " Auto-recharge is still on: the next job that leaves your balance below "
            f"{account.auto_recharge_below:,} credits starts another."
            if is_on(account)
            else ""
        ),
    )


@transactional
def _declined(purchase_id: int, why: str) -> None:
    """Fail a pending recharge the bank said no to (`why`, in words), counted towards
    switching auto-recharge off."""
    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.status != PurchaseStatus.PENDING:
        return
    purchase.status = PurchaseStatus.FAILED
    purchase.needs_customer_since = None
    account = locked(User, User.id == purchase.user_id)
    settings = db.session.get(AutoRecharge, purchase.user_id)
    settings.failures_in_a_row += 1
    tried = (
        f"We tried to charge {format_cents(purchase.amount_cents, purchase.currency)} to "
        f"{purchase.payment_method_words or 'your card'} for auto-recharge, and it did not "
        f"go through because {why}."
    )
    if not is_on(account):
        queue_email(
            account.email,
            "Auto-recharge could not charge your card",
            f"{tried} No credits were added and nothing was charged. Auto-recharge is off, "
            "so we will not try again.",
        )
        return
    if settings.failures_in_a_row >= FAILURES_BEFORE_OFF:
        account.auto_recharge_below = None
        account.auto_recharge_wanted = False
        settings.switched_off_because = (
            f"{FAILURES_BEFORE_OFF} recharges in a row did not go through (the last time, {why})."
        )
        queue_email(
            account.email,
            "Auto-recharge is off: your card was declined",
            f"{tried} That is {FAILURES_BEFORE_OFF} attempts in a row, so we have switched "
            "auto-recharge off: nothing more will be charged.\n\n"
            "Jobs are charged from your balance as usual; once it runs out, new jobs are "
            "refused until you buy credits. To switch auto-recharge on again, with this card "
            f"or another, go to {_settings_page()}",
        )
        return
    left = FAILURES_BEFORE_OFF - settings.failures_in_a_row
    queue_email(
        account.email,
        "Auto-recharge could not charge your card",
        f"{tried} No credits were added and nothing was charged.\n\n"
        "We will try again the next time a job leaves your balance below "
        f"{account.auto_recharge_below:,} credits. After {left} more "
        f"attempt{'s' if left != 1 else ''} that do{'' if left != 1 else 'es'} not go "
        f"through, auto-recharge switches itself off. To use another card, go to "
        f"{_settings_page()}",
    )


@transactional
def _needs_customer(purchase_id: int) -> None:
    """The bank wants the cardholder to confirm this recharge: wait for them, and tell
    them where to do it (once)."""
    purchase = lock_purchase(purchase_id)
    if (
        purchase is None
        or purchase.status != PurchaseStatus.PENDING
        or purchase.needs_customer_since is not None
    ):
        return
    purchase.needs_customer_since = utcnow()
    page = external_url_or_none("billing.confirm_recharge", purchase_id=purchase.id)
    amount = format_cents(purchase.amount_cents, purchase.currency)
    queue_email(
        purchase.user.email,
        "Please confirm your auto-recharge payment",
        f"Your balance fell below the amount you chose for auto-recharge, so we started a "
        f"payment of {amount} for the {purchase.package_code.capitalize()} package "
        f"({purchase.credits:,} credits). Your bank asks you to confirm it before it goes "
        "through; until you do, nothing is charged and no credits are added.\n\n"
        + (f"Confirm the payment: {page}" if page else "Confirm it under Purchases in the portal.")
        + f"\n\nIf it is not confirmed within {WAIT_FOR_CUSTOMER.days} days we cancel it.",
    )


# -- the cardholder confirming a recharge ------------------------------------------------


def waits_for_customer(purchase: Purchase) -> bool:
    """Whether the recharge waits for its cardholder to confirm it."""
    return (
        purchase.is_recharge
        and purchase.status == PurchaseStatus.PENDING
        and purchase.needs_customer_since is not None
        and purchase.stripe_payment_intent_id is not None
    )


def confirm_on_session(purchase: Purchase, return_url: str) -> str | None:
    """Confirm a waiting recharge with the customer present; return where to send them to
    authenticate with their bank, or None when there is nothing to confirm (any more:
    paid or cancelled in another tab) or Stripe settled it at once.

    :raises PaymentProviderError: Stripe could not be reached, or refused the card.
    """
    if not waits_for_customer(purchase):
        return None
    purchase_id, intent_id = purchase.id, purchase.stripe_payment_intent_id
    db.session.rollback()
    intent = gateway().retrieve_payment_intent(intent_id)
    if intent.get("status") == "requires_action":
        return _redirect_of(intent)
    if intent.get("status") not in ("requires_payment_method", "requires_confirmation"):
        _apply(purchase_id, intent)
        return None
    error = intent.get("last_payment_error") or {}
    method = intent.get("payment_method") or error.get("payment_method")
    method_id = method.get("id") if isinstance(method, dict) else method
    try:
        intent = gateway().confirm_payment_intent(intent_id, method_id, return_url)
    except PaymentProviderError:
        refresh(purchase_id)
        raise
    redirect = _redirect_of(intent)
    if redirect is None:
        _apply(purchase_id, intent)
    return redirect


def _redirect_of(intent: dict) -> str | None:
    action = intent.get("next_action") or {}
    if intent.get("status") == "requires_action" and action.get("type") == "redirect_to_url":
        return (action.get("redirect_to_url") or {}).get("url")
    return None


def cancel_waiting(purchase: Purchase) -> str | None:
    """The customer does not want the waiting recharge: cancel it at Stripe and fail it
    (not counted as a decline). Return the PaymentIntent's status afterwards
    ("canceled"; "succeeded" if it was paid in another tab meanwhile), or None when
    nothing waited.

    :raises PaymentProviderError: Stripe could not be reached.
    """
    if not waits_for_customer(purchase):
        return None
    purchase_id, intent_id = purchase.id, purchase.stripe_payment_intent_id
    db.session.rollback()
    intent = _cancel_at_stripe(intent_id)
    _apply(purchase_id, intent)
    return intent.get("status")


# -- invoices -------------------------------------------------------------------------


def invoice(purchase_id: int) -> None:
    """Give a paid recharge its numbered invoice, paid by the recharge's own payment.

    :raises PaymentProviderError: Stripe could not be reached; the next round resumes.
    """
    purchase = db.session.get(Purchase, purchase_id)
    if purchase is None or purchase.credited_at is None or purchase.stripe_invoice_id:
        db.session.rollback()
        return
    references = {"purchase_id": str(purchase.id), "user_id": str(purchase.user_id)}
    line = {
        "amount": purchase.amount_cents,
        "currency": purchase.currency,
        "description": f"{purchase.history_memo}: {purchase.credits:,} credits",
    }
    customer_id, intent_id = purchase.user.stripe_customer_id, purchase.stripe_payment_intent_id
    key = _key(purchase, "invoice")
    db.session.rollback()
    paid = gateway().invoice_payment(customer_id, intent_id, line, references, key)
    _record_invoice(purchase_id, paid)


@transactional
def _record_invoice(purchase_id: int, paid: dict) -> None:
    purchase = lock_purchase(purchase_id)
    if purchase is None or purchase.stripe_invoice_id:
        return
    purchase.stripe_invoice_id = paid["id"]
    purchase.invoice_number = paid.get("number")
    purchase.invoice_url = paid.get("hosted_invoice_url")
    purchase.invoice_pdf_url = paid.get("invoice_pdf")


# -- Stripe's events -------------------------------------------------------------------


def payment_intent_changed(intent: dict) -> bool | None:
    """Apply an event's PaymentIntent to the recharge it is for, as Stripe has it now;
    None when it is not a recharge's (a Checkout purchase's is followed through its
    session), False when it is not the payment of the recharge its metadata names.

    An event never charges anything: it is news about a payment, and may arrive before
    the worker has written Stripe's answer down.

    :raises PaymentProviderError: Stripe could not be asked.
    """
    purchase_id = purchase_id_of(intent)
    purchase = db.session.get(Purchase, purchase_id) if purchase_id is not None else None
    if purchase is None or not purchase.is_recharge:
        db.session.rollback()
        return None
    recorded = purchase.stripe_payment_intent_id
    db.session.rollback()
    if recorded not in (None, intent["id"]):
        return False
    fresh = gateway().retrieve_payment_intent(intent["id"])
    if purchase_id_of(fresh) != purchase_id:
        return False
    _apply(purchase_id, fresh)
    return True
