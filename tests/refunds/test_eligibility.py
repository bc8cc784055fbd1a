"""The refund pre-check as a pure function: snapshots in, verdicts and sentences out.

No database and no app: every row builds an `eligibility.Snapshot` by hand and asks
`precheck(snapshot, now)`. One row per boundary of the policy.
"""

import json
from datetime import timedelta

import pytest

from portal import policy
from portal.refunds import eligibility
from portal.refunds.eligibility import (
    Action,
    IncidentFacts,
    JobFacts,
    Outcome,
    RequestReason,
    Verdict,
    precheck,
)
from tests.refunds.helpers import purchase_facts, rule, snapshot, utc, vancouver

# Paid late in the evening in Vancouver: already the next day in UTC.
PAID = vancouver(2026, 3, 1, 23, 30)
# Ten days later, well inside the window.
NOW = PAID + timedelta(days=10)


@pytest.fixture(autouse=True)
def _clean_database():
    """These tests touch no database: nothing to empty after them (and no app to build)."""
    yield


def test_the_payment_moment_is_late_evening_in_vancouver_and_next_morning_in_utc():
    assert utc(2026, 3, 2, 7, 30) == PAID


def test_every_rule_answers_once_with_a_sentence():
    check = precheck(snapshot(), NOW)
    assert [result.code for result in check.rules] == [
        "window",
        "account",
        "technical_failure",
        "duplicate",
        "outage",
        "failed_job",
        "used_credits",
        "satisfaction",
        "final_purchase",
    ]
    for result in check.rules:
        assert result.title
        assert result.outcome in set(Outcome)
        assert result.explanation.endswith("."), result


def test_the_same_snapshot_and_moment_give_the_same_check_and_it_serialises():
    case = snapshot(unused=88)
    first, second = precheck(case, NOW), precheck(case, NOW)
    assert first == second
    document = json.loads(json.dumps(first.to_json()))
    assert document["verdict"] == first.verdict.value
    assert document["recommended_cents"] == 586
    assert [item["code"] for item in document["rules"]] == [r.code for r in first.rules]
    assert document["rules"][6]["explanation"] == rule(first, "used_credits").explanation


# -- the 30-day window, counted in Vancouver calendar days -------------------------------


WINDOW_CASES = [
    # (paid at, now, outcome, paid date shown, deadline shown)
    pytest.param(
        PAID,
        vancouver(2026, 3, 30, 12, 0),
        Outcome.PASS,
        "Mar 1, 2026",
        "Mar 31, 2026",
        id="day 29",
    ),
    pytest.param(
        PAID,
        vancouver(2026, 3, 31, 1, 0),
        Outcome.PASS,
        "Mar 1, 2026",
        "Mar 31, 2026",
        id="day 30 just after midnight (more than 30x24h after paying, across DST)",
    ),
    pytest.param(
        PAID,
        vancouver(2026, 3, 31, 23, 59, 59),
        Outcome.PASS,
        "Mar 1, 2026",
        "Mar 31, 2026",
        id="day 30 last second (already April 1 in UTC)",
    ),
    pytest.param(
        PAID,
        vancouver(2026, 4, 1, 0, 0, 30),
        Outcome.FAIL,
        "Mar 1, 2026",
        "Mar 31, 2026",
        id="day 31 first minute (UTC date equals the UTC deadline)",
    ),
    pytest.param(
        PAID,
        vancouver(2026, 4, 1, 23, 0),
        Outcome.FAIL,
        "Mar 1, 2026",
        "Mar 31, 2026",
        id="day 31 evening",
    ),
    pytest.param(
        vancouver(2026, 10, 5, 23, 30),
        vancouver(2026, 11, 4, 23, 59),
        Outcome.PASS,
        "Oct 5, 2026",
        "Nov 4, 2026",
        id="day 30 after the autumn DST change",
    ),
    pytest.param(
        vancouver(2026, 10, 5, 23, 30),
        vancouver(2026, 11, 5, 0, 0, 30),
        Outcome.FAIL,
        "Oct 5, 2026",
        "Nov 4, 2026",
        id="day 31 after the autumn DST change",
    ),
]


@pytest.mark.parametrize(("paid_at", "now", "outcome", "paid_shown", "deadline"), WINDOW_CASES)
def test_window_day_30_passes_and_day_31_fails(paid_at, now, outcome, paid_shown, deadline):
    check = precheck(snapshot(purchase_facts(paid_at=paid_at), unused=88), now)
    window = rule(check, "window")
    assert window.outcome == outcome
    assert f"You paid on {paid_shown}" in window.explanation
    assert f"requests are accepted until {deadline}" in window.explanation
    assert eligibility.refund_deadline(paid_at).strftime("%b %-d, %Y") == deadline
    if outcome == Outcome.PASS:
        assert check.verdict == Verdict.NEEDS_REVIEW
        assert check.recommended_cents == 586
        assert "after that date" not in window.explanation
    else:
        assert check.verdict == Verdict.LIKELY_INELIGIBLE
        assert check.recommended_cents == 0
        assert "This request comes after that date." in window.explanation


# -- terminated account --------------------------------------------------------------------


@pytest.mark.parametrize(
    "others",
    [
        pytest.param((), id="ordinary purchase"),
        pytest.param(
            (purchase_facts(paid_at=PAID - timedelta(minutes=5), purchase_id=2),),
            id="even a duplicate charge",
        ),
    ],
)
def test_terminated_account_is_likely_ineligible(others):
    case = snapshot(unused=300, account_terminated=True, other_purchases=others)
    check = precheck(case, NOW)
    account = rule(check, "account")
    assert account.outcome == Outcome.FAIL
    assert "Terms of Use" in account.explanation
    assert check.verdict == Verdict.LIKELY_INELIGIBLE
    assert check.recommended_cents == 0
    assert check.actions == ()


def test_account_in_good_standing_passes():
    assert rule(precheck(snapshot(), NOW), "account").outcome == Outcome.PASS


# -- technical failure: paid, never credited -----------------------------------------------


@pytest.mark.parametrize(
    ("money_back", "refunded", "verdict", "cents", "actions"),
    [
        pytest.param(
            False, 0, Verdict.RESOLVED_AUTOMATICALLY, 0, (Action.ADD_MISSING_CREDITS,), id="credit"
        ),
        pytest.param(True, 0, Verdict.LIKELY_ELIGIBLE, 2000, (), id="money back: full refund"),
        pytest.param(
            True, 500, Verdict.LIKELY_ELIGIBLE, 1500, (), id="money back: minus already refunded"
        ),
    ],
)
def test_credits_never_added(money_back, refunded, verdict, cents, actions):
    purchase = purchase_facts(credited=False, refunded_cents=refunded)
    case = snapshot(purchase, reason=RequestReason.CREDITS_NOT_ADDED, money_back_instead=money_back)
    check = precheck(case, NOW)
    failure = rule(check, "technical_failure")
    assert failure.outcome == Outcome.PASS
    assert "You paid on Mar 1, 2026 but the 300 credits never reached your balance" in (
        failure.explanation
    )
    assert rule(check, "used_credits").outcome == Outcome.NOT_APPLICABLE
    assert check.verdict == verdict
    assert check.recommended_cents == cents
    assert check.recommended_credits == 0
    assert check.actions == actions
    assert check.stripe_reason == "requested_by_customer"


def test_credited_purchase_is_no_technical_failure_and_says_when_credits_came():
    check = precheck(snapshot(unused=88), NOW)
    failure = rule(check, "technical_failure")
    assert failure.outcome == Outcome.NOT_APPLICABLE
    assert failure.explanation == "The 300 credits were added on Mar 1, 2026."


# -- duplicate charge ------------------------------------------------------------------------
# The later of two payments for the same package minutes apart is the duplicate, as long as
# none of its credits were used; the purchase asked about is the Pro one paid at PAID.


@pytest.mark.parametrize(
    ("other_package", "offset", "outcome", "words"),
    [
        pytest.param("pro", timedelta(minutes=-9), Outcome.PASS, "9 minutes earlier", id="9 min"),
        pytest.param("pro", timedelta(minutes=-10), Outcome.PASS, "10 minutes earlier", id="10"),
        pytest.param(
            "pro", timedelta(minutes=-11), Outcome.NOT_APPLICABLE, "within 10 minutes", id="11"
        ),
        pytest.param(
            "pro",
            timedelta(hours=-3),
            Outcome.NOT_APPLICABLE,
            "No other Pro payment within 10 minutes",
            id="same package hours apart",
        ),
        pytest.param(
            "basic",
            timedelta(minutes=-5),
            Outcome.NOT_APPLICABLE,
            "No other Pro payment",
            id="other package 5 min",
        ),
    ],
)
def test_duplicate_charge(other_package, offset, outcome, words):
    other = purchase_facts(other_package, paid_at=PAID + offset, purchase_id=2)
    case = snapshot(unused=300, reason=RequestReason.CHARGED_TWICE, other_purchases=(other,))
    check = precheck(case, NOW)
    duplicate = rule(check, "duplicate")
    assert duplicate.outcome == outcome
    assert words in duplicate.explanation
    if outcome == Outcome.PASS:
        assert "same Pro package" in duplicate.explanation
        assert "(purchase 2) and none of this purchase's 300 credits have been used" in (
            duplicate.explanation
        )
        assert "this payment is the duplicate, and it is refunded in full." in (
            duplicate.explanation
        )
        assert check.verdict == Verdict.LIKELY_ELIGIBLE
        assert check.recommended_cents == 2000
        assert check.recommended_credits == 300
        assert check.stripe_reason == "duplicate"
    else:
        assert check.verdict == Verdict.NEEDS_REVIEW
        assert check.stripe_reason == "requested_by_customer"


@pytest.mark.parametrize(
    "unused",
    [pytest.param(299, id="one credit used"), pytest.param(0, id="all of them used")],
)
def test_a_second_purchase_whose_credits_were_used_is_no_duplicate(unused):
    # FIFO spends the first purchase's credits first: using any of the second purchase's
    # means the customer used more than one package's worth, on purpose.
    first = purchase_facts(paid_at=PAID - timedelta(minutes=3), purchase_id=2, unused=0)
    used_up_at = NOW - timedelta(days=1) if unused == 0 else None
    case = snapshot(
        unused=unused,
        used_up_at=used_up_at,
        reason=RequestReason.CHARGED_TWICE,
        other_purchases=(first,),
    )
    check = precheck(case, NOW)
    duplicate = rule(check, "duplicate")
    assert duplicate.outcome == Outcome.NOT_APPLICABLE
    assert (
        f"You paid for the same Pro package 3 minutes earlier (purchase 2), but "
        f"{300 - unused} of this purchase's 300 credits have been used: it is a second "
        "purchase, not a duplicate charge." == duplicate.explanation
    )
    assert check.stripe_reason == "requested_by_customer"
    if unused:
        assert check.verdict == Verdict.NEEDS_REVIEW
        assert check.recommended_cents == 1993  # the unused share, not the full price
    else:
        assert check.verdict == Verdict.LIKELY_INELIGIBLE
        assert check.recommended_cents == 0


@pytest.mark.parametrize(
    ("first_card", "second_card", "duplicate"),
    [
        pytest.param("fp_card_a", "fp_card_a", True, id="the same card twice"),
        pytest.param("fp_card_a", "fp_card_b", False, id="another card"),
        pytest.param(None, "fp_card_b", True, id="the first card not known"),
        pytest.param("fp_card_a", None, True, id="the second card not known"),
    ],
)
def test_a_duplicate_is_paid_with_the_same_card(first_card, second_card, duplicate):
    """Two unused payments for one package minutes apart are a duplicate charge when the
    same card paid both; with another card the customer bought twice on purpose. Where
    Stripe did not say which card, the rule does not hold the card against the customer."""
    first = purchase_facts(paid_at=PAID - timedelta(minutes=3), purchase_id=2, card=first_card)
    second = purchase_facts(paid_at=PAID, purchase_id=1, card=second_card)

    asked_on_second = precheck(
        snapshot(second, reason=RequestReason.CHARGED_TWICE, other_purchases=(first,)), NOW
    )
    asked_on_first = precheck(
        snapshot(first, reason=RequestReason.CHARGED_TWICE, other_purchases=(second,)), NOW
    )

    on_second, on_first = rule(asked_on_second, "duplicate"), rule(asked_on_first, "duplicate")
    if duplicate:
        assert on_second.outcome == Outcome.PASS
        assert asked_on_second.recommended_cents == 2000
        assert "The duplicate is the later payment, not this one: purchase 1" in (
            on_first.explanation
        )
    else:
        assert on_second.outcome == Outcome.NOT_APPLICABLE
        assert on_second.explanation == (
            "You paid for the same Pro package 3 minutes earlier (purchase 2) with a "
            "different card: a second purchase, not a duplicate charge."
        )
        assert on_first.explanation == (
            "You paid for the same Pro package again 3 minutes later (purchase 1) with a "
            "different card: a second purchase, not a duplicate charge."
        )
        assert asked_on_second.stripe_reason == "requested_by_customer"
        assert asked_on_second.verdict == Verdict.NEEDS_REVIEW


def test_a_payment_on_another_card_in_between_does_not_hide_the_duplicate():
    """Card A, then card B, then card A again, minutes apart and unused: the third payment
    repeats the first; the one on card B in between is a purchase of its own."""
    first = purchase_facts(paid_at=PAID - timedelta(minutes=3), purchase_id=1, card="fp_a")
    between = purchase_facts(paid_at=PAID - timedelta(minutes=1), purchase_id=2, card="fp_b")
    third = purchase_facts(paid_at=PAID, purchase_id=3, card="fp_a")

    check = precheck(
        snapshot(third, reason=RequestReason.CHARGED_TWICE, other_purchases=(first, between)),
        NOW,
    )

    duplicate = rule(check, "duplicate")
    assert duplicate.outcome == Outcome.PASS
    assert "3 minutes earlier (purchase 1)" in duplicate.explanation
    assert check.recommended_cents == 2000


def test_asked_on_the_first_payment_the_check_names_the_later_one_as_the_duplicate():
    # The first payment's credits are the ones spent first, so they may be used already:
    # refunding it in full would refund used credits.
    second = purchase_facts(paid_at=PAID + timedelta(minutes=4), purchase_id=2)
    case = snapshot(unused=100, reason=RequestReason.CHARGED_TWICE, other_purchases=(second,))
    check = precheck(case, NOW)
    duplicate = rule(check, "duplicate")
    assert duplicate.outcome == Outcome.NOT_APPLICABLE
    assert duplicate.explanation == (
        "The duplicate is the later payment, not this one: purchase 2, the same Pro "
        "package paid 4 minutes after this one with none of its credits used. That "
        "payment is the one refunded in full."
    )
    assert check.verdict == Verdict.NEEDS_REVIEW
    assert "ask for the refund on that purchase" in check.summary
    assert check.recommended_cents == 0
    assert check.recommended_credits == 0
    assert check.stripe_reason == "requested_by_customer"


def test_asked_on_the_first_payment_for_another_reason_the_duplicate_is_only_mentioned():
    second = purchase_facts(paid_at=PAID + timedelta(minutes=4), purchase_id=2)
    case = snapshot(unused=100, reason=RequestReason.OTHER, other_purchases=(second,))
    check = precheck(case, NOW)
    assert "purchase 2, the same Pro package" in rule(check, "duplicate").explanation
    assert check.verdict == Verdict.NEEDS_REVIEW
    assert check.recommended_cents == 666  # this purchase's own unused share


def test_asked_on_the_first_payment_when_the_second_was_used_there_is_no_duplicate():
    second = purchase_facts(paid_at=PAID + timedelta(minutes=4), purchase_id=2, unused=120)
    case = snapshot(
        unused=0,
        used_up_at=NOW - timedelta(days=2),
        reason=RequestReason.CHARGED_TWICE,
        other_purchases=(second,),
    )
    check = precheck(case, NOW)
    duplicate = rule(check, "duplicate")
    assert duplicate.outcome == Outcome.NOT_APPLICABLE
    assert duplicate.explanation == (
        "You paid for the same Pro package again 4 minutes later (purchase 2) and used "
        "its credits: a second purchase, not a duplicate charge."
    )
    assert check.verdict == Verdict.LIKELY_INELIGIBLE
    assert check.recommended_cents == 0


def test_three_payments_in_a_row_name_both_later_ones_from_the_first():
    later = (
        purchase_facts(paid_at=PAID + timedelta(minutes=2), purchase_id=2),
        purchase_facts(paid_at=PAID + timedelta(minutes=5), purchase_id=3),
    )
    case = snapshot(unused=300, reason=RequestReason.CHARGED_TWICE, other_purchases=later)
    duplicate = rule(precheck(case, NOW), "duplicate")
    assert "not this one: purchases 2 and 3, the same Pro package paid 2 minutes" in (
        duplicate.explanation
    )


def test_payments_at_the_same_moment_make_only_the_higher_id_the_duplicate():
    twin = purchase_facts(paid_at=PAID, purchase_id=2)
    asked_on_first = snapshot(unused=300, other_purchases=(twin,))
    assert rule(precheck(asked_on_first, NOW), "duplicate").outcome == Outcome.NOT_APPLICABLE
    asked_on_second = snapshot(
        purchase_facts(purchase_id=2),
        unused=300,
        other_purchases=(purchase_facts(paid_at=PAID, purchase_id=1),),
    )
    assert rule(precheck(asked_on_second, NOW), "duplicate").outcome == Outcome.PASS


def test_no_duplicate_once_the_other_payment_was_refunded_in_full():
    refunded = purchase_facts(
        paid_at=PAID - timedelta(minutes=3), purchase_id=2, refunded_cents=2000
    )
    check = precheck(snapshot(unused=300, other_purchases=(refunded,)), NOW)
    assert rule(check, "duplicate").outcome == Outcome.NOT_APPLICABLE
    assert check.stripe_reason == "requested_by_customer"


def test_duplicate_refund_never_exceeds_what_is_left_to_refund():
    other = purchase_facts(paid_at=PAID - timedelta(minutes=3), purchase_id=2)
    case = snapshot(purchase_facts(refunded_cents=1200), unused=300, other_purchases=(other,))
    check = precheck(case, NOW)
    assert check.verdict == Verdict.LIKELY_ELIGIBLE
    assert check.recommended_cents == 800


# -- service unavailability --------------------------------------------------------------
# "more than 48 consecutive hours that prevents you from using purchased credits": one
# outage must overlap the time the customer held unused credits of this purchase (from
# when they were added until the last was spent, or until now) by MORE than 48 hours.


CREDITED = PAID
LATER = CREDITED + timedelta(days=10)
DAY_2 = CREDITED + timedelta(days=1)


def _down(start, hours=None, minutes=0, title="Render farm down"):
    ended = None if hours is None else start + timedelta(hours=hours, minutes=minutes)
    return IncidentFacts(title, start, ended)


@pytest.mark.parametrize(
    ("incidents", "used_up_at", "unused", "outcome", "words"),
    [
        pytest.param(
            (_down(DAY_2, 47, 59),),
            None,
            150,
            Outcome.NOT_APPLICABLE,
            "\u201cRender farm down\u201d overlapped the time you held unused credits from "
            "this purchase by 47 hours 59 minutes; the policy needs more than 48 "
            "consecutive hours.",
            id="47h59m",
        ),
        pytest.param(
            (_down(DAY_2, 48),),
            None,
            150,
            Outcome.NOT_APPLICABLE,
            "by 48 hours; the policy needs more than 48 consecutive hours.",
            id="exactly 48h is not more than 48h",
        ),
        pytest.param(
            (_down(DAY_2, 48, 1),),
            None,
            150,
            Outcome.PASS,
            # Started 2026-03-03 07:30 UTC, which is still March 2 in Vancouver.
            "\u201cRender farm down\u201d kept the platform down for more than 48 "
            "consecutive hours while you held unused credits from this purchase: 48 hours "
            "1 minute from Mar 2, 2026.",
            id="48h01m while the credits were held",
        ),
        pytest.param(
            (_down(LATER - timedelta(hours=50), title="Still down"),),
            None,
            150,
            Outcome.PASS,
            "\u201cStill down\u201d kept the platform down for more than 48 consecutive "
            "hours while you held unused credits from this purchase: 50 hours",
            id="ongoing for 50h",
        ),
        pytest.param(
            (_down(LATER - timedelta(hours=48), title="Still down"),),
            None,
            150,
            Outcome.NOT_APPLICABLE,
            "by 48 hours",
            id="ongoing for exactly 48h",
        ),
        pytest.param(
            (_down(CREDITED - timedelta(days=5), 100),),
            None,
            150,
            Outcome.NOT_APPLICABLE,
            "No outage of more than 48 consecutive hours while you held unused credits "
            "from this purchase.",
            id="ended before the credits arrived",
        ),
        pytest.param(
            (_down(CREDITED + timedelta(days=3), 72),),
            CREDITED + timedelta(days=2),
            0,
            Outcome.NOT_APPLICABLE,
            "No outage of more than 48 consecutive hours",
            id="began after the credits were used up",
        ),
        pytest.param(
            (_down(CREDITED - timedelta(hours=56), 60),),
            None,
            150,
            Outcome.NOT_APPLICABLE,
            "by 4 hours; the policy needs more than 48 consecutive hours.",
            id="60h outage, credits added 4h before it ended",
        ),
        pytest.param(
            (_down(DAY_2, 60),),
            DAY_2 + timedelta(hours=4),
            0,
            Outcome.NOT_APPLICABLE,
            "by 4 hours",
            id="60h outage, credits used up 4h after it began",
        ),
        pytest.param(
            (_down(CREDITED - timedelta(hours=24), 73),),
            None,
            150,
            Outcome.PASS,
            # Counted from when the credits arrived, not from when the outage began.
            "this purchase: 49 hours from Mar 1, 2026.",
            id="began before the credits arrived, 49h after",
        ),
        pytest.param(
            (_down(DAY_2, 30, title="First"), _down(DAY_2 + timedelta(hours=31), 30)),
            None,
            150,
            Outcome.NOT_APPLICABLE,
            "by 30 hours",
            id="two outages of 30h: not consecutive",
        ),
    ],
)
def test_outage(incidents, used_up_at, unused, outcome, words):
    case = snapshot(
        unused=unused,
        used_up_at=used_up_at,
        incidents=incidents,
        reason=RequestReason.SERVICE_UNAVAILABLE,
    )
    check = precheck(case, LATER)
    outage = rule(check, "outage")
    assert outage.title == "Downtime of more than 48 consecutive hours"
    assert outage.outcome == outcome
    assert words in outage.explanation
    if outcome == Outcome.PASS:
        assert check.verdict == Verdict.LIKELY_ELIGIBLE
        assert "more than 48 consecutive hours" in check.summary
        # 150 of 300 Pro credits: half of $20.00.
        assert check.recommended_cents == 1000
        assert check.recommended_credits == 150
    elif unused:
        assert check.verdict == Verdict.NEEDS_REVIEW
    else:
        assert check.verdict == Verdict.LIKELY_INELIGIBLE


def test_the_outage_rule_reads_its_threshold_from_the_policy(monkeypatch):
    monkeypatch.setattr(policy, "DOWNTIME_THRESHOLD_HOURS", 72)
    case = snapshot(incidents=(_down(DAY_2, 60),), reason=RequestReason.SERVICE_UNAVAILABLE)
    outage = rule(precheck(case, LATER), "outage")
    assert outage.title == "Downtime of more than 72 consecutive hours"
    assert outage.outcome == Outcome.NOT_APPLICABLE
    assert outage.explanation.endswith(
        "by 60 hours; the policy needs more than 72 consecutive hours."
    )


# -- failed job -------------------------------------------------------------------------------


def _job(status="failed", reason="platform_error", restored=False, restored_at=None):
    return JobFacts(
        id=7,
        operation="upscale",
        credits=12,
        status=status,
        failure_reason=reason,
        credits_restored=restored,
        restored_at=restored_at,
    )


@pytest.mark.parametrize(
    ("job", "outcome", "verdict", "actions", "words"),
    [
        pytest.param(
            _job(restored=True, restored_at=vancouver(2026, 3, 5, 23, 0)),
            Outcome.PASS,
            Verdict.LIKELY_INELIGIBLE,
            (),
            "Job 7 failed on our side and its 12 credits were already returned to your "
            "balance on Mar 5, 2026.",
            id="platform error, already restored: says when",
        ),
        pytest.param(
            _job(restored=False),
            Outcome.PASS,
            Verdict.RESOLVED_AUTOMATICALLY,
            (Action.RESTORE_JOB_CREDITS,),
            "Job 7 failed on our side and its 12 credits had not been returned yet",
            id="platform error, not restored: restore now",
        ),
        pytest.param(
            _job(reason="invalid_input"),
            Outcome.FAIL,
            Verdict.LIKELY_INELIGIBLE,
            (),
            "Job 7 failed because its input could not be processed",
            id="invalid input: not refundable",
        ),
        pytest.param(
            _job(status="succeeded", reason=None),
            Outcome.FAIL,
            Verdict.LIKELY_INELIGIBLE,
            (),
            "Job 7 (upscale) did not fail.",
            id="job succeeded",
        ),
    ],
)
def test_failed_job(job, outcome, verdict, actions, words):
    case = snapshot(unused=100, job=job, reason=RequestReason.JOB_FAILED)
    check = precheck(case, NOW)
    failed = rule(check, "failed_job")
    assert failed.outcome == outcome
    assert words in failed.explanation
    assert check.verdict == verdict
    assert check.actions == actions
    assert check.recommended_cents == 0


def test_no_job_named():
    assert rule(precheck(snapshot(), NOW), "failed_job").outcome == Outcome.NOT_APPLICABLE


# -- used credits and what the unused ones are worth -------------------------------------


@pytest.mark.parametrize(
    ("package", "unused", "cents", "words"),
    [
        pytest.param("starter", 17, 170, "17 of the 50 credits are unused, worth $1.70", id="S"),
        pytest.param("basic", 7, 58, "7 of the 120 credits are unused, worth $0.58", id="B"),
        pytest.param("pro", 88, 586, "88 of the 300 credits are unused, worth $5.86", id="P 88"),
        pytest.param("pro", 1, 6, "1 of the 300 credits are unused, worth $0.06", id="P 1"),
        pytest.param("pro", 300, 2000, "300 of the 300 credits are unused, worth $20.00", id="P"),
        pytest.param(
            "premium", 333, 1665, "333 of the 1,000 credits are unused, worth $16.65", id="Pm"
        ),
        pytest.param(
            "premium", 999, 4995, "999 of the 1,000 credits are unused, worth $49.95", id="Pm 999"
        ),
    ],
)
def test_partly_used_purchase_recommends_the_unused_share_rounded_down(
    package, unused, cents, words
):
    check = precheck(snapshot(purchase_facts(package), unused=unused), NOW)
    used = rule(check, "used_credits")
    assert used.outcome == Outcome.PASS
    assert words in used.explanation
    assert check.verdict == Verdict.NEEDS_REVIEW
    assert check.recommended_cents == cents
    assert check.recommended_credits == unused


def test_all_credits_used_is_likely_ineligible():
    case = snapshot(unused=0, used_up_at=PAID + timedelta(days=2))
    check = precheck(case, NOW)
    used = rule(check, "used_credits")
    assert used.outcome == Outcome.FAIL
    assert "All 300 credits of this purchase have been used" in used.explanation
    assert check.verdict == Verdict.LIKELY_INELIGIBLE
    assert check.recommended_cents == 0
    assert check.recommended_credits == 0


@pytest.mark.parametrize(
    ("package", "unused", "refunded", "cents"),
    [
        pytest.param("pro", 250, 1000, 1000, id="pro: $16.66 of unused, $10 left"),
        pytest.param("premium", 1000, 4999, 1, id="premium: 1 cent left"),
        pytest.param("starter", 50, 0, 500, id="starter: all unused, nothing refunded"),
    ],
)
def test_recommendation_never_exceeds_amount_minus_already_refunded(
    package, unused, refunded, cents
):
    case = snapshot(purchase_facts(package, refunded_cents=refunded), unused=unused)
    assert precheck(case, NOW).recommended_cents == cents


@pytest.mark.parametrize("package", policy.PACKAGES, ids=lambda package: package.code)
def test_every_unused_count_of_every_package_is_priced_down_to_the_cent(package):
    for refunded in (0, package.price_cents // 3):
        purchase = purchase_facts(package.code, refunded_cents=refunded)
        for unused in range(1, package.credits + 1):
            check = precheck(snapshot(purchase, unused=unused), NOW)
            exact = unused * package.price_cents // package.credits
            assert check.recommended_cents == min(exact, package.price_cents - refunded)
            # Rounded down: never more than the credits' exact share of the price.
            assert check.recommended_cents * package.credits <= unused * package.price_cents


# -- dissatisfaction, and cases that are filed anyway --------------------------------------


def test_not_happy_is_not_refundable():
    check = precheck(snapshot(unused=88, reason=RequestReason.NOT_HAPPY), NOW)
    satisfaction = rule(check, "satisfaction")
    assert satisfaction.outcome == Outcome.FAIL
    assert "does not refund dissatisfaction" in satisfaction.explanation
    assert check.verdict == Verdict.LIKELY_INELIGIBLE
    assert check.recommended_cents == 0


@pytest.mark.parametrize("reason", [r for r in RequestReason if r != RequestReason.NOT_HAPPY])
def test_other_reasons_are_not_about_quality(reason):
    check = precheck(snapshot(unused=88, reason=reason), NOW)
    assert rule(check, "satisfaction").outcome == Outcome.NOT_APPLICABLE


@pytest.mark.parametrize(
    ("now", "unused", "reason"),
    [
        pytest.param(PAID + timedelta(days=45), 88, RequestReason.OTHER, id="over 30 days"),
        pytest.param(NOW, 0, RequestReason.OTHER, id="all used"),
        pytest.param(NOW, 88, RequestReason.NOT_HAPPY, id="not happy"),
        pytest.param(PAID + timedelta(days=45), 0, RequestReason.NOT_HAPPY, id="all three"),
    ],
)
def test_cases_the_policy_excludes_are_likely_ineligible_but_still_checked(now, unused, reason):
    used_up_at = PAID + timedelta(days=1) if unused == 0 else None
    check = precheck(snapshot(unused=unused, reason=reason, used_up_at=used_up_at), now)
    assert check.verdict == Verdict.LIKELY_INELIGIBLE
    assert check.recommended_cents == 0
    assert check.actions == ()
    assert len(check.rules) == 9


# -- credits no longer needed: "considered final once the credits have been added" -------


@pytest.mark.parametrize(
    ("now", "unused", "rules", "summary"),
    [
        pytest.param(
            NOW,
            88,
            {"window": Outcome.PASS, "used_credits": Outcome.PASS, "final_purchase": Outcome.FAIL},
            f"{policy.PURCHASES_FINAL} The policy does not refund credits you no longer need.",
            id="unused, within 30 days",
        ),
        pytest.param(
            NOW,
            0,
            {"used_credits": Outcome.FAIL, "final_purchase": Outcome.FAIL},
            "The policy generally does not refund this case.",
            id="all used",
        ),
        pytest.param(
            PAID + timedelta(days=45),
            88,
            {"window": Outcome.FAIL, "final_purchase": Outcome.FAIL},
            "Requests more than 30 days after the purchase are generally not refunded.",
            id="over 30 days",
        ),
    ],
)
def test_credits_no_longer_needed_are_final_once_added(now, unused, rules, summary):
    used_up_at = PAID + timedelta(days=1) if unused == 0 else None
    case = snapshot(unused=unused, reason=RequestReason.NO_LONGER_NEEDED, used_up_at=used_up_at)
    check = precheck(case, now)
    assert {code: rule(check, code).outcome for code in rules} == rules
    assert check.verdict == Verdict.LIKELY_INELIGIBLE
    assert check.summary == summary
    assert check.recommended_cents == 0
    assert check.recommended_credits == 0
    assert rule(check, "final_purchase").explanation == (
        "All credit purchases on AI Image Studio are considered final once the credits have "
        "been added to your account. These were added on Mar 1, 2026; no longer needing "
        "them is not one of the cases in which the policy refunds a purchase."
    )


def test_credits_no_longer_needed_that_never_arrived_are_not_final():
    case = snapshot(purchase=purchase_facts(credited=False), reason=RequestReason.NO_LONGER_NEEDED)
    check = precheck(case, NOW)
    assert rule(check, "final_purchase").outcome == Outcome.NOT_APPLICABLE
    assert rule(check, "technical_failure").outcome == Outcome.PASS
    assert check.verdict == Verdict.RESOLVED_AUTOMATICALLY
    assert check.actions == (Action.ADD_MISSING_CREDITS,)


def test_credits_no_longer_needed_after_a_long_outage_are_a_case_the_policy_refunds():
    case = snapshot(
        unused=150,
        reason=RequestReason.NO_LONGER_NEEDED,
        incidents=(_down(DAY_2, 49),),
    )
    check = precheck(case, LATER)
    assert rule(check, "outage").outcome == Outcome.PASS
    assert rule(check, "final_purchase").outcome == Outcome.FAIL
    assert check.verdict == Verdict.LIKELY_ELIGIBLE
    assert check.recommended_cents == 1000
    assert check.recommended_credits == 150


def test_credits_no_longer_needed_paid_twice_is_a_duplicate_refunded_in_full():
    first = purchase_facts(paid_at=PAID - timedelta(minutes=3), purchase_id=2, unused=0)
    case = snapshot(unused=300, reason=RequestReason.NO_LONGER_NEEDED, other_purchases=(first,))
    check = precheck(case, NOW)
    assert rule(check, "duplicate").outcome == Outcome.PASS
    assert check.verdict == Verdict.LIKELY_ELIGIBLE
    assert check.recommended_cents == 2000


@pytest.mark.parametrize(
    "reason", [r for r in RequestReason if r != RequestReason.NO_LONGER_NEEDED]
)
def test_other_reasons_are_not_about_credits_no_longer_needed(reason):
    check = precheck(snapshot(unused=88, reason=reason), NOW)
    final = rule(check, "final_purchase")
    assert final.outcome == Outcome.NOT_APPLICABLE
    assert final.explanation == "This request is not about credits you no longer need."
