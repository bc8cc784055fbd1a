"""Auto-recharge as histories against the sandbox: the card set up through the pages (or
only the webhook), recharges charged off-session and credited once however the news
arrives, declines counted until it switches itself off, the cardholder confirming or
refusing on-session, invoices, and a recharge refunded like any purchase."""

from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from portal.accounts.models import User
from portal.billing import auto_recharge, fulfilment
from portal.billing.gateway import gateway
from portal.billing.models import AutoRecharge, Purchase, PurchaseStatus
from portal.db import db
from portal.jobs import services as jobs
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind
from portal.sandbox.store import (
    CARD_AUTHENTICATES,
    CARD_CHARGES_FAIL,
    CARD_INSUFFICIENT_FUNDS,
    CARD_SUCCEEDS,
)
from portal.timeutil import utcnow
from tests.billing.helpers import (
    authenticate_on_page,
    balance,
    deliver,
    emails_to,
    entries,
    events_for,
    pay_on_page,
    recharges_of,
    sandbox,
)
from tests.factories import csrf_token

_jobs_run = iter(range(1_000_000))


# -- switching on, through the pages ---------------------------------------------------


def choose(client, threshold="50", package="pro", monthly_cap="100"):
    form = {"threshold": threshold, "package": package, "monthly_cap": monthly_cap}
    form["csrf_token"] = csrf_token(client, "/account/auto-recharge")
    return client.post("/account/auto-recharge", data=form)


def setup_session_of(response) -> str:
    assert response.status_code == 303, response.get_data(as_text=True)
    path = urlsplit(response.headers["Location"]).path
    assert path.startswith("/sandbox/checkout/cs_"), path
    return path.rsplit("/", 1)[1]


def switch_on(client, customer: User, card: str = CARD_SUCCEEDS, **settings) -> str:
    """Choose settings, save `card` on the sandbox's page and come back; the session id."""
    session_id = setup_session_of(choose(client, **settings))
    saved = pay_on_page(client, session_id, card)
    assert saved.status_code == 303, saved.get_data(as_text=True)
    back = client.get(saved.headers["Location"])
    assert back.status_code == 303
    assert back.headers["Location"].endswith("/account/auto-recharge")
    return session_id


def settings_of(user: User) -> AutoRecharge:
    db.session.expire_all()
    return db.session.get(AutoRecharge, user.id)


def account(user: User) -> User:
    db.session.expire_all()
    return db.session.get(User, user.id)


@pytest.fixture
def funded(customer) -> User:
    ledger.grant(customer.id, 100, f"grant:{customer.id}:setup", "setup")
    db.session.commit()
    return customer


def spend(user: User, credits: int):
    return jobs.charge_job(f"job-{next(_jobs_run)}", user.email, "upscale", credits)


def run_worker(at=None) -> int:
    done = auto_recharge.run(at or utcnow())
    db.session.expire_all()
    return done


def intent_params(user: User, purchase_id: int) -> dict:
    """The $20 PaymentIntent on the customer's auto-recharge card naming `purchase_id`,
    as the worker makes it."""
    return {
        "amount": 2000,
        "currency": "usd",
        "customer": account(user).stripe_customer_id,
        "payment_method": settings_of(user).payment_method_id,
        "description": "Auto-recharge: Pro package, 300 credits",
        "metadata": {"purchase_id": str(purchase_id), "user_id": str(user.id)},
    }


def worker_key(purchase_id: int, step: str) -> str:
    purchase = db.session.get(Purchase, purchase_id)
    key = f"purchase-{purchase.id}-{purchase.created_at:%Y%m%dT%H%M%S%f}-{step}"
    db.session.rollback()
    return key


def subjects(user: User) -> list[str]:
    return [email.subject for email in emails_to(user.email)]


def intents_at_stripe(user: User) -> int:
    """How many PaymentIntents Stripe holds for the customer."""
    customer_id = account(user).stripe_customer_id
    store = sandbox()
    with store.lock:
        return sum(
            1
            for intent in store.payment_intents.values()
            # Checkout's PaymentIntents of earlier tests may have no customer.
            if intent.get("customer") == customer_id
        )


def test_settings_then_a_saved_card_switch_it_on(client, funded):
    page = client.get("/account/auto-recharge").get_data(as_text=True)
    assert "Continue to save a card" in page

    switch_on(client, funded, threshold="50", package="basic", monthly_cap="30")

    assert account(funded).auto_recharge_below == 50
    settings = settings_of(funded)
    assert (settings.package_code, settings.monthly_cap_cents, settings.card_words) == (
        "basic",
        3_000,
        "Visa ending in 4242",
    )
    page = client.get("/account/auto-recharge").get_data(as_text=True)
    assert "Card saved: auto-recharge is on." in page
    assert "we buy the" in page and "Visa ending in 4242" in page


def test_the_webhook_alone_switches_it_on_and_a_replay_changes_nothing(client, funded):
    session_id = setup_session_of(choose(client))
    pay_on_page(client, session_id, CARD_SUCCEEDS)  # the customer closes the tab here
    [completed] = events_for("checkout.session.completed", id=session_id)
    deliver(client, completed)
    assert account(funded).auto_recharge_below == 50

    # Switched off since; the same event delivered again must not switch it back on.
    auto_recharge.switch_off(funded.id)
    completed["id"] += "_again"
    deliver(client, completed)
    assert account(funded).auto_recharge_below is None


def test_another_customers_setup_session_is_not_taken(client, funded):
    from tests.factories import make_user

    session_id = setup_session_of(choose(client))
    pay_on_page(client, session_id, CARD_SUCCEEDS)
    other = make_user()
    assert auto_recharge.card_set_up(session_id, user_id=other.id) is False
    assert db.session.get(AutoRecharge, other.id) is None


def test_bad_settings_re_render_with_field_errors_and_change_nothing(client, funded):
    refused = choose(client, threshold="1e3", monthly_cap="5")
    page = refused.get_data(as_text=True)
    assert refused.status_code == 400
    assert "Write a whole number of credits, like 100." in page
    assert "At least $20.00, the price of one Pro package." in page
    assert settings_of(funded) is None


# -- recharges charged and credited once ------------------------------------------------


def test_a_spend_below_the_threshold_is_recharged_once_with_an_invoice(client, funded):
    switch_on(client, funded, threshold="50", package="pro")
    spend(funded, 60)
    assert run_worker() == 1

    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.CREDITED
    assert balance(funded.id) == 40 + 300
    assert recharge.payment_method_words == "Visa ending in 4242"
    assert recharge.invoice_number and recharge.invoice_url and recharge.invoice_pdf_url
    [credit] = entries(funded.id, EntryKind.PURCHASE_CREDIT)
    assert credit.memo == "Pro package, auto-recharge"
    assert "Auto-recharge added 300 credits" in subjects(funded)
    assert db.session.get(AutoRecharge, funded.id).failures_in_a_row == 0

    # Stripe's events arriving afterwards, and more worker rounds, change nothing.
    for event in events_for("payment_intent.succeeded", id=recharge.stripe_payment_intent_id):
        deliver(client, event)
    run_worker()
    assert balance(funded.id) == 340
    assert len(recharges_of(funded.id)) == 1
    assert intents_at_stripe(funded) == 1

    receipt = client.get(f"/purchases/{recharge.id}").get_data(as_text=True)
    assert "Pro package, auto-recharge" in receipt
    assert "View invoice" in receipt


def test_a_worker_that_stopped_before_recording_the_payment_intent_charges_once(client, funded):
    switch_on(client, funded, threshold="50")
    spend(funded, 60)
    purchase_id = auto_recharge._start(funded.id, utcnow())
    # Stripe made the PaymentIntent, but the worker died before it wrote the id down.
    params = intent_params(funded, purchase_id)
    made = gateway().create_payment_intent(params, worker_key(purchase_id, "recharge"))

    # The next round finds the recharge unfinished and makes it again with the same key:
    # Stripe answers with the same PaymentIntent, which is then charged once.
    run_worker(utcnow() + timedelta(minutes=1))

    [recharge] = recharges_of(funded.id)
    assert recharge.stripe_payment_intent_id == made["id"]
    assert recharge.status == PurchaseStatus.CREDITED
    assert balance(funded.id) == 340
    assert intents_at_stripe(funded) == 1


def test_a_worker_that_stopped_after_charging_finds_the_payment_by_asking_stripe(client, funded):
    switch_on(client, funded, threshold="50")
    spend(funded, 60)
    purchase_id = auto_recharge._start(funded.id, utcnow())
    intent = auto_recharge._create_intent(purchase_id)
    # Charged at Stripe; the worker died before it read the answer.
    gateway().confirm_off_session(intent["id"], worker_key(purchase_id, "recharge-confirm"))

    run_worker(utcnow() + timedelta(minutes=1))

    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.CREDITED
    assert balance(funded.id) == 340
    assert intents_at_stripe(funded) == 1


@pytest.mark.parametrize("how", ["switched off", "account terminated"])
def test_a_recharge_no_longer_wanted_before_it_is_charged_is_cancelled(client, funded, how):
    switch_on(client, funded, threshold="50")
    spend(funded, 60)
    purchase_id = auto_recharge._start(funded.id, utcnow())
    intent = auto_recharge._create_intent(purchase_id)
    # The worker stopped here (or Stripe was away); meanwhile the customer switched off.
    if how == "switched off":
        auto_recharge.switch_off(funded.id)
    else:
        from portal.accounts.services import terminate_account

        terminate_account(account(funded), "breach of the terms")
        db.session.commit()

    run_worker(utcnow() + timedelta(minutes=1))

    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.FAILED
    assert balance(funded.id) == 40
    store = sandbox()
    with store.lock:
        assert store.payment_intents[intent["id"]]["status"] == "canceled"
    assert settings_of(funded).failures_in_a_row == 0


def test_the_success_webhook_alone_credits_the_recharge(client, funded, inline_webhooks):
    """With webhooks delivered as Stripe sends them, the charge's own event may credit
    the recharge before the worker reads the answer: still once."""
    switch_on(client, funded, threshold="50")
    spend(funded, 60)
    run_worker()
    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.CREDITED
    assert balance(funded.id) == 340
    assert fulfilment.fulfil_purchase(recharge) == fulfilment.Fulfilment.ALREADY_CREDITED


# -- declines ------------------------------------------------------------------------------


@pytest.mark.parametrize("card", [CARD_CHARGES_FAIL, CARD_INSUFFICIENT_FUNDS])
def test_three_declines_in_a_row_switch_it_off_and_say_so(client, funded, card):
    if card == CARD_INSUFFICIENT_FUNDS:
        # A card declined already when saved cannot be set up: that is the sandbox's (and
        # Stripe's) answer; the card that saves and then declines is the one to test with.
        session_id = setup_session_of(choose(client))
        pay_on_page(client, session_id, card)
        assert account(funded).auto_recharge_below is None
        return
    switch_on(client, funded, card, threshold="90")
    spend(funded, 20)
    run_worker()
    spend(funded, 1)
    run_worker()
    assert [r.status for r in recharges_of(funded.id)] == [PurchaseStatus.FAILED] * 2
    assert subjects(funded).count("Auto-recharge could not charge your card") == 2
    assert account(funded).auto_recharge_below == 90

    spend(funded, 1)
    run_worker()
    assert [r.status for r in recharges_of(funded.id)] == [PurchaseStatus.FAILED] * 3
    assert account(funded).auto_recharge_below is None
    assert "Auto-recharge is off: your card was declined" in subjects(funded)
    assert "3 recharges in a row" in settings_of(funded).switched_off_because
    assert balance(funded.id) == 78

    # Off means off: more spending asks for nothing.
    spend(funded, 1)
    assert account(funded).auto_recharge_wanted is False
    run_worker()
    assert len(recharges_of(funded.id)) == 3
    page = client.get("/account/auto-recharge").get_data(as_text=True)
    assert "Auto-recharge switched itself off" in page


def test_a_paid_recharge_clears_earlier_declines(client, funded):
    switch_on(client, funded, threshold="50")
    settings = settings_of(funded)
    settings.failures_in_a_row = 2
    db.session.commit()
    spend(funded, 60)
    run_worker()
    assert settings_of(funded).failures_in_a_row == 0


def test_a_card_removed_at_stripe_fails_the_recharge_as_a_decline(client, funded):
    switch_on(client, funded, threshold="50")
    settings = settings_of(funded)
    settings.payment_method_id = "pm_removed_in_the_billing_portal"
    db.session.commit()
    spend(funded, 60)
    run_worker()
    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.FAILED
    assert settings_of(funded).failures_in_a_row == 1
    [told] = [e for e in emails_to(funded.email) if "could not charge" in e.subject]
    assert "no longer saved with our payment provider" in told.body_text


# -- the cardholder confirming ---------------------------------------------------------------


def waiting_recharge(client, customer, **webhooks) -> Purchase:
    switch_on(client, customer, CARD_AUTHENTICATES, threshold="50")
    spend(customer, 60)
    run_worker()
    [recharge] = recharges_of(customer.id)
    return recharge


def test_a_bank_asking_for_the_cardholder_waits_for_them_to_confirm(
    client, funded, inline_webhooks
):
    # Webhooks inline: the off-session attempt's payment_intent.payment_failed event must
    # not fail a recharge the customer can still confirm.
    recharge = waiting_recharge(client, funded)
    assert recharge.status == PurchaseStatus.PENDING
    assert recharge.needs_customer_since is not None
    [asked] = [e for e in emails_to(funded.email) if e.subject.startswith("Please confirm")]
    assert f"/purchases/{recharge.id}/confirm" in asked.body_text
    assert settings_of(funded).failures_in_a_row == 0
    # The worker leaves it waiting, and starts no other recharge meanwhile.
    spend(funded, 1)
    run_worker(utcnow() + timedelta(minutes=5))
    assert [r.status for r in recharges_of(funded.id)] == [PurchaseStatus.PENDING]

    page = client.get(f"/purchases/{recharge.id}/confirm")
    assert page.status_code == 200
    assert "Confirm with my bank" in page.get_data(as_text=True)
    token = csrf_token(client, f"/purchases/{recharge.id}/confirm")
    to_bank = client.post(f"/purchases/{recharge.id}/confirm", data={"csrf_token": token})
    assert to_bank.status_code == 303
    assert (
        f"/sandbox/authenticate/{recharge.stripe_payment_intent_id}" in to_bank.headers["Location"]
    )

    back = authenticate_on_page(client, recharge.stripe_payment_intent_id, "complete")
    assert f"/purchases/{recharge.id}/confirmed" in back.headers["Location"]
    client.get(back.headers["Location"])

    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.CREDITED
    assert recharge.needs_customer_since is None
    assert recharge.invoice_number
    assert balance(funded.id) == 39 + 300


def test_a_failed_authentication_leaves_it_waiting_to_try_again(client, funded):
    recharge = waiting_recharge(client, funded)
    token = csrf_token(client, f"/purchases/{recharge.id}/confirm")
    client.post(f"/purchases/{recharge.id}/confirm", data={"csrf_token": token})
    back = authenticate_on_page(client, recharge.stripe_payment_intent_id, "fail")
    client.get(back.headers["Location"])
    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.PENDING
    assert client.get(f"/purchases/{recharge.id}/confirm").status_code == 200


def test_dont_pay_cancels_it_without_counting_a_decline(client, funded):
    recharge = waiting_recharge(client, funded)
    token = csrf_token(client, f"/purchases/{recharge.id}/confirm")
    client.post(f"/purchases/{recharge.id}/confirm/cancel", data={"csrf_token": token})
    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.FAILED
    assert settings_of(funded).failures_in_a_row == 0
    assert balance(funded.id) == 40
    # Nothing waits any more: the confirm page sends the customer to the purchase.
    assert client.get(f"/purchases/{recharge.id}/confirm").status_code == 303


def test_a_recharge_never_confirmed_is_cancelled_after_the_wait(client, funded):
    recharge = waiting_recharge(client, funded)
    run_worker(utcnow() + auto_recharge.WAIT_FOR_CUSTOMER + timedelta(minutes=1))
    [recharge] = recharges_of(funded.id)
    assert recharge.status == PurchaseStatus.FAILED
    store = sandbox()
    with store.lock:
        assert store.payment_intents[recharge.stripe_payment_intent_id]["status"] == "canceled"
    assert "Auto-recharge payment cancelled" in subjects(funded)


# -- a recharge is a purchase like any other --------------------------------------------


def test_a_recharge_can_be_refunded_like_any_purchase(client, funded):
    from portal.refunds import services as refunds
    from portal.refunds.models import RequestReason

    switch_on(client, funded, threshold="50")
    spend(funded, 60)
    run_worker()
    [recharge] = recharges_of(funded.id)
    request = refunds.file_request(
        account(funded),
        recharge,
        RequestReason.OTHER,
        "Auto-recharge bought more than I needed this month.",
        "",
        None,
        False,
        [],
        utcnow(),
    )
    assert request.purchase_id == recharge.id
    # Every credit of the recharge is unused (jobs spend the oldest credits first), so the
    # pre-check weighs the whole $20.00, as for any purchase.
    assert 0 <= request.recommended_cents <= recharge.amount_cents
    assert request.recommended_credits == 300


def test_an_event_about_another_payment_naming_the_recharge_changes_nothing(client, funded):
    switch_on(client, funded, threshold="50")
    spend(funded, 60)
    run_worker()
    [recharge] = recharges_of(funded.id)
    # A second payment whose metadata names the same purchase (made outside the portal).
    other = gateway().create_payment_intent(
        intent_params(funded, recharge.id), "made-elsewhere-" + recharge.stripe_payment_intent_id
    )
    other = gateway().confirm_off_session(other["id"], "made-elsewhere-confirm")
    [event] = events_for("payment_intent.succeeded", id=other["id"])
    answer = deliver(client, event)
    assert answer.get_json()["outcome"] == "False"
    assert balance(funded.id) == 340
    assert recharges_of(funded.id)[0].stripe_payment_intent_id == recharge.stripe_payment_intent_id


def test_a_late_setup_event_brings_back_no_old_card_and_does_not_switch_on(client, funded):
    first = switch_on(client, funded, threshold="50")
    [first_event] = events_for("checkout.session.completed", id=first)
    session_id = setup_session_of(
        client.post(
            "/account/auto-recharge/card",
            data={"csrf_token": csrf_token(client, "/account/auto-recharge")},
        )
    )
    back = pay_on_page(client, session_id, CARD_AUTHENTICATES)
    client.get(back.headers["Location"])
    assert settings_of(funded).card_last4 == "3184"

    # The first card's event, delivered late, changes nothing.
    deliver(client, first_event)
    assert settings_of(funded).card_last4 == "3184"

    # Switched off since: the second card's own event does not switch it back on.
    auto_recharge.switch_off(funded.id)
    [second_event] = events_for("checkout.session.completed", id=session_id)
    deliver(client, second_event)
    assert account(funded).auto_recharge_below is None


def test_switching_on_below_the_threshold_recharges_without_waiting_for_a_job(client, funded):
    # 100 credits, and a threshold above them: no job need run to ask for a recharge.
    switch_on(client, funded, threshold="150", package="basic")
    assert account(funded).auto_recharge_wanted is True
    run_worker()
    assert balance(funded.id) == 220


def test_a_month_held_back_by_the_cap_recharges_when_the_next_one_starts(client, funded):
    switch_on(client, funded, threshold="50", package="pro", monthly_cap="20")
    spend(funded, 60)
    run_worker()
    spend(funded, 30)  # 10 + 300 - ... stays above: spend it down below again
    spend(funded, 290)
    run_worker()
    assert len(recharges_of(funded.id)) == 1
    assert "Auto-recharge paused until next month" in subjects(funded)
    # Too few credits for the platform's jobs now; next month the worker asks itself.
    run_worker(utcnow() + timedelta(days=32))
    assert len(recharges_of(funded.id)) == 2


def test_dont_pay_after_paying_in_another_tab_says_it_was_paid(client, funded):
    recharge = waiting_recharge(client, funded)
    token = csrf_token(client, f"/purchases/{recharge.id}/confirm")
    client.post(f"/purchases/{recharge.id}/confirm", data={"csrf_token": token})
    # The other tab: the bank's page completed.
    authenticate_on_page(client, recharge.stripe_payment_intent_id, "complete")
    answer = client.post(
        f"/purchases/{recharge.id}/confirm/cancel",
        data={"csrf_token": token},
        follow_redirects=True,
    )
    page = answer.get_data(as_text=True)
    assert "already confirmed, so it was not cancelled" in page
    assert recharges_of(funded.id)[0].status == PurchaseStatus.CREDITED


def test_closing_the_account_forgets_auto_recharge(client, funded):
    from portal.datarights import close_account

    switch_on(client, funded, threshold="50")
    close_account(account(funded), utcnow(), None, None)
    db.session.commit()
    assert settings_of(funded) is None
    assert account(funded).auto_recharge_below is None
