"""The sandbox held to Stripe's own definitions (tests/stripe_contract.py).

Every test in the suite is already checked by the `stripe_contract` fixture. Here the
portal's Stripe flows are walked one by one, the flows together must reach every line
of the endpoint table, and the checker is shown to catch each kind of mistake: each
broken input below starts from a real answer of the sandbox with one thing changed.
"""

import copy
from datetime import timedelta

import pytest
from stripe import ListObject, PaymentIntent
from stripe.checkout import Session as CheckoutSession
from stripe.params import PaymentIntentRetrieveParams, RefundCreateParams
from stripe.params.checkout import SessionCreateParams, SessionListParams

from portal.billing import reconcile
from portal.billing.checkout import cancel_checkout
from portal.billing.gateway import gateway
from portal.billing.money_back import sending
from portal.errors import PaymentProviderError
from portal.sandbox.store import (
    CARD_AUTHENTICATES,
    CARD_CHARGES_FAIL,
    CARD_DECLINED,
    CARD_DISPUTED,
    CARD_REFUND_FAILS,
    CARD_SUCCEEDS,
    DELAYED_METHOD,
)
from portal.timeutil import utcnow
from tests.billing.helpers import (
    AUTHENTICATED_URL,
    authenticate_on_page,
    buy,
    charge_saved_card,
    close_dispute_in_store,
    deliver,
    fake_event,
    invoice_recharge,
    open_checkout,
    pay_on_page,
    payment_intent_of,
    plain,
    post_buy,
    purchase,
    refund_in_store,
    session_id_of,
    set_up_card,
    settle_delayed,
    the_event,
)
from tests.factories import csrf_token, make_staff
from tests.staff.helpers import (
    AFTER_UNDO_WINDOW,
    approve_now,
    file,
    inject_failures,
    paid_purchase,
    refunds_at_stripe,
    settle_at_stripe,
)
from tests.stripe_contract import (
    ENDPOINTS,
    Exchange,
    event_problems,
    exchange_problems,
    expand_problems,
    expanded_problems,
    object_problems,
    params_problems,
)

# -- the portal's flows, each as far as Stripe sees it ------------------------------------


def card_payment(client, customer):
    """Buy on the page, pay with a card; the webhook credits it."""
    pay_on_page(client, buy(client))


def declined_card_then_good_one(client, customer):
    session_id = buy(client)
    pay_on_page(client, session_id, CARD_DECLINED)
    pay_on_page(client, session_id)


def cancelled_checkout(client, customer):
    purchase_id, _ = open_checkout(customer)
    cancel_checkout(purchase(purchase_id))


def bank_debit_settles_and_fails(client, customer):
    for succeeded in (True, False):
        session_id = buy(client)
        pay_on_page(client, session_id, DELAYED_METHOD)
        settle_delayed(session_id, succeeded=succeeded)


def approved_refund_sent_and_settled(client, customer):
    staff = make_staff()
    for card in (CARD_SUCCEEDS, CARD_REFUND_FAILS):
        bought = paid_purchase(customer, package="basic", card=card)
        approve_now(file(customer, bought), staff, 500, justification="", now=utcnow())
        sending.send_due_refunds(utcnow() + AFTER_UNDO_WINDOW)
        for refund in refunds_at_stripe(bought.stripe_payment_intent_id):
            settle_at_stripe(refund["id"])


def dashboard_refund(client, customer):
    bought = paid_purchase(customer)
    refund_in_store(bought.stripe_payment_intent_id, 700)


def dispute_opened_and_lost(client, customer):
    session_id = buy(client)
    pay_on_page(client, session_id, CARD_DISPUTED)
    dispute = the_event("charge.dispute.created", payment_intent=payment_intent_of(session_id))
    close_dispute_in_store(dispute["data"]["object"]["id"], won=False)


def reconciliation(client, customer):
    paid_purchase(customer)
    since = utcnow() - timedelta(days=1)
    reconcile.reconcile(since)
    reconcile.reconcile_money_back(utcnow(), since)


def saved_card_and_billing_portal(client, customer):
    """The first checkout makes the Stripe Customer and saves the card; the buy page then
    lists it; Manage cards and invoices opens the billing portal."""
    pay_on_page(client, session_id_of(post_buy(client, "starter", save_card=True)))
    assert "Visa ending in 4242" in plain(client.get("/credits/buy"))
    response = client.post("/account/billing", data={"csrf_token": csrf_token(client, "/account")})
    assert "/sandbox/billing/bps_" in response.headers["Location"]


def stripe_says_no(client, customer):
    """Stripe's error answers: an object it does not have, and a failure of its own."""
    deliver(client, fake_event("checkout.session.completed", {"id": "cs_test_not_at_stripe"}))
    inject_failures(3)
    with pytest.raises(PaymentProviderError, match="injected"):
        gateway().retrieve_refund("re_test_anything")


def auto_recharge_paid_and_invoiced(client, customer):
    """The card saved on the setup page pays an off-session recharge, then the paid
    recharge gets its numbered invoice."""
    intent = charge_saved_card(customer, set_up_card(client, customer))
    assert intent["status"] == "succeeded"
    invoice = invoice_recharge(customer, intent["id"])
    assert invoice["status"] == "paid"


def auto_recharge_declined(client, customer):
    intent = charge_saved_card(customer, set_up_card(client, customer, CARD_CHARGES_FAIL))
    assert intent["last_payment_error"]["code"] == "card_declined"


def auto_recharge_authenticated_on_session(client, customer):
    """The bank wants the cardholder: the customer comes back, confirms the same
    PaymentIntent and passes the check on the bank's page."""
    method = set_up_card(client, customer, CARD_AUTHENTICATES)
    intent = charge_saved_card(customer, method)
    assert intent["last_payment_error"]["code"] == "authentication_required"
    intent = gateway().confirm_payment_intent(intent["id"], method, AUTHENTICATED_URL)
    assert intent["status"] == "requires_action"
    authenticate_on_page(client, intent["id"])
    assert gateway().retrieve_payment_intent(intent["id"])["status"] == "succeeded"


def auto_recharge_abandoned(client, customer):
    intent = charge_saved_card(customer, set_up_card(client, customer, CARD_AUTHENTICATES))
    assert gateway().cancel_payment_intent(intent["id"])["status"] == "canceled"


SESSIONS = "/v1/checkout/sessions"
INVOICES = "/v1/invoices"

# Each flow, with the calls it must make (more is fine): together they reach every line
# of the endpoint table.
FLOWS = {
    flow.__name__: (flow, calls)
    for flow, calls in (
        (card_payment, {f"POST {SESSIONS}", f"GET {SESSIONS}/{{id}}"}),
        (declined_card_then_good_one, {f"POST {SESSIONS}", f"GET {SESSIONS}/{{id}}"}),
        (cancelled_checkout, {f"GET {SESSIONS}/{{id}}", f"POST {SESSIONS}/{{id}}/expire"}),
        (bank_debit_settles_and_fails, {f"GET {SESSIONS}/{{id}}"}),
        (
            approved_refund_sent_and_settled,
            {"POST /v1/refunds", "GET /v1/refunds/{id}", "GET /v1/payment_intents/{id}"},
        ),
        (dashboard_refund, {"GET /v1/refunds/{id}", "GET /v1/payment_intents/{id}"}),
        (dispute_opened_and_lost, {"GET /v1/disputes/{id}"}),
        (reconciliation, {f"GET {SESSIONS}", "GET /v1/disputes"}),
        (
            saved_card_and_billing_portal,
            {
                "POST /v1/customers",
                "GET /v1/payment_methods",
                "POST /v1/billing_portal/sessions",
            },
        ),
        (stripe_says_no, {f"GET {SESSIONS}/{{id}}", "GET /v1/refunds/{id}"}),
        (
            auto_recharge_paid_and_invoiced,
            {
                f"POST {SESSIONS}",
                f"GET {SESSIONS}/{{id}}",
                "POST /v1/payment_intents",
                f"POST {INVOICES}",
                "POST /v1/invoiceitems",
                f"POST {INVOICES}/{{id}}/finalize",
                f"POST {INVOICES}/{{id}}/attach_payment",
            },
        ),
        (auto_recharge_declined, {"POST /v1/payment_intents"}),
        (
            auto_recharge_authenticated_on_session,
            {
                "POST /v1/payment_intents",
                "POST /v1/payment_intents/{id}/confirm",
                "GET /v1/payment_intents/{id}",
            },
        ),
        (auto_recharge_abandoned, {"POST /v1/payment_intents/{id}/cancel"}),
    )
}


def called(endpoints) -> set[str]:
    return {f"{endpoint.method} {endpoint.path}" for endpoint in endpoints}


@pytest.mark.parametrize(("flow", "calls"), FLOWS.values(), ids=FLOWS.keys())
def test_each_flow_sends_and_gets_back_only_what_stripe_defines(
    client, customer, inline_webhooks, stripe_contract, flow, calls
):
    flow(client, customer)

    assert calls <= called(stripe_contract.endpoints())
    problems = stripe_contract.problems()
    assert not problems, "\n".join(problems)


def test_the_flows_reach_every_line_of_the_endpoint_table():
    reached = set().union(*(calls for _, calls in FLOWS.values()))

    assert reached == called(ENDPOINTS)


# -- the checker catches each kind of mistake ---------------------------------------------


@pytest.fixture
def paid_session(customer, stripe_contract) -> dict:
    """A paid session as the sandbox answers the portal: intent and charge expanded."""
    bought = paid_purchase(customer)
    gateway().retrieve_checkout_session(bought.stripe_checkout_session_id)
    return copy.deepcopy(stripe_contract.exchanges[-1].answer)


def at(obj: dict, path: str) -> dict:
    for key in path.split(".") if path else []:
        obj = obj[key]
    return obj


CHARGE = "payment_intent.latest_charge"
CARD = f"{CHARGE}.payment_method_details.card"

BROKEN_ANSWERS = {
    "unknown field": (
        "",
        lambda session: session.update(customer_emial="a@example.com"),
        "checkout.session.customer_emial is not a field of Session "
        "(did you mean 'customer_email'?)",
    ),
    "required field missing": (
        "",
        lambda session: session.pop("created"),
        "checkout.session.created is missing; Session declares it int, not Optional",
    ),
    "required field null": (
        "",
        lambda session: session.update(livemode=None),
        "checkout.session.livemode is None, expected bool",
    ),
    "text for a number": (
        "",
        lambda session: session.update(amount_total="2000"),
        "checkout.session.amount_total is '2000', expected int | null",
    ),
    "true for a number": (
        "",
        lambda session: session.update(amount_total=True),
        "checkout.session.amount_total is True, expected int | null",
    ),
    "value outside the enum": (
        "",
        lambda session: session.update(status="completed"),
        "checkout.session.status is 'completed', expected one of 'complete', 'expired', "
        "'open' | null",
    ),
    "text for a list": (
        "",
        lambda session: session.update(payment_method_types="card"),
        "checkout.session.payment_method_types is 'card', expected a list",
    ),
    "metadata value not text": (
        "",
        lambda session: session["metadata"].update(purchase_id=7),
        "checkout.session.metadata.purchase_id is 7, expected str",
    ),
    "expanded object with an unknown field": (
        CHARGE,
        lambda charge: charge.update(refundd=False),
        f"checkout.session.{CHARGE}.refundd is not a field of Charge (did you mean 'refunded'?)",
    ),
    "expanded object missing a required field": (
        CHARGE,
        lambda charge: charge.pop("captured"),
        f"checkout.session.{CHARGE}.captured is missing; Charge declares it bool, not Optional",
    ),
    "nested object with a wrong type": (
        CARD,
        lambda card: card.update(exp_month="12"),
        f"checkout.session.{CARD}.exp_month is '12', expected int",
    ),
    "nested object with an unknown field": (
        CARD,
        lambda card: card.update(last_4="4242"),
        f"checkout.session.{CARD}.last_4 is not a field of Charge.PaymentMethodDetails.Card "
        "(did you mean 'last4'?)",
    ),
}


def test_a_real_answer_meets_the_contract(paid_session):
    assert isinstance(at(paid_session, CARD), dict)
    assert object_problems(paid_session, CheckoutSession) == []


@pytest.mark.parametrize(
    ("where", "change", "problem"), BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys()
)
def test_a_broken_answer_fails_the_contract(paid_session, where, change, problem):
    change(at(paid_session, where))

    assert object_problems(paid_session, CheckoutSession) == [problem]


def test_an_optional_field_may_be_left_out(paid_session):
    del paid_session["client_reference_id"]
    del at(paid_session, CHARGE)["receipt_url"]

    assert object_problems(paid_session, CheckoutSession) == []


def test_an_expandable_field_may_be_an_id_unless_it_was_expanded(paid_session):
    paid_session["payment_intent"] = paid_session["payment_intent"]["id"]

    assert object_problems(paid_session, CheckoutSession) == []
    assert expanded_problems(paid_session, CHARGE, "checkout.session") == [
        f"checkout.session.payment_intent is the id {paid_session['payment_intent']!r}, "
        f"but it was expanded ({CHARGE})"
    ]


BROKEN_REQUESTS = {
    "misspelt parameter": (
        RefundCreateParams,
        "payment_intent=pi_1&amount=500&reasn=duplicate",
        "reasn is not a parameter of RefundCreateParams (did you mean 'reason'?)",
    ),
    "misspelt nested parameter": (
        SessionCreateParams,
        "line_items[0][quantity]=1&line_items[0][price_data][currency]=usd"
        "&line_items[0][price_data][unit_ammount]=2000",
        "line_items[0][price_data][unit_ammount] is not a parameter of "
        "SessionCreateParamsLineItemPriceData (did you mean 'unit_amount'?)",
    ),
    "required nested parameter missing": (
        SessionCreateParams,
        "line_items[0][quantity]=1&line_items[0][price_data][unit_amount]=2000",
        "line_items[0][price_data][currency] is required by SessionCreateParamsLineItemPriceData",
    ),
    "request option sent as a parameter": (
        RefundCreateParams,
        "payment_intent=pi_1&idempotency_key=refund-1",
        "idempotency_key is not a parameter of RefundCreateParams",
    ),
    "decimal for an integer": (
        RefundCreateParams,
        "payment_intent=pi_1&amount=5.00",
        "amount is '5.00', expected int",
    ),
    "word for a boolean": (
        SessionCreateParams,
        "allow_promotion_codes=yes",
        "allow_promotion_codes is 'yes', expected bool",
    ),
    "value outside the enum": (
        RefundCreateParams,
        "payment_intent=pi_1&reason=customer_asked",
        "reason is 'customer_asked', expected one of 'duplicate', 'fraudulent', "
        "'requested_by_customer'",
    ),
    "object for text": (
        RefundCreateParams,
        "payment_intent[id]=pi_1",
        "payment_intent is an object, expected str",
    ),
    "list not sent as a list": (
        PaymentIntentRetrieveParams,
        "expand=latest_charge",
        "expand is 'latest_charge', expected a list sent as expand[0], expand[1], …",
    ),
    "list not counted from 0": (
        PaymentIntentRetrieveParams,
        "expand[1]=latest_charge",
        "expand is an object, expected a list sent as expand[0], expand[1], …",
    ),
    "text for a range": (
        SessionListParams,
        "created=yesterday",
        "created is 'yesterday', expected SessionListParamsCreated | int",
    ),
    "parameter sent twice": (
        RefundCreateParams,
        "payment_intent=pi_1&amount=500&amount=600",
        "amount is sent twice",
    ),
}


def test_the_gateways_own_requests_meet_the_contract():
    assert (
        params_problems(
            RefundCreateParams, "payment_intent=pi_1&amount=500&reason=duplicate&metadata="
        )
        == []
    )
    assert (
        params_problems(SessionListParams, "status=complete&created[gte]=1700000000&limit=100")
        == []
    )
    assert params_problems(PaymentIntentRetrieveParams, "expand[0]=latest_charge") == []


@pytest.mark.parametrize(
    ("params", "form", "problem"), BROKEN_REQUESTS.values(), ids=BROKEN_REQUESTS.keys()
)
def test_a_broken_request_fails_the_contract(params, form, problem):
    assert params_problems(params, form) == [problem]


@pytest.mark.parametrize(
    ("answer", "path", "problem"),
    [
        (PaymentIntent, "latest_charge", None),
        (CheckoutSession, "payment_intent.latest_charge", None),
        (CheckoutSession, "line_items", None),
        (ListObject[CheckoutSession], "data.payment_intent", None),
        (PaymentIntent, "lastest_charge", "PaymentIntent has no field 'lastest_charge'"),
        (PaymentIntent, "currency", "'currency' is not an expandable field"),
        (CheckoutSession, "payment_intent.charges", "PaymentIntent has no field 'charges'"),
    ],
)
def test_only_expandable_fields_may_be_expanded(answer, path, problem):
    expected = [] if problem is None else [f"expand {path!r}: {problem}"]
    assert expand_problems(answer, path) == expected


def test_an_event_is_checked_with_the_object_it_carries(customer, stripe_contract):
    paid_purchase(customer)
    event = copy.deepcopy(stripe_contract.events[-1])
    assert event["type"] == "checkout.session.completed"
    assert event_problems(event) == []

    del event["data"]["object"]["expires_at"]
    event["type"] = "checkout.session.complete"
    assert event_problems(event) == [
        "event checkout.session.complete.data.object.expires_at is missing; Session declares "
        "it int, not Optional",
        "event checkout.session.complete.type is 'checkout.session.complete', expected one of "
        "'account.application.authorized', 'account.application.deauthorized', "
        "'account.external_account.created', 'account.external_account.deleted', "
        "'account.external_account.updated', 'account.updated', …",
    ]


def test_an_event_about_an_unknown_kind_of_object_fails():
    event = fake_event("product.created", {"id": "prod_1", "object": "product"})

    assert event_problems(event) == [
        "event product.created.data.object is a 'product' object; the contract knows "
        "['charge', 'checkout.session', 'customer', 'dispute', 'invoice', 'invoiceitem', "
        "'payment_intent', 'payment_method', 'refund', 'setup_intent']"
    ]


def test_a_call_missing_from_the_endpoint_table_fails():
    exchange = Exchange("POST", "http://sandbox.invalid/sandbox/v1/products", "", 200, {})

    assert exchange_problems(exchange) == [
        "POST /v1/products: no line in tests/stripe_contract.py ENDPOINTS for this call"
    ]


def test_an_error_answer_must_be_shaped_as_stripes():
    url = "http://sandbox.invalid/sandbox/v1/refunds/re_1"
    good = {"error": {"type": "invalid_request_error", "message": "No such refund: 're_1'"}}
    bad = {"error": {"kind": "invalid_request_error"}}

    assert exchange_problems(Exchange("GET", url, "", 404, good)) == []
    assert exchange_problems(Exchange("GET", url, "", 404, bad)) == [
        "GET /v1/refunds/re_1: error.kind is not a field of ErrorObject",
        "GET /v1/refunds/re_1: error.type is missing; ErrorObject declares it str, not Optional",
    ]
