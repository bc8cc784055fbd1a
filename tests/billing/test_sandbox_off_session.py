"""The sandbox as auto-recharge relies on it: a card saved in setup-mode Checkout, charged
off-session by test card, brought back on-session to authenticate, cancelled, and a paid
charge invoiced. Stripe's answers are read where the gateway reads them, and each raw
answer where the portal would not see it (`stripe_contract.exchanges`)."""

from urllib.parse import parse_qs, urlsplit

import pytest

from portal.billing.checkout import stripe_customer
from portal.billing.gateway import NoSuchObject, gateway
from portal.errors import PaymentProviderError
from portal.sandbox.store import (
    CARD_AUTHENTICATES,
    CARD_CHARGES_FAIL,
    CARD_DECLINED,
    CARD_DISPUTED,
    CARD_INSUFFICIENT_FUNDS,
    CARD_REFUND_FAILS,
    CARD_SUCCEEDS,
    DECLINES,
    StripeError,
)
from tests.billing.helpers import (
    AUTHENTICATED_URL,
    SETUP_CANCEL_URL,
    authenticate_on_page,
    buy,
    charge_saved_card,
    events_for,
    invoice_recharge,
    open_card_setup,
    pay_on_page,
    plain,
    sandbox,
    set_up_card,
)
from tests.factories import csrf_token, make_user


def last_answer(stripe_contract, path_end: str):
    """The status and body of the latest request whose path ends with `path_end`."""
    exchange = next(e for e in reversed(stripe_contract.exchanges) if e.path.endswith(path_end))
    return exchange.status, exchange.answer


def saved_without_setup(user, card: str) -> str:
    """A saved card of `user` that setup mode would refuse to save (the bank declines
    it): as if the bank had started declining after it was saved."""
    store = sandbox()
    with store.lock:
        return store._save_card(user.stripe_customer_id, card, "limited")["id"]


def of_customer(user, kind: str) -> list[dict]:
    """The sandbox's objects of `kind` (its attribute) for `user`'s Stripe Customer; the
    sandbox is shared by every test of the app."""
    return in_store(
        lambda store: [
            obj
            for obj in getattr(store, kind).values()
            if obj.get("customer") == user.stripe_customer_id
        ]
    )


def in_store(action):
    store = sandbox()
    with store.lock:
        return action(store)


# -- saving a card in setup mode --------------------------------------------------------


def test_a_setup_session_takes_no_money_and_waits_on_its_setup_intent(customer):
    session = gateway().retrieve_setup_session(open_card_setup(customer))

    assert session["mode"] == "setup"
    assert session["status"] == "open"
    assert session["payment_status"] == "no_payment_required"
    assert session["amount_total"] is None
    assert session["payment_intent"] is None
    assert session["invoice"] is None
    assert session["setup_intent"]["id"].startswith("seti_")
    assert session["setup_intent"]["status"] == "requires_payment_method"
    assert session["setup_intent"]["description"] == "Card for auto-recharge"
    assert session["setup_intent"]["metadata"] == {
        "user_id": str(customer.id),
        "purpose": "auto_recharge",
    }


def test_the_setup_page_offers_cards_to_save_and_no_bank_debit(client, customer):
    page = plain(client.get(f"/sandbox/checkout/{open_card_setup(customer)}"))

    assert "Save a card" in page
    assert "Save card" in page
    assert "4000 0027 6000 3184" in page
    assert "Bank debit" not in page


def test_saving_a_card_completes_the_session_and_returns_to_the_success_url(client, customer):
    session_id = open_card_setup(customer)

    response = pay_on_page(client, session_id, CARD_SUCCEEDS)

    assert response.status_code == 303
    assert response.headers["Location"] == (
        f"http://portal.test/account/auto-recharge/card?session_id={session_id}"
    )
    session = gateway().retrieve_setup_session(session_id)
    setup = session["setup_intent"]
    assert session["status"] == "complete"
    assert session["payment_status"] == "no_payment_required"
    assert setup["status"] == "succeeded"
    assert setup["usage"] == "off_session"
    card = setup["payment_method"]
    assert card["customer"] == customer.stripe_customer_id
    assert card["card"]["last4"] == "4242"
    # Saved for later payments, not offered again at the next checkout.
    assert card["allow_redisplay"] == "limited"
    assert gateway().saved_cards(customer.stripe_customer_id) == []
    assert len(events_for("checkout.session.completed", id=session_id)) == 1
    assert len(events_for("setup_intent.succeeded", id=setup["id"])) == 1


@pytest.mark.parametrize("card", [CARD_DECLINED, CARD_INSUFFICIENT_FUNDS])
def test_a_card_the_bank_declines_is_not_saved(client, customer, card):
    session_id = open_card_setup(customer)

    response = pay_on_page(client, session_id, card)

    assert response.status_code == 303
    assert "declined=1" in response.headers["Location"]
    session = gateway().retrieve_setup_session(session_id)
    assert session["status"] == "open"
    assert session["setup_intent"]["payment_method"] is None
    assert events_for("setup_intent.setup_failed", id=session["setup_intent"]["id"])
    assert in_store(lambda store: store.saved_cards(customer.stripe_customer_id)) == []


@pytest.mark.parametrize("card", [CARD_CHARGES_FAIL, CARD_AUTHENTICATES])
def test_cards_that_fail_later_save_fine(client, customer, card):
    assert set_up_card(client, customer, card).startswith("pm_")


def test_cancelling_the_setup_page_returns_to_the_cancel_url(client, customer):
    session_id = open_card_setup(customer)
    token = csrf_token(client, f"/sandbox/checkout/{session_id}")

    response = client.post(f"/sandbox/checkout/{session_id}/cancel", data={"csrf_token": token})

    assert response.headers["Location"] == SETUP_CANCEL_URL


def test_a_setup_session_with_line_items_is_refused(customer):
    with pytest.raises(PaymentProviderError, match="line_items"):
        gateway().create_checkout_session(
            {
                "mode": "setup",
                "customer": stripe_customer(customer),
                "line_items": [{"quantity": 1}],
                "success_url": "http://portal.test/s",
                "cancel_url": "http://portal.test/c",
            },
            "setup-with-lines",
        )


# -- charging the saved card off-session ---------------------------------------------------


@pytest.mark.parametrize("card", [CARD_SUCCEEDS, CARD_REFUND_FAILS, CARD_DISPUTED])
def test_an_off_session_charge_on_a_card_that_pays_succeeds(client, customer, card):
    method = set_up_card(client, customer, card)

    intent = charge_saved_card(customer, method)

    assert intent["status"] == "succeeded"
    assert intent["amount_received"] == 2000
    assert intent["customer"] == customer.stripe_customer_id
    assert intent["payment_method"] == method
    assert intent["metadata"]["user_id"] == str(customer.id)
    charge = intent["latest_charge"]
    assert charge["status"] == "succeeded"
    assert charge["payment_method_details"]["card"]["last4"] == card[-4:]
    assert len(events_for("payment_intent.succeeded", id=intent["id"])) == 1
    # The cards keep their later behaviour.
    disputes = events_for("charge.dispute.created", charge=charge["id"])
    assert len(disputes) == (1 if card == CARD_DISPUTED else 0)
    refunds_fail = in_store(lambda store: charge["id"] in store.refund_fails_for)
    assert refunds_fail == (card == CARD_REFUND_FAILS)


DECLINED = {
    "generic decline": (CARD_DECLINED, "card_declined", "generic_decline"),
    "insufficient funds": (CARD_INSUFFICIENT_FUNDS, "card_declined", "insufficient_funds"),
    "saved, then every charge fails": (CARD_CHARGES_FAIL, "card_declined", "generic_decline"),
    "needs authentication": (
        CARD_AUTHENTICATES,
        "authentication_required",
        "authentication_required",
    ),
}


@pytest.mark.parametrize(("card", "code", "decline_code"), DECLINED.values(), ids=DECLINED.keys())
def test_a_refused_off_session_charge_is_a_card_error_carrying_the_unpaid_intent(
    customer, stripe_contract, card, code, decline_code
):
    stripe_customer(customer)
    method = saved_without_setup(customer, card)

    intent = charge_saved_card(customer, method)

    status, body = last_answer(stripe_contract, "/confirm")
    error = body["error"]
    assert status == 402
    assert error["type"] == "card_error"
    assert (error["code"], error["decline_code"]) == (code, decline_code)
    assert error["message"]
    assert error["payment_intent"] == intent
    assert intent["status"] == "requires_payment_method"
    assert intent["payment_method"] is None
    assert intent["latest_charge"] is None
    failure = intent["last_payment_error"]
    assert (failure["type"], failure["code"], failure["decline_code"]) == (
        "card_error",
        code,
        decline_code,
    )
    assert failure["payment_method"]["id"] == method
    assert len(events_for("payment_intent.payment_failed", id=intent["id"])) == 1


def test_a_repeated_key_replays_the_declined_charge(client, customer, stripe_contract):
    method = set_up_card(client, customer, CARD_CHARGES_FAIL)
    first = charge_saved_card(customer, method, key="recharge-7")
    first_answer = last_answer(stripe_contract, "/v1/payment_intents")

    again = charge_saved_card(customer, method, key="recharge-7")

    assert again == first
    assert last_answer(stripe_contract, "/v1/payment_intents") == first_answer
    assert [intent["id"] for intent in of_customer(customer, "payment_intents")] == [first["id"]]
    assert len(events_for("payment_intent.payment_failed", id=first["id"])) == 1


def test_a_replay_answers_as_first_answered_though_the_intent_changed(client, customer):
    method = set_up_card(client, customer, CARD_CHARGES_FAIL)
    first = charge_saved_card(customer, method, key="recharge-8")
    gateway().cancel_payment_intent(first["id"])

    assert charge_saved_card(customer, method, key="recharge-8")["status"] == (
        "requires_payment_method"
    )


def test_another_customers_card_is_refused(client, customer, stripe_contract):
    someone_else = make_user()
    method = set_up_card(client, customer)
    stripe_customer(someone_else)

    with pytest.raises(PaymentProviderError) as refused:
        charge_saved_card(someone_else, method)

    status, body = last_answer(stripe_contract, "/v1/payment_intents")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "payment_method"
    assert not refused.value.retryable
    assert of_customer(someone_else, "payment_intents") == []


def test_a_removed_card_is_refused(client, customer, stripe_contract):
    method = set_up_card(client, customer)
    in_store(lambda store: store.detach_payment_method(method))

    with pytest.raises(PaymentProviderError, match="detached"):
        charge_saved_card(customer, method)


def test_an_unknown_card_is_not_found(client, customer):
    stripe_customer(customer)

    with pytest.raises(NoSuchObject):
        charge_saved_card(customer, "pm_test_missing")


# -- back on-session: confirm, authenticate -----------------------------------------------


@pytest.fixture
def needs_authentication(client, customer) -> tuple[dict, str]:
    """An off-session charge the bank wanted authenticated: (its PaymentIntent, the card)."""
    method = set_up_card(client, customer, CARD_AUTHENTICATES)
    return charge_saved_card(customer, method), method


def test_confirming_on_session_sends_the_customer_to_authenticate(needs_authentication):
    intent, method = needs_authentication

    confirmed = gateway().confirm_payment_intent(intent["id"], method, AUTHENTICATED_URL)

    assert confirmed["id"] == intent["id"]
    assert confirmed["status"] == "requires_action"
    assert confirmed["payment_method"] == method
    assert confirmed["next_action"] == {
        "type": "redirect_to_url",
        "redirect_to_url": {
            "url": f"/sandbox/authenticate/{intent['id']}",
            "return_url": AUTHENTICATED_URL,
        },
    }
    assert events_for("payment_intent.requires_action", id=intent["id"])


def test_the_authentication_page_offers_both_outcomes(client, needs_authentication):
    intent, method = needs_authentication
    gateway().confirm_payment_intent(intent["id"], method, AUTHENTICATED_URL)

    page = plain(client.get(f"/sandbox/authenticate/{intent['id']}"))

    assert "Confirm a payment of $20.00" in page
    assert "Complete authentication" in page
    assert "Fail authentication" in page
    assert client.get("/sandbox/authenticate/pi_test_missing").status_code == 404


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_authenticating_returns_the_customer_with_the_outcome(
    client, needs_authentication, outcome
):
    intent, method = needs_authentication
    gateway().confirm_payment_intent(intent["id"], method, AUTHENTICATED_URL)

    response = authenticate_on_page(client, intent["id"], outcome)

    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == AUTHENTICATED_URL
    query = parse_qs(location.query)
    assert query["payment_intent"] == [intent["id"]]
    after = gateway().retrieve_payment_intent(intent["id"])
    assert after["next_action"] is None
    if outcome == "complete":
        assert query["redirect_status"] == ["succeeded"]
        assert after["status"] == "succeeded"
        assert after["latest_charge"]["amount"] == 2000
        assert events_for("payment_intent.succeeded", id=intent["id"])
    else:
        assert query["redirect_status"] == ["failed"]
        assert after["status"] == "requires_payment_method"
        assert after["last_payment_error"]["code"] == "payment_intent_authentication_failure"
        assert len(events_for("payment_intent.payment_failed", id=intent["id"])) == 2


def test_confirming_with_a_card_that_pays_succeeds_at_once(client, customer, needs_authentication):
    intent, _ = needs_authentication
    other_card = set_up_card(client, customer, CARD_SUCCEEDS)

    confirmed = gateway().confirm_payment_intent(intent["id"], other_card, AUTHENTICATED_URL)

    assert confirmed["status"] == "succeeded"
    assert confirmed["next_action"] is None
    assert confirmed["last_payment_error"] is None


def test_confirming_with_a_declining_card_is_a_card_error(
    client, customer, needs_authentication, stripe_contract
):
    intent, _ = needs_authentication
    failing = set_up_card(client, customer, CARD_CHARGES_FAIL)

    with pytest.raises(PaymentProviderError):
        gateway().confirm_payment_intent(intent["id"], failing, AUTHENTICATED_URL)

    status, body = last_answer(stripe_contract, "/confirm")
    assert status == 402
    assert body["error"]["code"] == "card_declined"
    assert body["error"]["payment_intent"]["status"] == "requires_payment_method"


def test_confirming_a_paid_or_cancelled_intent_is_refused(client, customer, needs_authentication):
    intent, method = needs_authentication
    paid = charge_saved_card(customer, set_up_card(client, customer))
    gateway().cancel_payment_intent(intent["id"])

    for done in (paid["id"], intent["id"]):
        with pytest.raises(PaymentProviderError) as refused:
            gateway().confirm_payment_intent(done, method, AUTHENTICATED_URL)
        assert refused.value.code == "payment_intent_unexpected_state"


# -- cancelling ---------------------------------------------------------------------------


def test_cancelling_an_unpaid_intent(needs_authentication):
    intent, _ = needs_authentication

    cancelled = gateway().cancel_payment_intent(intent["id"])

    assert cancelled["status"] == "canceled"
    assert cancelled["cancellation_reason"] == "abandoned"
    assert cancelled["canceled_at"] >= intent["created"]
    assert events_for("payment_intent.canceled", id=intent["id"])


def test_cancelling_a_paid_intent_is_refused(client, customer):
    paid = charge_saved_card(customer, set_up_card(client, customer))

    with pytest.raises(PaymentProviderError) as refused:
        gateway().cancel_payment_intent(paid["id"])

    assert refused.value.code == "payment_intent_unexpected_state"


# -- invoicing a paid recharge ------------------------------------------------------------


def test_a_paid_recharge_gets_a_numbered_paid_invoice(client, customer):
    intent = charge_saved_card(customer, set_up_card(client, customer))

    invoice = invoice_recharge(customer, intent["id"])

    assert invoice["status"] == "paid"
    assert invoice["number"].startswith("SBX-")
    assert invoice["customer"] == customer.stripe_customer_id
    assert (invoice["total"], invoice["amount_paid"], invoice["amount_remaining"]) == (
        2000,
        2000,
        0,
    )
    assert invoice["status_transitions"]["paid_at"] is not None
    assert [line["description"] for line in invoice["lines"]["data"]] == [
        "Pro package, 300 credits"
    ]
    assert invoice["metadata"] == {"purchase_id": "999999"}
    assert events_for("invoice.finalized", id=invoice["id"])
    assert events_for("invoice.paid", id=invoice["id"])
    page = client.get(invoice["hosted_invoice_url"])
    assert page.status_code == 200
    assert invoice["number"] in plain(page)
    pdf = client.get(invoice["invoice_pdf"])
    assert pdf.data.startswith(b"%PDF")


def test_invoice_numbers_follow_one_another(client, customer):
    method = set_up_card(client, customer)
    numbers = [
        invoice_recharge(customer, charge_saved_card(customer, method)["id"])["number"]
        for _ in range(2)
    ]

    first, second = (int(number.removeprefix("SBX-")) for number in numbers)
    assert second == first + 1


def test_invoicing_again_with_the_same_key_gives_the_same_invoice(client, customer):
    intent = charge_saved_card(customer, set_up_card(client, customer))

    first = invoice_recharge(customer, intent["id"], key="invoice-7")
    again = invoice_recharge(customer, intent["id"], key="invoice-7")

    assert again["id"] == first["id"]
    assert [invoice["id"] for invoice in of_customer(customer, "invoices")] == [first["id"]]


@pytest.fixture
def draft(customer) -> dict:
    stripe_customer(customer)
    return in_store(lambda store: store.create_invoice({"customer": customer.stripe_customer_id}))


def refused(action) -> dict:
    with pytest.raises(StripeError) as error:
        in_store(action)
    assert error.value.status == 400
    return error.value.body["error"]


def test_a_draft_has_no_number_and_no_pages(client, draft):
    assert draft["status"] == "draft"
    assert draft["number"] is None
    assert client.get(f"/sandbox/invoices/{draft['id']}").status_code == 404


def test_no_payment_is_attached_to_a_draft(client, customer, draft):
    intent = charge_saved_card(customer, set_up_card(client, customer))

    error = refused(
        lambda store: store.attach_payment(draft["id"], {"payment_intent": intent["id"]})
    )

    assert "open invoices" in error["message"]


def test_a_finalised_invoice_takes_no_more_items_and_no_second_finalising(customer, draft):
    line = {"customer": customer.stripe_customer_id, "invoice": draft["id"], "currency": "usd"}
    in_store(lambda store: store.create_invoice_item({**line, "amount": "500"}))
    in_store(lambda store: store.finalize_invoice(draft["id"], {}))

    assert refused(lambda store: store.create_invoice_item({**line, "amount": "500"}))["code"] == (
        "invoice_not_editable"
    )
    assert (
        "already finalized"
        in refused(lambda store: store.finalize_invoice(draft["id"], {}))["message"]
    )


def test_another_customers_payment_is_not_attached(client, customer, draft):
    someone_else = make_user()
    intent = charge_saved_card(someone_else, set_up_card(client, someone_else))
    line = {"customer": customer.stripe_customer_id, "invoice": draft["id"], "currency": "usd"}
    in_store(lambda store: store.create_invoice_item({**line, "amount": "2000"}))
    in_store(lambda store: store.finalize_invoice(draft["id"], {}))

    error = refused(
        lambda store: store.attach_payment(draft["id"], {"payment_intent": intent["id"]})
    )

    assert error["param"] == "payment_intent"


def test_an_invoice_waits_for_an_attached_payment_to_succeed(
    client, customer, needs_authentication
):
    intent, method = needs_authentication
    invoice = invoice_recharge(customer, intent["id"])
    assert invoice["status"] == "open"
    assert invoice["amount_remaining"] == 2000

    gateway().confirm_payment_intent(intent["id"], method, AUTHENTICATED_URL)
    authenticate_on_page(client, intent["id"])

    paid = in_store(lambda store: dict(store.invoices[invoice["id"]]))
    assert paid["status"] == "paid"
    assert paid["amount_paid"] == 2000
    payments = in_store(lambda store: store.public_invoice(invoice["id"], ["payments"]))["payments"]
    assert [payment["status"] for payment in payments["data"]] == ["paid"]
    assert payments["data"][0]["payment"] == {
        "type": "payment_intent",
        "payment_intent": intent["id"],
    }


# -- the new cards on the payment page ----------------------------------------------------


@pytest.mark.parametrize("card", [CARD_INSUFFICIENT_FUNDS, CARD_CHARGES_FAIL])
def test_the_payment_page_declines_the_new_declining_cards(client, customer, card):
    session_id = buy(client)

    response = pay_on_page(client, session_id, card)

    assert "declined=1" in response.headers["Location"]
    intent = in_store(
        lambda store: dict(store.payment_intents[store.session(session_id)["payment_intent"]])
    )
    assert intent["last_payment_error"]["decline_code"] == DECLINES[card][0]
    assert in_store(lambda store: store.session(session_id)["status"]) == "open"


def test_the_payment_page_takes_the_card_that_authenticates(client, customer):
    session_id = buy(client)

    pay_on_page(client, session_id, CARD_AUTHENTICATES)

    assert in_store(lambda store: store.session(session_id)["payment_status"]) == "paid"
