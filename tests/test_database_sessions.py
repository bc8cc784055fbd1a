"""What every PostgreSQL session of the portal is opened with, whatever the server's defaults."""

from datetime import UTC

import pytest
from sqlalchemy import create_engine, text

from portal.accounts.models import User
from portal.db import db
from tests.factories import make_user

pytestmark = pytest.mark.postgres


def test_a_session_runs_in_utc_even_where_its_connection_asks_for_another_zone(app):
    # A zone given in the connection's options stands for a server or role default.
    engine = create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"],
        connect_args={"options": "-c TimeZone=America/Vancouver -c application_name=zones"},
    )
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW TimeZone")).scalar_one() == "UTC"
            assert connection.execute(text("SHOW application_name")).scalar_one() == "zones"
    finally:
        engine.dispose()


def test_timestamps_arrive_in_pythons_own_utc(app):
    # psycopg gives a session's zone as tzinfo; only a session in UTC gives datetime.UTC,
    # which UTCDateTime then keeps as it is instead of converting every value.
    with app.app_context():
        user_id = make_user(email="utc@example.com").id
        db.session.expunge_all()
        raw = db.session.execute(
            text("SELECT created_at FROM users WHERE id = :id"), {"id": user_id}
        )
        assert raw.scalar_one().tzinfo is UTC
        assert db.session.get(User, user_id).created_at.tzinfo is UTC
