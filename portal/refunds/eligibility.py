"""The refund pre-check: what the policy says about one customer's case, and why.

A pure function of a snapshot of the customer's data and `now`. No database, no Flask:
the same snapshot and moment always give the same verdict, which is what lets staff see
the check as it was when the request was filed beside the check as it is today.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from portal import policy
from portal.timeutil import DATE_FORMAT, company_date


class Outcome(StrEnum):
    PASS = "pass"  # noqa: S105  (a rule outcome, not a password)
    FAIL = "fail"
    NOT_APPLICABLE = "not_applicable"


class Verdict(StrEnum):
    LIKELY_ELIGIBLE = "likely_eligible"
    LIKELY_INELIGIBLE = "likely_ineligible"
    NEEDS_REVIEW = "needs_review"
    RESOLVED_AUTOMATICALLY = "resolved_automatically"


class Action(StrEnum):
    """Something the portal can settle by itself, without staff."""

    ADD_MISSING_CREDITS = "add_missing_credits"
    RESTORE_JOB_CREDITS = "restore_job_credits"


class RequestReason(StrEnum):
    CREDITS_NOT_ADDED = "credits_not_added"
    CHARGED_TWICE = "charged_twice"
    SERVICE_UNAVAILABLE = "service_unavailable"
    JOB_FAILED = "job_failed"
    NOT_HAPPY = "not_happy"
    NO_LONGER_NEEDED = "no_longer_needed"
    OTHER = "other"


@dataclass(frozen=True)
class PurchaseFacts:
    id: int
    package_code: str
    credits: int
    amount_cents: int
    currency: str
    paid_at: datetime | None
    credited_at: datetime | None
    refunded_cents: int = 0
    # What is left of its credits: it tells a duplicate charge from a purchase made twice
    # on purpose. (For the purchase asked about, the rules read `Snapshot.unused_credits`.)
    unused_credits: int = 0
    # Stripe's fingerprint of the card paid with (None when not known): the same card
    # twice is what a duplicate charge looks like; another card is another purchase.
    payment_method_fingerprint: str | None = None


@dataclass(frozen=True)
class JobFacts:
    id: int
    operation: str
    credits: int
    status: str
    failure_reason: str | None
    credits_restored: bool
    restored_at: datetime | None = None


@dataclass(frozen=True)
class IncidentFacts:
    title: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class Snapshot:
    """Everything the rules look at, gathered in one place by the refunds service."""

    reason: RequestReason
    purchase: PurchaseFacts
    unused_credits: int
    # When the purchase's last credit was spent; None while some are unused.
    used_up_at: datetime | None
    other_purchases: tuple[PurchaseFacts, ...] = ()
    job: JobFacts | None = None
    incidents: tuple[IncidentFacts, ...] = ()
    account_terminated: bool = False
    money_back_instead: bool = False


@dataclass(frozen=True)
class RuleResult:
    code: str
    title: str
    outcome: Outcome
    explanation: str


@dataclass(frozen=True)
class Precheck:
    verdict: Verdict
    rules: tuple[RuleResult, ...]
    recommended_cents: int
    recommended_credits: int
    stripe_reason: str
    actions: tuple[Action, ...] = field(default=())
    summary: str = ""

    def to_json(self) -> dict:
        """A JSON-ready record of the check, stored with the request."""
        document = asdict(self)
        document["rules"] = [asdict(rule) for rule in self.rules]
        return document


def _day(moment: datetime) -> str:
    return company_date(moment).strftime(DATE_FORMAT)


def _money(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def duplicate_window() -> timedelta:
    return timedelta(minutes=policy.DUPLICATE_WINDOW_MINUTES)


def refund_deadline(paid_at: datetime):
    """The last calendar day (company timezone) on which a request is within the window."""
    return company_date(paid_at) + timedelta(days=policy.REFUND_WINDOW_DAYS)


# -- the rules --------------------------------------------------------------------------


def window_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = f"Requested within {policy.REFUND_WINDOW_DAYS} days"
    paid_at = snapshot.purchase.paid_at
    if paid_at is None:
        return RuleResult(
            "window",
            title,
            Outcome.NOT_APPLICABLE,
            "This purchase was never paid, so there is nothing to refund.",
        )
    deadline = refund_deadline(paid_at)
    within = company_date(now) <= deadline
    return RuleResult(
        "window",
        title,
        Outcome.PASS if within else Outcome.FAIL,
        f"You paid on {_day(paid_at)}; requests are accepted until "
        f"{deadline.strftime(DATE_FORMAT)}, {policy.COMPANY_TIMEZONE_NAME} time "
        f"({policy.REFUND_WINDOW_DAYS} days)."
        + ("" if within else " This request comes after that date."),
    )


def account_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = "Account in good standing"
    if snapshot.account_terminated:
        return RuleResult(
            "account",
            title,
            Outcome.FAIL,
            "This account was closed for a violation of the Terms of Use, "
            "which the policy excludes from refunds.",
        )
    return RuleResult("account", title, Outcome.PASS, "Your account is in good standing.")


def technical_failure_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = "Credits added after payment"
    purchase = snapshot.purchase
    if purchase.paid_at is None:
        return RuleResult(
            "technical_failure", title, Outcome.NOT_APPLICABLE, "This purchase was not paid."
        )
    if purchase.credited_at is not None:
        return RuleResult(
            "technical_failure",
            title,
            Outcome.NOT_APPLICABLE,
            f"The {purchase.credits:,} credits were added on {_day(purchase.credited_at)}.",
        )
    return RuleResult(
        "technical_failure",
        title,
        Outcome.PASS,
        f"You paid on {_day(purchase.paid_at)} but the {purchase.credits:,} "
        "credits never reached your balance: a system error the policy covers "
        "in full.",
    )


def _untouched(purchase: PurchaseFacts, unused: int) -> bool:
    """None of the purchase's credits were spent (or they never arrived to be spent)."""
    return purchase.credited_at is None or unused >= purchase.credits


def _paid_again(first: PurchaseFacts, second: PurchaseFacts) -> bool:
    """`second` pays for the same package as `first`, within the duplicate window after it.

    Only charges that still stand count: one refunded in full no longer charged anyone.
    Payments made in the same instant are told apart by id, so only one is the later.
    """
    return (
        first.id != second.id
        and first.package_code == second.package_code
        and first.paid_at is not None
        and second.paid_at is not None
        and (first.paid_at, first.id) < (second.paid_at, second.id)
        and second.paid_at - first.paid_at <= duplicate_window()
        and first.refunded_cents < first.amount_cents
        and second.refunded_cents < second.amount_cents
    )


def _other_card(first: PurchaseFacts, second: PurchaseFacts) -> bool:
    """Both payments' cards are known, and they are different cards."""
    return (
        first.payment_method_fingerprint is not None
        and second.payment_method_fingerprint is not None
        and first.payment_method_fingerprint != second.payment_method_fingerprint
    )


def _later_duplicates(snapshot: Snapshot) -> tuple[PurchaseFacts, ...]:
    """The purchases that duplicate the one asked about: paid again soon after with the
    same card (or one not known), none of their credits used."""
    return tuple(
        other
        for other in snapshot.other_purchases
        if _paid_again(snapshot.purchase, other)
        and not _other_card(snapshot.purchase, other)
        and _untouched(other, other.unused_credits)
    )


def _minutes(first: PurchaseFacts, second: PurchaseFacts) -> str:
    minutes = int((second.paid_at - first.paid_at).total_seconds() // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _ids(purchases: tuple[PurchaseFacts, ...]) -> str:
    ids = [str(purchase.id) for purchase in purchases]
    if len(ids) == 1:
        return f"purchase {ids[0]}"
    return f"purchases {', '.join(ids[:-1])} and {ids[-1]}"


def duplicate_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = "Charged more than once"
    purchase = snapshot.purchase
    package = purchase.package_code.capitalize()
    if purchase.paid_at is None:
        return RuleResult("duplicate", title, Outcome.NOT_APPLICABLE, "This purchase was not paid.")
    # Of two payments for the same package minutes apart, the later is the duplicate, but
    # only when the same card paid both (where Stripe told us the card) and its credits
    # are untouched: a customer who used them, or paid with another card, meant to buy
    # twice.
    earlier = [other for other in snapshot.other_purchases if _paid_again(other, purchase)]
    same_card = [other for other in earlier if not _other_card(other, purchase)]
    if earlier:
        # The payment this one repeats: the latest earlier one made with the same card;
        # only when every earlier one was on another card is this a second purchase.
        first = (same_card or earlier)[-1]
        if not same_card:
            return RuleResult(
                "duplicate",
                title,
                Outcome.NOT_APPLICABLE,
                f"You paid for the same {package} package {_minutes(first, purchase)} "
                f"earlier (purchase {first.id}) with a different card: a second purchase, "
                "not a duplicate charge.",
            )
        if _untouched(purchase, snapshot.unused_credits):
            return RuleResult(
                "duplicate",
                title,
                Outcome.PASS,
                f"You paid for the same {package} package {_minutes(first, purchase)} "
                f"earlier (purchase {first.id}) and none of this purchase's "
                f"{purchase.credits:,} credits have been used: this payment is the "
                "duplicate, and it is refunded in full.",
            )
        used = purchase.credits - snapshot.unused_credits
        return RuleResult(
            "duplicate",
            title,
            Outcome.NOT_APPLICABLE,
            f"You paid for the same {package} package {_minutes(first, purchase)} "
            f"earlier (purchase {first.id}), but {used:,} of this purchase's "
            f"{purchase.credits:,} credits have been used: it is a second purchase, not "
            "a duplicate charge.",
        )
    duplicates = _later_duplicates(snapshot)
    if duplicates:
        return RuleResult(
            "duplicate",
            title,
            Outcome.NOT_APPLICABLE,
            f"The duplicate is the later payment, not this one: {_ids(duplicates)}, the "
            f"same {package} package paid {_minutes(purchase, duplicates[0])} after this "
            "one with none of its credits used. That payment is the one refunded in full.",
        )
    repeats = tuple(other for other in snapshot.other_purchases if _paid_again(purchase, other))
    if repeats:
        how = (
            "with a different card"
            if all(_other_card(purchase, other) for other in repeats)
            else "and used its credits"
        )
        return RuleResult(
            "duplicate",
            title,
            Outcome.NOT_APPLICABLE,
            f"You paid for the same {package} package again {_minutes(purchase, repeats[0])} "
            f"later ({_ids(repeats)}) {how}: a second purchase, not a duplicate charge.",
        )
    return RuleResult(
        "duplicate",
        title,
        Outcome.NOT_APPLICABLE,
        f"No other {package} payment within {policy.DUPLICATE_WINDOW_MINUTES} minutes of this one.",
    )


def _held_overlap(snapshot: Snapshot, incident: IncidentFacts, now: datetime) -> timedelta:
    """How long `incident` lasted while the customer held unused credits of this purchase.

    The credits are held from when they were added until the last one was spent (or until
    `now`, while some are left); an incident still open runs until `now`.
    """
    held_from = snapshot.purchase.credited_at
    if held_from is None:
        return timedelta(0)
    held_until = snapshot.used_up_at or now
    overlap = min(incident.ended_at or now, held_until) - max(incident.started_at, held_from)
    return max(overlap, timedelta(0))


def _length(span: timedelta) -> str:
    hours, rest = divmod(int(span.total_seconds()) // 60, 60)
    words = f"{hours} hour{'s' if hours != 1 else ''}"
    if rest:
        words += f" {rest} minute{'s' if rest != 1 else ''}"
    return words


def outage_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = f"Downtime of {policy.downtime_words()}"
    threshold = timedelta(hours=policy.DOWNTIME_THRESHOLD_HOURS)
    overlaps = [
        (_held_overlap(snapshot, incident, now), incident) for incident in snapshot.incidents
    ]
    longest = max(overlaps, key=lambda pair: pair[0], default=None)
    # The policy counts one outage's consecutive hours, and only those that kept the
    # customer from using this purchase's credits: time before they arrived or after the
    # last was spent does not count, nor does a second outage added to the first.
    if longest is not None and longest[0] > threshold:
        overlap, incident = longest
        return RuleResult(
            "outage",
            title,
            Outcome.PASS,
            f"\u201c{incident.title}\u201d kept the platform down for "
            f"{policy.downtime_words()} while you held unused credits from this "
            f"purchase: {_length(overlap)} from "
            f"{_day(max(incident.started_at, snapshot.purchase.credited_at))}.",
        )
    if longest is not None and longest[0] > timedelta(0):
        overlap, incident = longest
        return RuleResult(
            "outage",
            title,
            Outcome.NOT_APPLICABLE,
            f"\u201c{incident.title}\u201d overlapped the time you held unused credits "
            f"from this purchase by {_length(overlap)}; the policy needs "
            f"{policy.downtime_words()}.",
        )
    return RuleResult(
        "outage",
        title,
        Outcome.NOT_APPLICABLE,
        f"No outage of {policy.downtime_words()} while you held unused credits from this purchase.",
    )


def failed_job_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    return job_rule(snapshot.job)


def job_rule(job: JobFacts | None) -> RuleResult:
    """What the policy says about one job's credits ("Failed Processing Jobs").

    On its own, so that the form can say it about a job before anything is filed.
    """
    title = "Failed job refunded"
    if job is None:
        return RuleResult(
            "failed_job", title, Outcome.NOT_APPLICABLE, "No job is named in this request."
        )
    if job.status != "failed":
        return RuleResult(
            "failed_job", title, Outcome.FAIL, f"Job {job.id} ({job.operation}) did not fail."
        )
    if job.failure_reason == "invalid_input":
        return RuleResult(
            "failed_job",
            title,
            Outcome.FAIL,
            f"Job {job.id} failed because its input could not be processed; the "
            "policy refunds only failures caused by the platform.",
        )
    if job.credits_restored:
        when = f" on {_day(job.restored_at)}" if job.restored_at else ""
        return RuleResult(
            "failed_job",
            title,
            Outcome.PASS,
            f"Job {job.id} failed on our side and its {job.credits:,} credits were "
            f"already returned to your balance{when}.",
        )
    return RuleResult(
        "failed_job",
        title,
        Outcome.PASS,
        f"Job {job.id} failed on our side and its {job.credits:,} credits had not "
        "been returned yet: the portal returns them now.",
    )


def used_credits_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = "Unused credits"
    purchase = snapshot.purchase
    if purchase.credited_at is None:
        return RuleResult(
            "used_credits",
            title,
            Outcome.NOT_APPLICABLE,
            "The credits were never added, so none were used.",
        )
    unused = snapshot.unused_credits
    package = policy.PACKAGES_BY_CODE.get(purchase.package_code)
    if unused == 0:
        return RuleResult(
            "used_credits",
            title,
            Outcome.FAIL,
            f"All {purchase.credits:,} credits of this purchase have been used; "
            "used credits are not refunded.",
        )
    value = package.refund_for_unused(unused) if package else 0
    return RuleResult(
        "used_credits",
        title,
        Outcome.PASS,
        f"{unused:,} of the {purchase.credits:,} credits are unused, worth "
        f"{_money(value)} at this package's price.",
    )


def satisfaction_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = "Not about the quality of results"
    if snapshot.reason == RequestReason.NOT_HAPPY:
        return RuleResult(
            "satisfaction",
            title,
            Outcome.FAIL,
            "Results vary with the input and the nature of AI processing, so the "
            "policy does not refund dissatisfaction with them.",
        )
    return RuleResult(
        "satisfaction",
        title,
        Outcome.NOT_APPLICABLE,
        "This request is not about the quality of results.",
    )


def final_purchase_rule(snapshot: Snapshot, now: datetime) -> RuleResult:
    title = "Purchases are final once credited"
    purchase = snapshot.purchase
    if snapshot.reason != RequestReason.NO_LONGER_NEEDED:
        return RuleResult(
            "final_purchase",
            title,
            Outcome.NOT_APPLICABLE,
            "This request is not about credits you no longer need.",
        )
    if purchase.credited_at is None:
        return RuleResult(
            "final_purchase",
            title,
            Outcome.NOT_APPLICABLE,
            "The credits were never added, so the purchase is not final.",
        )
    return RuleResult(
        "final_purchase",
        title,
        Outcome.FAIL,
        f"{policy.PURCHASES_FINAL} These were added on {_day(purchase.credited_at)}; no "
        "longer needing them is not one of the cases in which the policy refunds a purchase.",
    )


RULES = (
    window_rule,
    account_rule,
    technical_failure_rule,
    duplicate_rule,
    outage_rule,
    failed_job_rule,
    used_credits_rule,
    satisfaction_rule,
    final_purchase_rule,
)


@dataclass(frozen=True)
class _Case:
    """What the rules' outcomes add up to, for the decision ladder."""

    passed: frozenset[str]
    failed: frozenset[str]
    has_job: bool
    actions: tuple[Action, ...]
    # Asked about a duplicate charge on the first payment, while the duplicate is another.
    duplicate_elsewhere: bool
    refundable_cents: int
    unused_value_cents: int
    unused_credits: int


@dataclass(frozen=True)
class _Step:
    """One rung of the ladder: when it applies, and what the pre-check then says."""

    applies: Callable[[_Case], bool]
    verdict: Verdict
    cents: Callable[[_Case], int]
    credits: Callable[[_Case], int]
    stripe_reason: str
    summary: str


def _nothing(case: _Case) -> int:
    return 0


def _all_of_it(case: _Case) -> int:
    return case.refundable_cents


def _unused_share(case: _Case) -> int:
    return case.unused_value_cents


def _unused_credits(case: _Case) -> int:
    return case.unused_credits


# The first rung that applies decides; the order is the policy's order of precedence.
LADDER = (
    _Step(
        lambda case: bool(case.actions),
        Verdict.RESOLVED_AUTOMATICALLY,
        _nothing,
        _nothing,
        "requested_by_customer",
        "The portal can settle this at once: see the rules below.",
    ),
    _Step(
        lambda case: "account" in case.failed,
        Verdict.LIKELY_INELIGIBLE,
        _nothing,
        _nothing,
        "requested_by_customer",
        "Accounts closed for a terms violation are not refunded.",
    ),
    _Step(
        lambda case: "technical_failure" in case.passed,
        Verdict.LIKELY_ELIGIBLE,
        _all_of_it,
        _nothing,
        "requested_by_customer",
        "Credits that never arrived are refunded in full on request.",
    ),
    _Step(
        lambda case: "window" in case.failed,
        Verdict.LIKELY_INELIGIBLE,
        _nothing,
        _nothing,
        "requested_by_customer",
        f"Requests more than {policy.REFUND_WINDOW_DAYS} days after the purchase "
        "are generally not refunded.",
    ),
    _Step(
        lambda case: "duplicate" in case.passed,
        Verdict.LIKELY_ELIGIBLE,
        _all_of_it,
        _unused_credits,
        "duplicate",
        "Duplicate charges are refunded in full.",
    ),
    _Step(
        lambda case: case.duplicate_elsewhere,
        Verdict.NEEDS_REVIEW,
        _nothing,
        _nothing,
        "requested_by_customer",
        "The duplicate charge is the later payment named below, not this one: ask for the "
        "refund on that purchase, and it is refunded in full.",
    ),
    _Step(
        lambda case: case.has_job and "failed_job" in case.passed,
        Verdict.LIKELY_INELIGIBLE,
        _nothing,
        _nothing,
        "requested_by_customer",
        "The failed job's credits are already back in your balance.",
    ),
    _Step(
        lambda case: bool({"satisfaction", "used_credits", "failed_job"} & case.failed),
        Verdict.LIKELY_INELIGIBLE,
        _nothing,
        _nothing,
        "requested_by_customer",
        "The policy generally does not refund this case.",
    ),
    _Step(
        lambda case: "outage" in case.passed,
        Verdict.LIKELY_ELIGIBLE,
        _unused_share,
        _unused_credits,
        "requested_by_customer",
        f"Downtime of {policy.downtime_words()} while you held unused credits "
        "qualifies for a refund of their share of the price.",
    ),
    # After the outage: downtime that kept the customer from the credits is a case the
    # policy refunds, however the customer put it.
    _Step(
        lambda case: "final_purchase" in case.failed,
        Verdict.LIKELY_INELIGIBLE,
        _nothing,
        _nothing,
        "requested_by_customer",
        f"{policy.PURCHASES_FINAL} The policy does not refund credits you no longer need.",
    ),
    _Step(
        lambda case: True,
        Verdict.NEEDS_REVIEW,
        _unused_share,
        _unused_credits,
        "requested_by_customer",
        "Staff will look at your case; the unused credits' share of the price is "
        "what could be refunded.",
    ),
)


def precheck(snapshot: Snapshot, now: datetime) -> Precheck:
    """Run every rule on `snapshot` at `now` and decide what the policy likely says."""
    results = {rule.__name__.removesuffix("_rule"): rule(snapshot, now) for rule in RULES}
    case = _case_of(snapshot, results)
    step = next(step for step in LADDER if step.applies(case))
    return Precheck(
        step.verdict,
        tuple(results.values()),
        min(step.cents(case), case.refundable_cents),
        step.credits(case),
        step.stripe_reason,
        case.actions,
        step.summary,
    )


def _case_of(snapshot: Snapshot, results: dict[str, RuleResult]) -> _Case:
    passed = frozenset(code for code, result in results.items() if result.outcome == Outcome.PASS)
    failed = frozenset(code for code, result in results.items() if result.outcome == Outcome.FAIL)
    purchase = snapshot.purchase
    package = policy.PACKAGES_BY_CODE.get(purchase.package_code)
    job = snapshot.job
    actions = []
    # What the portal settles by itself when the request is filed.
    if "technical_failure" in passed and not snapshot.money_back_instead:
        actions.append(Action.ADD_MISSING_CREDITS)
    if job is not None and "failed_job" in passed and not job.credits_restored:
        actions.append(Action.RESTORE_JOB_CREDITS)
    return _Case(
        passed=passed,
        failed=failed,
        has_job=job is not None,
        actions=tuple(actions),
        duplicate_elsewhere=snapshot.reason == RequestReason.CHARGED_TWICE
        and bool(_later_duplicates(snapshot)),
        refundable_cents=purchase.amount_cents - purchase.refunded_cents,
        unused_value_cents=package.refund_for_unused(snapshot.unused_credits) if package else 0,
        unused_credits=snapshot.unused_credits,
    )
