"""The template helpers that tables call once per row."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from portal.pages.templating import audit_changes, badge, breakable_email, credit_change
from portal.timeutil import company_deadline, company_deadline_day


def test_a_badge_reads_as_words_and_escapes_what_it_is_given():
    assert badge("waiting_on_customer") == (
        '<span class="badge badge-waiting_on_customer">Waiting on customer</span>'
    )
    assert badge('x"><script>') == (
        '<span class="badge badge-x&#34;&gt;&lt;script&gt;">X&#34;&gt;&lt;script&gt;</span>'
    )


def test_credit_changes_are_signed_with_separators_and_coloured_by_direction():
    assert credit_change(1200) == '<span class="credit-plus">+1,200</span>'
    assert credit_change(-5) == '<span class="credit-minus">-5</span>'


def test_a_verdict_badge_reads_the_same_for_the_enum_and_its_stored_value():
    from portal.pages.templating import verdict_badge
    from portal.refunds.eligibility import Verdict

    expected = '<span class="badge badge-needs_review">Needs a closer look</span>'
    assert verdict_badge(Verdict.NEEDS_REVIEW) == expected
    assert verdict_badge("needs_review") == expected


def test_a_csrf_field_carries_the_token_the_forms_accept(app):
    import re

    from flask_wtf.csrf import validate_csrf

    from portal.pages.templating import csrf_field

    with app.test_request_context("/"):
        html = str(csrf_field())
        found = re.fullmatch(r'<input name="csrf_token" type="hidden" value="([^"]+)">', html)
        assert found, html
        validate_csrf(found.group(1))  # raises if the token is not this session's
        assert csrf_field() == html  # one token per request, however many forms


def test_without_csrf_protection_there_is_no_field(make_app):
    from portal.pages.templating import csrf_field

    unprotected = make_app(WTF_CSRF_ENABLED=False)
    with unprotected.test_request_context("/"):
        assert csrf_field() == ""


def test_url_for_each_gives_every_row_the_url_url_for_would(app):
    from flask import url_for

    from portal.db import MAX_ID
    from portal.pages.templating import url_for_each

    with app.test_request_context("/"):
        for endpoint, key in (("jobs.show", "job_id"), ("refunds.new", "purchase_id")):
            url_of = url_for_each(endpoint, key)
            for row_id in (1, 42, 1234567, MAX_ID):
                assert url_of(row_id) == url_for(endpoint, **{key: row_id})
        assert url_for_each("jobs.show", "job_id")(7) == "/jobs/7"
        assert url_for_each("refunds.new", "purchase_id")(7).endswith("?purchase_id=7")


def test_url_for_each_only_takes_integer_ids(app):
    import pytest

    from portal.pages.templating import url_for_each

    with app.test_request_context("/"):
        url_of = url_for_each("jobs.show", "job_id")
        with pytest.raises(ValueError):
            url_of("7/../../admin")


def test_audit_changes_read_field_by_field_and_leave_out_what_did_not_change():
    vancouver = {"viewer_zone": ZoneInfo("America/Vancouver")}
    shown = str(
        audit_changes(
            vancouver,
            {"status": "open", "assignee_id": None, "note": "<b>old</b>", "same": 1},
            {"status": "approved", "assignee_id": 7, "amount_cents": 500, "same": 1},
        )
    )
    assert shown == (
        '<ul class="changes">'
        "<li><strong>Status:</strong> open → approved</li>"
        "<li><strong>Assignee id:</strong> — → 7</li>"
        "<li><strong>Note:</strong> &lt;b&gt;old&lt;/b&gt; → removed</li>"
        "<li><strong>Amount:</strong> $5.00</li>"
        "</ul>"
    )
    assert str(audit_changes(vancouver, None, None)) == '<span class="muted">—</span>'
    assert "<strong>Verdict:</strong> needs review → likely eligible" in str(
        audit_changes(vancouver, {"verdict": "needs_review"}, {"verdict": "likely_eligible"})
    )
    assert "yes → no" in str(audit_changes(vancouver, {"confirmed": True}, {"confirmed": False}))
    ended = audit_changes(vancouver, {"ended_at": None}, {"ended_at": "2026-12-05T20:30:00+00:00"})
    assert "<strong>Ended at:</strong> — → Dec 5, 2026, 12:30 PM" in str(ended)
    # A time without its zone cannot be placed in the viewer's: it reads as stored.
    assert "2026-12-05T20:30:00" in str(
        audit_changes(vancouver, None, {"at": "2026-12-05T20:30:00"})
    )


def test_an_email_address_may_wrap_only_after_its_at_and_before_its_dots():
    assert str(breakable_email("pat.lee@studio.example")) == (
        "pat<wbr>.lee@<wbr>studio<wbr>.example"
    )
    assert str(breakable_email("<x>@a.b")) == "&lt;x&gt;@<wbr>a<wbr>.b"
    assert str(breakable_email(None)) == ""


def test_deadlines_read_on_the_company_calendar_with_the_zone_named():
    # Friday 23:59:59 in Vancouver is Saturday in UTC and in Tokyo.
    due = datetime(2026, 12, 12, 7, 59, 59, tzinfo=UTC)
    assert company_deadline(due) == "Fri, Dec 11, 2026, 11:59 PM Vancouver time (PST)"
    assert company_deadline_day(due) == "Fri, Dec 11, 2026"
    summer = datetime(2026, 7, 4, 6, 59, 59, tzinfo=UTC)
    assert company_deadline(summer) == "Fri, Jul 3, 2026, 11:59 PM Vancouver time (PDT)"
