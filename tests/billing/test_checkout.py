"""Buying credits through Checkout, from the Buy page to the credits in the balance."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from portal import policy
from portal.accounts.models import AccountStatus, User
from portal.billing.models import Purchase, PurchaseStatus
from portal.db import db
from portal.jobs.services import charge_job
from portal.ledger.models import EntryKind, LedgerEntry
from portal.sandbox.store import CARD_DECLINED, CARD_REFUND_FAILS, CARD_SUCCEEDS, DELAYED_METHOD
from portal.timeutil import utcnow
from tests.billing.helpers import (
    balance,
    buy,
    emails_to,
    entries,
    events_for,
    lot_count,
    pay_on_page,
    plain,
    post_buy,
    purchase_of_session,
    purchases_of,
    sandbox,
    session_at_stripe,
    session_id_of,
    settle_delayed,
)
from tests.factories import csrf_token, login_as, make_purchase, make_user, spend_history

FORM = re.compile(r'<form method="post" action="/credits/buy"[^>]*>(.*?)</form>', re.S)
CSRF_FIELD = re.compile(r'name="csrf_token" type="hidden" value="[^"]+"')
PACKAGE_FIELD = re.compile(r'name="package" value="([^"]+)"')


def success_page(client, response):
    """Follow the sandbox's redirect back to the portal's success page."""
    assert response.status_code == 303, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith("http://portal.test/credits/success?session_id=cs_"), location
    return client.get(location)


# -- the Buy page -----------------------------------------------------------------------


def test_buy_page_lists_the_four_packages_in_one_csrf_form(client, customer):
    """One form: each package's button sends its package, and the one "save my card"
    box goes with whichever is pressed."""
    response = client.get("/credits/buy")

    assert response.status_code == 200
    [form] = FORM.findall(response.get_data(as_text=True))
    assert PACKAGE_FIELD.findall(form) == ["starter", "basic", "pro", "premium"]
    assert CSRF_FIELD.search(form)
    assert 'name="save_card"' in form
    text = plain(response)
    assert "Starter $5.00 USD 50 credits 10¢ per credit" in text
    assert "Basic $10.00 USD 120 credits 8.3¢ per credit · save 17%" in text
    assert "Pro $20.00 USD 300 credits 6.7¢ per credit · save 33%" in text
    assert "Premium Best value $50.00 USD 1,000 credits 5¢ per credit · save 50%" in text
    assert text.count("Best value") == 1
    assert "credits never expire" in text
    assert "jobs at your recent average" not in text  # no jobs yet: no guess


def test_the_buy_page_says_how_many_jobs_each_package_pays_for(client, customer):
    """At the customer's own average job of the last 30 days; older jobs do not count."""
    make_purchase(customer, "premium")
    charge_job("old-job", customer.email, "upscale", 100)
    db.session.execute(
        update(LedgerEntry).values(created_at=utcnow() - timedelta(days=31))
    )  # the purchase and the old job: before the last 30 days
    db.session.commit()
    spend_history(customer, jobs=10, credits=4)

    text = plain(client.get("/credits/buy"))

    # 10 jobs for 40 credits: 4 credits a job.
    assert (
        "Starter $5.00 USD 50 credits 10¢ per credit About 12 jobs at your recent average" in text
    )
    assert "About 250 jobs at your recent average" in text  # Premium: 1,000 / 4
    assert "Your last 30 days: 10 jobs for 40 credits." in text


def test_buy_creates_a_pending_purchase_and_redirects_to_its_checkout(client, customer):
    response = post_buy(client, "pro")

    session_id = session_id_of(response)
    [purchase] = purchases_of(customer.id)
    assert purchase.status == PurchaseStatus.PENDING
    assert purchase.stripe_checkout_session_id == session_id
    assert (purchase.package_code, purchase.credits) == ("pro", 300)
    assert (purchase.amount_cents, purchase.currency) == (2_000, "usd")
    assert purchase.paid_at is None and purchase.credited_at is None
    assert balance(customer.id) == 0
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    assert "Pay $20.00" in plain(page)


def test_checkout_session_carries_amount_references_customer_and_invoice(client, customer):
    session_id = buy(client, "premium")

    [purchase] = purchases_of(customer.id)
    session = session_at_stripe(session_id)
    references = {"purchase_id": str(purchase.id), "user_id": str(customer.id)}
    assert session["status"] == "open"
    assert session["amount_total"] == 5_000
    assert session["currency"] == "usd"
    assert session["client_reference_id"] == str(purchase.id)
    assert session["metadata"] == references
    assert session["payment_intent_data"] == {"metadata": references}
    # The account's Stripe Customer, made for this first checkout.
    customer_id = stripe_customer_of(customer.id)
    assert customer_id and session["customer"] == customer_id
    with sandbox().lock:
        at_stripe = dict(sandbox().customers[customer_id])
    assert at_stripe["email"] == customer.email
    assert at_stripe["metadata"] == {"user_id": str(customer.id)}
    assert session["invoice_creation"] == {
        "enabled": True,
        "invoice_data": {"description": "Premium package: 1,000 credits", "metadata": references},
    }
    assert session["saved_payment_method_options"]["payment_method_save"] == "enabled"
    assert session["success_url"] == (
        "http://portal.test/credits/success?session_id={CHECKOUT_SESSION_ID}"
    )
    assert session["cancel_url"] == "http://portal.test/credits/cancel"
    with sandbox().lock:
        [item] = sandbox().line_items[session_id]
    assert item["amount_total"] == 5_000 and item["quantity"] == 1
    assert "1,000 credits" in item["description"]


@pytest.mark.parametrize("package", ["", "platinum", "PRO", "pro "])
def test_unknown_package_is_refused_with_a_message_and_nothing_is_created(
    client, customer, package
):
    response = post_buy(client, package)

    assert response.status_code == 400
    assert "That package does not exist" in plain(response)
    assert purchases_of(customer.id) == []


def test_buy_without_csrf_token_is_refused(client, customer):
    response = post_buy(client, "pro", with_csrf=False)

    assert response.status_code == 400
    assert purchases_of(customer.id) == []


def test_double_click_reuses_the_pending_purchase_and_the_same_checkout_session(
    client, customer, inline_webhooks
):
    first = buy(client, "pro")
    second = buy(client, "pro")

    assert first == second
    [purchase] = purchases_of(customer.id)
    assert purchase.stripe_checkout_session_id == first
    # Paying the one session, then trying to pay "the other", charges once.
    pay_on_page(client, first)
    again = pay_on_page(client, second)
    assert again.headers["Location"] == f"/sandbox/checkout/{first}"
    assert len(events_for("checkout.session.completed", id=first)) == 1
    assert balance(customer.id) == 300
    assert len(entries(customer.id, EntryKind.PURCHASE_CREDIT)) == 1


def test_buying_another_package_starts_a_separate_purchase(client, customer):
    pro = buy(client, "pro")
    starter = buy(client, "starter")

    assert pro != starter
    assert [p.package_code for p in purchases_of(customer.id)] == ["pro", "starter"]


def test_terminated_account_cannot_buy(client):
    user = make_user(status=AccountStatus.TERMINATED)
    login_as(client, user)

    page = client.get("/credits/buy")
    assert "cannot buy credits" in plain(page)
    assert FORM.findall(page.get_data(as_text=True)) == []
    response = client.post(
        "/credits/buy", data={"package": "pro", "csrf_token": csrf_token(client, "/credits/buy")}
    )

    assert response.status_code == 403
    assert purchases_of(user.id) == []


def test_payment_provider_outage_keeps_the_purchase_pending_and_a_retry_reuses_it(client, customer):
    store = sandbox()
    with store.lock:
        store.failures_to_inject = 5

    response = post_buy(client, "pro")

    assert response.status_code == 400
    assert "could not reach our payment provider" in plain(response)
    [purchase] = purchases_of(customer.id)
    assert purchase.status == PurchaseStatus.PENDING
    assert purchase.stripe_checkout_session_id is None
    assert purchase.paid_at is None
    with store.lock:
        store.failures_to_inject = 0

    session_id = buy(client, "pro")

    [retried] = purchases_of(customer.id)
    assert retried.id == purchase.id
    assert retried.stripe_checkout_session_id == session_id
    assert session_at_stripe(session_id)["client_reference_id"] == str(purchase.id)


# -- paying -----------------------------------------------------------------------------


def test_paying_pro_adds_300_credits_and_the_books_balance(app, client, customer, inline_webhooks):
    session_id = buy(client, "pro")

    page = success_page(client, pay_on_page(client, session_id, CARD_SUCCEEDS))

    assert page.status_code == 200
    text = plain(page)
    assert "Credits added" in text
    assert "Your balance is now 300 credits" in text
    assert balance(customer.id) == 300
    purchase = purchase_of_session(session_id)
    assert purchase.status == PurchaseStatus.CREDITED
    assert purchase.paid_at is not None and purchase.credited_at is not None
    assert purchase.stripe_payment_intent_id == session_at_stripe(session_id)["payment_intent"]
    assert purchase.stripe_charge_id and purchase.receipt_url
    [entry] = entries(customer.id)
    assert (entry.kind, entry.credits, entry.balance_after) == (EntryKind.PURCHASE_CREDIT, 300, 300)
    assert lot_count(customer.id) == 1
    [mail] = emails_to(customer.email)
    assert mail.subject == "300 credits added to your account"
    result = app.test_cli_runner().invoke(args=["ledger-check"])
    assert result.exit_code == 0, result.output
    assert "Ledger OK" in result.output


def test_crediting_asks_stripe_once_for_the_session_its_payment_and_charge(
    app, client, customer, inline_webhooks
):
    from flask import request, request_started

    session_id = buy(client, "basic")
    page = pay_on_page(client, session_id, CARD_SUCCEEDS)
    asked_stripe = []

    def note_stripe_call(sender, **extra):
        if request.path.startswith("/sandbox/v1/"):
            asked_stripe.append(f"{request.method} {request.path}")

    # The sandbox is Stripe here: every call the portal makes to Stripe is a request to it.
    with request_started.connected_to(note_stripe_call, app):
        success_page(client, page)

    assert asked_stripe == [f"GET /sandbox/v1/checkout/sessions/{session_id}"]
    purchase = purchase_of_session(session_id)
    assert purchase.status == PurchaseStatus.CREDITED
    assert purchase.stripe_payment_intent_id == session_at_stripe(session_id)["payment_intent"]
    assert purchase.stripe_charge_id.startswith("ch_") and purchase.receipt_url
    assert balance(customer.id) == 120


def test_declined_card_credits_nothing_and_marks_the_purchase_failed(
    client, customer, inline_webhooks
):
    session_id = buy(client, "pro")

    response = pay_on_page(client, session_id, CARD_DECLINED)

    assert response.status_code == 303
    assert response.headers["Location"] == f"/sandbox/checkout/{session_id}?declined=1"
    page = client.get(response.headers["Location"])
    assert "Your card was declined" in plain(page)
    assert purchase_of_session(session_id).status == PurchaseStatus.FAILED
    assert balance(customer.id) == 0
    assert entries(customer.id) == []
    assert lot_count(customer.id) == 0


def test_a_declined_card_can_be_followed_by_a_good_one(client, customer, inline_webhooks):
    session_id = buy(client, "basic")
    pay_on_page(client, session_id, CARD_DECLINED)

    page = success_page(client, pay_on_page(client, session_id, CARD_SUCCEEDS))

    assert "Credits added" in plain(page)
    assert purchase_of_session(session_id).status == PurchaseStatus.CREDITED
    assert balance(customer.id) == 120
    assert len(entries(customer.id, EntryKind.PURCHASE_CREDIT)) == 1


def test_delayed_payment_shows_processing_then_credits_once_when_it_settles(
    client, customer, inline_webhooks
):
    session_id = buy(client, "pro")

    page = success_page(client, pay_on_page(client, session_id, DELAYED_METHOD))

    assert "Payment processing" in plain(page)
    assert balance(customer.id) == 0
    assert entries(customer.id) == []
    assert purchase_of_session(session_id).status == PurchaseStatus.PENDING

    settle_delayed(session_id, succeeded=True)

    assert balance(customer.id) == 300
    assert len(entries(customer.id, EntryKind.PURCHASE_CREDIT)) == 1
    assert lot_count(customer.id) == 1
    assert purchase_of_session(session_id).status == PurchaseStatus.CREDITED
    again = client.get(f"/credits/success?session_id={session_id}")
    assert "Credits added" in plain(again)
    assert balance(customer.id) == 300
    assert len(entries(customer.id)) == 1


def test_delayed_payment_that_fails_marks_the_purchase_failed_and_tells_the_customer(
    client, customer, inline_webhooks
):
    session_id = buy(client, "pro")
    success_page(client, pay_on_page(client, session_id, DELAYED_METHOD))

    settle_delayed(session_id, succeeded=False)

    assert purchase_of_session(session_id).status == PurchaseStatus.FAILED
    assert balance(customer.id) == 0
    assert entries(customer.id) == []
    [mail] = emails_to(customer.email)
    assert mail.subject == "Your Pro purchase could not be completed"
    assert "no credits were added" in mail.body_text
    assert "Payment processing" in plain(client.get(f"/credits/success?session_id={session_id}"))


def test_success_page_for_another_customers_session_is_not_found(
    app, client, customer, inline_webhooks
):
    session_id = buy(client, "pro")
    pay_on_page(client, session_id)
    intruder = app.test_client()
    login_as(intruder, make_user())

    response = intruder.get(f"/credits/success?session_id={session_id}")

    assert response.status_code == 404
    assert "300" not in plain(response)


@pytest.mark.parametrize("query", ["", "?session_id=", "?session_id=cs_test_nonexistent"])
def test_success_page_without_a_known_session_is_not_found(client, customer, query):
    assert client.get(f"/credits/success{query}").status_code == 404


def test_cancel_page_says_no_payment_was_made(client, customer):
    response = client.get("/credits/cancel")

    assert response.status_code == 200
    assert "No payment was made" in plain(response)
    assert "nothing was charged" in plain(response)


def test_leaving_the_sandbox_page_returns_to_the_cancel_page(client, customer):
    session_id = buy(client, "pro")
    token = csrf_token(client, f"/sandbox/checkout/{session_id}")

    response = client.post(f"/sandbox/checkout/{session_id}/cancel", data={"csrf_token": token})

    assert response.headers["Location"] == "http://portal.test/credits/cancel"
    assert purchase_of_session(session_id).status == PurchaseStatus.PENDING


def test_cancelling_a_pending_purchase_expires_its_checkout(client, customer, inline_webhooks):
    session_id = buy(client, "pro")
    purchase_id = purchase_of_session(session_id).id

    response = client.post(
        f"/purchases/{purchase_id}/cancel",
        data={"csrf_token": csrf_token(client, "/credits/buy")},
    )

    assert response.status_code == 303
    assert response.headers["Location"] == "/purchases"
    assert "The checkout is cancelled" in plain(client.get("/purchases"))
    assert session_at_stripe(session_id)["status"] == "expired"
    assert purchase_of_session(session_id).status == PurchaseStatus.EXPIRED
    # The expired checkout can no longer be paid.
    assert pay_on_page(client, session_id).headers["Location"] == f"/sandbox/checkout/{session_id}"
    assert balance(customer.id) == 0
    assert entries(customer.id) == []


def test_cancelling_someone_elses_purchase_is_not_found(app, client, customer):
    session_id = buy(client, "pro")
    purchase_id = purchase_of_session(session_id).id
    other = app.test_client()
    login_as(other, make_user())

    response = other.post(
        f"/purchases/{purchase_id}/cancel", data={"csrf_token": csrf_token(other, "/credits/buy")}
    )

    assert response.status_code == 404
    assert session_at_stripe(session_id)["status"] == "open"
    assert purchase_of_session(session_id).status == PurchaseStatus.PENDING


@pytest.mark.parametrize("package", policy.PACKAGES, ids=lambda package: package.code)
def test_each_package_buys_its_credits_for_its_price(client, customer, inline_webhooks, package):
    session_id = buy(client, package.code)
    assert session_at_stripe(session_id)["amount_total"] == package.price_cents

    page = success_page(client, pay_on_page(client, session_id, CARD_SUCCEEDS))

    assert f"{package.credits:,} credits from your {package.name} purchase" in plain(page)
    assert balance(customer.id) == package.credits
    purchase = purchase_of_session(session_id)
    assert (purchase.credits, purchase.amount_cents) == (package.credits, package.price_cents)
    [entry] = entries(customer.id, EntryKind.PURCHASE_CREDIT)
    assert entry.credits == package.credits
    assert lot_count(customer.id) == 1


def test_refund_failing_card_still_pays_and_credits(client, customer, inline_webhooks):
    session_id = buy(client, "starter")

    page = success_page(client, pay_on_page(client, session_id, CARD_REFUND_FAILS))

    assert "Credits added" in plain(page)
    assert balance(customer.id) == 50


def test_the_receipt_names_the_card_the_amount_and_stripes_receipt(
    client, customer, inline_webhooks
):
    session_id = buy(client, "pro")
    pay_on_page(client, session_id, CARD_REFUND_FAILS)
    purchase = db.session.scalar(select(Purchase).where(Purchase.user_id == customer.id))
    assert (purchase.payment_method_brand, purchase.payment_method_last4) == ("visa", "5126")
    assert purchase.payment_method_fingerprint

    page = client.get(f"/purchases/{purchase.id}")
    text = plain(page)

    assert "Receipt: Pro package" in text
    assert f"Purchase No. {purchase.id} Paid " in text
    assert "Package Pro: 300 credits Amount $20.00 USD Paid with Visa ending in 5126" in text
    assert "Still unused 300 of 300" in text
    assert f"Sold by {policy.COMPANY_NAME}" in text
    assert f'href="{purchase.receipt_url}"' in page.get_data(as_text=True)
    assert "Request a refund" in text


def test_the_same_card_has_the_same_fingerprint_and_another_card_another(
    client, customer, inline_webhooks
):
    for card in (CARD_SUCCEEDS, CARD_SUCCEEDS, CARD_REFUND_FAILS):
        pay_on_page(client, buy(client, "starter"), card)
    first, again, other = db.session.scalars(
        select(Purchase.payment_method_fingerprint).order_by(Purchase.id)
    ).all()
    assert first == again != other


def stripe_customer_of(user_id: int) -> str | None:
    db.session.expire_all()
    return db.session.get(User, user_id).stripe_customer_id


def test_the_stripe_customer_is_made_once_and_reused(client, customer):
    with sandbox().lock:
        customers_before = set(sandbox().customers)
    first_session = buy(client, "starter")
    first = stripe_customer_of(customer.id)
    second_session = buy(client, "pro")

    assert stripe_customer_of(customer.id) == first
    with sandbox().lock:
        assert set(sandbox().customers) - customers_before == {first}
    assert session_at_stripe(first_session)["customer"] == first
    assert session_at_stripe(second_session)["customer"] == first


def test_saving_the_card_asks_checkout_to_keep_it_and_the_next_checkout_offers_it(
    client, customer, inline_webhooks
):
    response = post_buy(client, "starter", save_card=True)
    session_id = session_id_of(response)
    assert session_at_stripe(session_id)["payment_intent_data"]["setup_future_usage"] == (
        "on_session"
    )
    pay_on_page(client, session_id, CARD_SUCCEEDS)
    customer_id = stripe_customer_of(customer.id)
    with sandbox().lock:
        [saved] = sandbox().saved_cards(customer_id)
    assert saved["card"]["last4"] == "4242"
    # Saved for redisplay: Checkout offers only "always" cards.
    assert session_at_stripe(session_id)["payment_method_data"] == {"allow_redisplay": "always"}
    assert saved["allow_redisplay"] == "always"

    # The next checkout shows it, and paying with it is one press on Stripe's page.
    second = buy(client, "starter")
    page = client.get(f"/sandbox/checkout/{second}").get_data(as_text=True)
    assert f'value="{saved["id"]}" checked' in page
    assert "Visa ending in 4242" in plain(client.get("/credits/buy"))
    pay_on_page(client, second, saved["id"])
    assert balance(customer.id) == 100


def test_a_purchase_keeps_its_invoice_and_the_receipt_links_it(client, customer, inline_webhooks):
    session_id = buy(client, "pro")
    pay_on_page(client, session_id)
    purchase = db.session.scalar(select(Purchase).where(Purchase.user_id == customer.id))
    assert purchase.invoice_number and purchase.invoice_number.startswith("SBX-")
    assert purchase.invoice_url.endswith(f"/invoices/{purchase.stripe_invoice_id}")

    page = client.get(f"/purchases/{purchase.id}").get_data(as_text=True)
    assert f"Invoice {purchase.invoice_number}" in plain(client.get(f"/purchases/{purchase.id}"))
    assert f'href="{purchase.invoice_url}"' in page
    assert f'href="{purchase.invoice_pdf_url}"' in page
    pdf = client.get(purchase.invoice_pdf_url)
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF-") and pdf.data.rstrip().endswith(b"%%EOF")


def test_manage_cards_and_invoices_opens_stripes_billing_portal(client, customer):
    assert "Manage cards and invoices" not in plain(client.get("/account"))  # nothing yet
    buy(client, "starter")
    assert "Manage cards and invoices" in plain(client.get("/account"))

    response = client.post("/account/billing", data={"csrf_token": csrf_token(client, "/account")})

    assert response.status_code == 303
    portal_page = client.get(response.headers["Location"])
    assert portal_page.status_code == 200
    assert "Saved cards" in plain(portal_page) and "Invoices" in plain(portal_page)
    assert client.post("/account/billing").status_code == 400  # no CSRF token


def test_changing_the_save_card_choice_opens_a_new_checkout_instead_of_failing(client, customer):
    """The choice is part of the session's parameters: a second click with the other
    choice would reuse the idempotency key with other parameters, which Stripe refuses."""
    plain_session = buy(client, "pro")
    saving = session_id_of(post_buy(client, "pro", save_card=True))
    again = session_id_of(post_buy(client, "pro", save_card=True))

    assert saving != plain_session and again == saving
    assert "setup_future_usage" not in session_at_stripe(plain_session)["payment_intent_data"]
    assert session_at_stripe(saving)["payment_intent_data"]["setup_future_usage"] == ("on_session")
    assert [p.saves_card for p in purchases_of(customer.id)] == [False, True]


def test_a_card_saved_only_by_setup_future_usage_is_not_offered_again(client, customer):
    """As Stripe does: without `payment_method_data.allow_redisplay`, a card saved through
    `setup_future_usage` is "limited", and neither Checkout nor the buy page offers it."""
    from portal.billing.checkout import stripe_customer

    customer_id = stripe_customer(customer)
    params = {
        "mode": "payment",
        "customer": customer_id,
        "line_items": [
            {"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 500}},
        ],
        "payment_intent_data": {"setup_future_usage": "on_session"},
        "success_url": "http://portal.test/credits/success",
        "cancel_url": "http://portal.test/credits/cancel",
    }
    with sandbox().lock:
        session = sandbox().create_session(params, lambda sid: f"/sandbox/checkout/{sid}")
        sandbox().pay(session["id"], CARD_SUCCEEDS)
        [saved] = sandbox().saved_cards(customer_id)
    assert saved["allow_redisplay"] == "limited"

    second = buy(client, "starter")
    assert saved["id"] not in client.get(f"/sandbox/checkout/{second}").get_data(as_text=True)
    assert "Visa ending in 4242" not in plain(client.get("/credits/buy"))
