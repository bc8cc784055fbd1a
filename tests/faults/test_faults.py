"""Faults in the middle of money movements roll back whole; a lost database is a 503."""

import re
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from portal.billing import checkout, fulfilment
from portal.billing.models import Purchase, PurchaseStatus, Refund
from portal.db import db
from portal.errors import InsufficientCredits
from portal.jobs import services as jobs
from portal.jobs.models import Job
from portal.ledger.models import CreditLot, LedgerEntry
from portal.refunds.eligibility import RequestReason
from portal.refunds.services import file_request
from portal.staff import services as staff
from portal.timeutil import utcnow
from tests.factories import csrf_token, login_as, make_purchase, make_staff, make_user


class InjectedFault(Exception):
    def __init__(self, statement: str):
        super().__init__(f"injected fault: {statement}")


@contextmanager
def fail_on(statement_start: str):
    """Make the database refuse the first statement that starts with `statement_start`."""
    engine = db.engine

    def refuse(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(statement_start.upper()):
            raise InjectedFault(statement_start)

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


@contextmanager
def fail_inside_the_database(statement: str):
    """Make PostgreSQL itself refuse `statement` ("INSERT INTO ledger_entries"), with a
    trigger: for work the database does inside one call (charge_job), where no statement
    of the portal's own can be stopped."""
    operation, table = re.fullmatch(r"(INSERT INTO|UPDATE) (\w+)", statement).groups()
    operation = operation.split()[0]
    with db.engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER injected_fault BEFORE {operation} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION injected_fault()"
            )
        )
    try:
        yield
    finally:
        with db.engine.begin() as connection:
            connection.execute(text(f"DROP TRIGGER injected_fault ON {table}"))
            connection.execute(text("DROP FUNCTION injected_fault()"))


def is_the_spend(statement: str) -> bool:
    """Whether `statement` charges a job: PostgreSQL's one call, or SQLite's first write
    of the ledger."""
    if db.engine.dialect.name == "postgresql":
        return "FROM charge_job(" in statement
    return statement.startswith("INSERT INTO ledger_entries")


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def books_are_clean(app) -> bool:
    return app.test_cli_runner().invoke(args=["ledger-check"]).exit_code == 0


def paid_session(app, user, monkeypatch) -> Purchase:
    """A pending purchase whose Checkout Session is paid at the sandbox, webhook not sent."""
    monkeypatch.setitem(app.config, "SANDBOX_WEBHOOKS", "off")
    url = checkout.start_checkout(
        user, "pro", "http://portal.test/ok?s={CHECKOUT_SESSION_ID}", "http://portal.test/cancel"
    )
    session_id = re.search(r"(cs_test_\w+)", url).group(1)
    store = app.extensions["stripe_sandbox"]
    with store.lock:
        store.pay(session_id, "4242424242424242")
    return db.session.scalars(select(Purchase)).one()


@pytest.mark.parametrize(
    "statement",
    ["INSERT INTO ledger_entries", "INSERT INTO lot_allocations", "INSERT INTO outbox_emails"],
)
def test_a_fault_during_fulfilment_leaves_nothing_half_written(app, monkeypatch, statement):
    user = make_user()
    purchase = paid_session(app, user, monkeypatch)
    with fail_on(statement), pytest.raises(InjectedFault):
        fulfilment.fulfil_checkout(purchase.stripe_checkout_session_id)
    db.session.rollback()
    db.session.expire_all()
    assert purchase.credited_at is None and purchase.status != PurchaseStatus.CREDITED
    assert count(CreditLot) == count(LedgerEntry) == 0
    assert books_are_clean(app)
    assert (
        fulfilment.fulfil_checkout(purchase.stripe_checkout_session_id)
        == fulfilment.Fulfilment.CREDITED
    )
    assert count(LedgerEntry) == 1 and books_are_clean(app)


@pytest.mark.parametrize(
    "statement", ["INSERT INTO ledger_entries", "INSERT INTO lot_allocations", "UPDATE credit_lots"]
)
def test_a_fault_during_a_spend_charges_nothing(app, statement):
    user = make_user()
    make_purchase(user, "starter")
    if db.engine.dialect.name == "postgresql":
        fault, raised = fail_inside_the_database(statement), DBAPIError
    else:
        fault, raised = fail_on(statement), InjectedFault
    with fault, pytest.raises(raised, match="injected fault"):
        jobs.charge_job("faulty", user.email, "upscale", 5)
    db.session.rollback()
    assert count(Job) == 0 and count(LedgerEntry) == 1
    db.session.refresh(user)
    assert user.credits_balance == 50 and books_are_clean(app)


@pytest.mark.parametrize(
    "statement", ["INSERT INTO ledger_entries", "INSERT INTO lot_allocations", "UPDATE credit_lots"]
)
def test_a_fault_during_a_batch_charges_nothing(app, statement):
    # A batch is charged through the ledger's Python path on every database.
    user = make_user()
    make_purchase(user, "starter")
    asked = [jobs.JobRequest(f"batch-{n}", user.email, "upscale", 5) for n in range(3)]
    with fail_on(statement), pytest.raises(InjectedFault, match="injected fault"):
        jobs.charge_jobs(asked)
    db.session.rollback()
    assert count(Job) == 0 and count(LedgerEntry) == 1
    db.session.refresh(user)
    assert user.credits_balance == 50 and books_are_clean(app)


def test_a_fault_during_an_approval_changes_nothing(app):
    user, reviewer = make_user(), make_staff()
    purchase = make_purchase(user, "pro")
    request = file_request(
        user,
        purchase,
        RequestReason.OTHER,
        "changed my mind entirely",
        "",
        None,
        False,
        [],
        utcnow(),
    )
    actor = staff.Actor(reviewer)
    with fail_on("INSERT INTO audit_log"), pytest.raises(InjectedFault):
        staff.approve(request.id, actor, 2000, "", utcnow())
    db.session.rollback()
    db.session.expire_all()
    assert count(Refund) == 0
    assert purchase.committed_refund_cents == 0 and request.status.value == "open"
    db.session.refresh(user)
    assert user.credits_balance == 300 and books_are_clean(app)
    staff.approve(request.id, actor, 2000, "", utcnow())
    assert count(Refund) == 1 and books_are_clean(app)


def test_insufficient_credits_rolls_back_the_job_row(app):
    user = make_user()
    with pytest.raises(InsufficientCredits):
        jobs.charge_job("too-big", user.email, "upscale", 1)
    assert count(Job) == 0


def test_an_unreachable_database_is_a_503_page_with_a_reference(make_app):
    # Port 9 (discard) refuses connections at once on this machine.
    app = make_app(
        SQLALCHEMY_DATABASE_URI="postgresql+psycopg://nobody@127.0.0.1:9/none",
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True, "connect_args": {"connect_timeout": 2}},
    )
    client = app.test_client()
    client.set_cookie("portal-session", "garbage", domain="portal.test")
    page = client.get("/dashboard")
    api = client.get("/api/v1/jobs/1", headers={"Authorization": "Bearer x"})
    login = client.get("/login")
    assert login.status_code == 200
    assert page.status_code in (302, 503)
    assert api.status_code == 401
    token = csrf_token(client, "/login")
    answer = client.post(
        "/login", data={"email": "a@example.com", "password": "whatever it is", "csrf_token": token}
    )
    assert answer.status_code == 503
    assert b"briefly unavailable" in answer.data and b"Reference:" in answer.data
    assert answer.headers["Retry-After"] == "5"


@pytest.mark.postgres
def test_requests_work_again_after_the_database_drops_every_connection(app, client):
    user = make_user()
    make_purchase(user, "pro")
    login_as(client, user)
    assert client.get("/dashboard").status_code == 200
    with db.engine.connect() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        connection.commit()
    # This test's own session held one of the dropped connections, as a request would.
    db.session().invalidate()
    # The pool's pre-ping finds the dead connections and opens new ones.
    assert client.get("/dashboard").status_code == 200
    result = app.test_cli_runner().invoke(args=["ledger-check"])
    assert result.exit_code == 0, result.output


SERVICE_TOKEN = "platform-token"


def _charge(client, external_id: str):
    return client.post(
        "/api/v1/jobs",
        json={
            "external_id": external_id,
            "customer_email": "buyer@example.com",
            "operation": "upscale",
            "credits": 5,
        },
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )


def test_a_connection_that_cannot_even_roll_back_is_a_503_then_forgotten(make_app, monkeypatch):
    # Seen under gunicorn while the database killed the portal's connections mid-charge:
    # the ROLLBACK on the dead connection raised as well, and that escaped as a raw 500.
    app = make_app(PORTAL_SERVICE_TOKEN=SERVICE_TOKEN)
    with app.app_context():
        make_purchase(make_user(email="buyer@example.com"), package="starter")
    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    real_rollback = Session.rollback
    rollbacks = []

    def rollback_on_a_dead_connection(session):
        rollbacks.append(session)
        if len(rollbacks) <= 2:
            raise lost
        return real_rollback(session)

    def spend_on_a_dead_connection(conn, cursor, statement, *args):
        if is_the_spend(statement):
            raise lost

    client = app.test_client()
    with monkeypatch.context() as patch, app.app_context():
        patch.setattr(Session, "rollback", rollback_on_a_dead_connection)
        event.listen(db.engine, "before_cursor_execute", spend_on_a_dead_connection)
        try:
            answer = _charge(client, "during-the-outage")
        finally:
            event.remove(db.engine, "before_cursor_execute", spend_on_a_dead_connection)
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "unavailable"
    assert len(rollbacks) >= 2
    # The next request starts on a fresh connection, and nothing was charged.
    assert _charge(client, "after-the-outage").status_code == 201
    with app.app_context():
        assert count(Job) == 1
        assert books_are_clean(app)


@pytest.mark.postgres
def test_a_connection_killed_in_the_middle_of_a_charge_is_a_503(make_app):
    app = make_app(PORTAL_SERVICE_TOKEN=SERVICE_TOKEN)
    with app.app_context():
        make_purchase(make_user(email="buyer@example.com"), package="starter")
    killer = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])

    def spend_then_lose_the_connection(conn, cursor, statement, *args):
        # The charge is written, not yet committed, when its connection dies.
        if is_the_spend(statement):
            pid = conn.connection.driver_connection.info.backend_pid
            with killer.begin() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    client = app.test_client()
    with app.app_context():
        event.listen(db.engine, "after_cursor_execute", spend_then_lose_the_connection)
        try:
            answer = _charge(client, "killed")
        finally:
            event.remove(db.engine, "after_cursor_execute", spend_then_lose_the_connection)
    killer.dispose()
    assert answer.status_code == 503
    assert _charge(client, "after-the-kill").status_code == 201
    with app.app_context():
        assert count(Job) == 1
        assert books_are_clean(app)
