"""The benchmark's data set: generated in bulk, consistent with the portal's invariants.

Nothing here goes through the portal's services one row at a time. A small simulation
replays every customer's history in time order (purchases credited as lots, jobs
charged oldest lot first, failed jobs given back to the very lots they drew from,
approved refunds clawing back unused credits), numbering rows as it goes, and the rows
are then written with COPY on PostgreSQL (multi-row INSERTs elsewhere). The result obeys
the same rules the services keep:

* a balance equals the sum of its entries, the last entry's balance_after, and the sum of
  its lots' remaining credits; every entry has balance_after >= 0;
* every spend has lot allocations, and a lot's remaining credits equal the sum of its
  allocations (so `flask --app portal ledger-check` is clean);
* refund requests carry a pre-check computed by the portal's own pure function
  (`portal.refunds.eligibility.precheck`) on the facts as they stood when filed;
* at most one open request per purchase; refunds never exceed what was paid.

Passwords: ONE Argon2id hash, made once with the portal's own hasher, shared by every user.

A marker table (`bench_dataset`, not part of the portal's schema) records the parameters'
fingerprint and the highest id of each table once built, so a later run reuses the data
set and first removes whatever an earlier run added (jobs charged, purchases fulfilled).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path

from sqlalchemy import JSON, delete, insert, select, text

from portal import policy
from portal.ledger.services import TOTAL_OF_KIND
from portal.refunds import eligibility
from portal.refunds.eligibility import RequestReason
from portal.timeutil import add_business_days
from tests.authenticator import Authenticator

GENERATOR_VERSION = 6
MARKER_TABLE = "bench_dataset"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

# Every bench user logs in with this password (15+ characters, not a common one).
BENCH_PASSWORD = "bench-only-password-kettle-2026"
# Every bench staff member's authenticator (base32), so the bench can log them in.
BENCH_TOTP_SECRET = "BENCHSTAFFAUTHENTICATORKEY234567"
# The bench's phone: it hands out each code once (see tests/authenticator.py).
STAFF_AUTHENTICATOR = Authenticator(BENCH_TOTP_SECRET)


HEAVY_EMAIL = "heavy@bench.test"
OPERATIONS = ("upscale", "background-removal", "colorize", "denoise", "style-transfer")
TIMEZONES = ("America/Vancouver", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "UTC")

# Tables the data set writes, parents before children (COPY checks foreign keys per row).
TABLE_ORDER = (
    "users",
    "incidents",
    "purchases",
    "jobs",
    "credit_lots",
    "refund_requests",
    "refunds",
    "ledger_entries",
    "lot_allocations",
    "refund_request_events",
    "day_end_balances",
)
# Tables a benchmark run may add rows to; their highest ids are the baseline to go back to.
# (Day-end balances have no id: they are restored from the ledger, see reset_to_baseline.)
BASELINE_TABLES = (
    *(name for name in TABLE_ORDER if name != "day_end_balances"),
    "stripe_events",
    "audit_log",
    "outbox_emails",
    "user_sessions",
    "password_reset_tokens",
    "attachments",
)


def customer_email(number: int) -> str:
    return f"customer{number:05d}@bench.test"


def staff_email(number: int) -> str:
    return f"staff{number}@bench.test"


@dataclass(frozen=True)
class DatasetParams:
    """How big the data set is. `customers` counts the heavy customer too."""

    customers: int = 10_000
    heavy_entries: int = 200_000
    heavy_jobs: int = 50_000
    heavy_purchases: int = 400
    refund_requests: int = 100_000
    incidents: int = 200
    staff: int = 5
    seed: int = 2026

    @classmethod
    def tiny(cls) -> DatasetParams:
        """A data set small enough for the test suite (about a second to build)."""
        return cls(
            customers=25,
            heavy_entries=400,
            heavy_jobs=120,
            heavy_purchases=6,
            refund_requests=40,
            incidents=6,
            staff=2,
        )

    def fingerprint(self) -> str:
        # The migrations are part of it: a data set built for another schema is rebuilt.
        migrations = sorted(path.name for path in (MIGRATIONS / "versions").glob("*.py"))
        document = json.dumps(
            {"version": GENERATOR_VERSION, "migrations": migrations, **asdict(self)},
            sort_keys=True,
        )
        return sha256(document.encode()).hexdigest()


@dataclass
class DatasetInfo:
    """What the benchmark needs to know about a built data set (kept in the marker)."""

    fingerprint: str
    params: dict
    built_at: str
    build_seconds: float
    baseline: dict
    counts: dict
    heavy_user_id: int
    heavy_email: str
    small_user_id: int
    small_email: str
    staff_email: str
    heavy_open_request_id: int
    small_open_request_id: int
    heavy_entries: int
    customer_emails_sample: list = field(default_factory=list)

    @property
    def built(self) -> datetime:
        return datetime.fromisoformat(self.built_at)


# -- the simulation ----------------------------------------------------------------------


class _Lot:
    __slots__ = ("id", "index", "user_id", "origin", "purchase_id", "granted", "remaining")

    def __init__(self, lot_id, index, user_id, origin, purchase_id, granted):
        self.id = lot_id
        self.index = index
        self.user_id = user_id
        self.origin = origin
        self.purchase_id = purchase_id
        self.granted = granted
        self.remaining = 0


class _Account:
    __slots__ = (
        "user_id",
        "balance",
        "totals",
        "day_ends",
        "lots",
        "first_open",
        "failed_jobs",
        "used_up_at",
    )

    def __init__(self, user_id: int):
        self.user_id = user_id
        self.balance = 0
        self.totals = dict.fromkeys(ACCOUNT_TOTALS, 0)
        self.day_ends: dict = {}  # UTC day -> closing balance
        self.lots: list[_Lot] = []
        self.first_open = 0
        self.failed_jobs: list[_Job] = []
        self.used_up_at: dict[int, datetime] = {}


class _Purchase:
    __slots__ = (
        "id",
        "user_id",
        "package",
        "created_at",
        "paid_at",
        "credited_at",
        "status",
        "refunded_cents",
        "late_credit",
        "lot",
    )

    def __init__(self, purchase_id, user_id, package, created_at):
        self.id = purchase_id
        self.user_id = user_id
        self.package = package
        self.created_at = created_at
        self.paid_at = created_at + timedelta(seconds=40)
        self.credited_at = None
        self.status = "paid"
        self.refunded_cents = 0
        self.late_credit = False
        self.lot: _Lot | None = None


class _Job:
    __slots__ = (
        "id",
        "user_id",
        "operation",
        "credits",
        "status",
        "failure",
        "created_at",
        "finished_at",
        "restored",
        "moves",
        "restored_at",
    )

    def __init__(self, user_id, operation, credits, status, failure, created_at, finished_at):
        self.id = None
        self.user_id = user_id
        self.operation = operation
        self.credits = credits
        self.status = status
        self.failure = failure
        self.created_at = created_at
        self.finished_at = finished_at
        self.restored = False
        self.moves = None
        self.restored_at = None


class _Request:
    __slots__ = (
        "id",
        "user_id",
        "purchase",
        "reason",
        "filed_at",
        "outcome",
        "decided_at",
        "assignee_id",
        "decider_id",
        "job",
        "check",
        "status",
        "decision_reason",
        "clock_paused_at",
        "heavy",
    )


class _Simulation:
    """Replays events in time order, writing rows exactly as the ledger services would."""

    def __init__(self, incidents: list[tuple]):
        self.ids = {name: itertools.count(1) for name in TABLE_ORDER}
        self.accounts: dict[int, _Account] = {}
        self.entries: list[tuple] = []
        self.allocations: list[tuple] = []
        self.lots: list[_Lot] = []
        self.lot_created: list[datetime] = []
        self.jobs: list[_Job] = []
        self.requests: list[_Request] = []
        self.refunds: list[tuple] = []
        self.events: list[tuple] = []
        self.dropped_charges: dict[int, int] = {}
        # (started_at, ended_at, title) sorted by start, for the pre-check's outage rule.
        self.incidents = sorted(incidents, key=lambda incident: incident[0])
        self.incident_starts = [incident[0] for incident in self.incidents]

    def account(self, user_id: int) -> _Account:
        account = self.accounts.get(user_id)
        if account is None:
            account = self.accounts[user_id] = _Account(user_id)
        return account

    def _post(
        self, account, kind, moves, key, memo, at, purchase_id=None, job_id=None, refund_id=None
    ):
        credits = sum(amount for _, amount in moves)
        account.balance += credits
        if kind in TOTAL_OF_KIND:
            total, sign = TOTAL_OF_KIND[kind]
            account.totals[total] += sign * credits
        account.day_ends[at.astimezone(UTC).date()] = account.balance
        entry_id = next(self.ids["ledger_entries"])
        self.entries.append(
            (
                entry_id,
                account.user_id,
                kind,
                credits,
                account.balance,
                purchase_id,
                job_id,
                refund_id,
                key,
                memo,
                at,
            )
        )
        for lot, amount in moves:
            lot.remaining += amount
            self.allocations.append((next(self.ids["lot_allocations"]), entry_id, lot.id, amount))
            if lot.remaining == 0:
                account.used_up_at[lot.id] = at
            else:
                account.used_up_at.pop(lot.id, None)
                account.first_open = min(account.first_open, lot.index)
        return entry_id

    def credit_purchase(self, purchase: _Purchase, at: datetime) -> None:
        account = self.account(purchase.user_id)
        lot = _Lot(
            next(self.ids["credit_lots"]),
            len(account.lots),
            purchase.user_id,
            "purchase",
            purchase.id,
            purchase.package.credits,
        )
        account.lots.append(lot)
        self.lots.append(lot)
        self.lot_created.append(at)
        purchase.lot = lot
        purchase.credited_at = at
        purchase.status = "credited"
        self._post(
            account,
            "purchase_credit",
            [(lot, purchase.package.credits)],
            f"purchase:{purchase.id}:credit",
            f"{purchase.package.code.capitalize()} package",
            at,
            purchase_id=purchase.id,
        )

    def spend(self, user_id: int, credits: int, at: datetime, job: _Job | None, memo: str):
        account = self.account(user_id)
        credits = min(credits, account.balance)
        if credits <= 0:
            self.dropped_charges[user_id] = self.dropped_charges.get(user_id, 0) + 1
            return None
        while account.lots[account.first_open].remaining == 0:
            account.first_open += 1
        moves = []
        still_needed = credits
        for lot in account.lots[account.first_open :]:
            if lot.remaining == 0:
                continue
            taken = min(lot.remaining, still_needed)
            moves.append((lot, -taken))
            still_needed -= taken
            if still_needed == 0:
                break
        if job is not None:
            job.id = next(self.ids["jobs"])
            job.credits = credits
            job.moves = moves
            self.jobs.append(job)
            key = f"job:{job.id}:charge"
            job_id = job.id
        else:
            key = f"legacy:{len(self.entries) + 1}:charge"
            job_id = None
        self._post(account, "job_charge", moves, key, memo, at, job_id=job_id)
        return moves

    def restore_job(self, job: _Job, at: datetime) -> None:
        if job.moves is None:  # its charge never happened (no credits at the time)
            return
        account = self.account(job.user_id)
        moves = [(lot, -amount) for lot, amount in job.moves]
        self._post(
            account, "job_refund", moves, f"job:{job.id}:restore", job.operation, at, job_id=job.id
        )
        job.restored = True
        job.restored_at = at

    def incidents_for(self, start: datetime, end: datetime):
        """Incidents the pre-check would see for a purchase credited at `start`."""
        first = bisect.bisect_left(self.incident_starts, start - timedelta(days=10))
        last = bisect.bisect_left(self.incident_starts, end)
        return tuple(
            eligibility.IncidentFacts(title, started, ended)
            for started, ended, title in self.incidents[first:last]
            if ended is None or ended > start
        )


PACKAGE_WEIGHTS = (("starter", 35), ("basic", 35), ("pro", 20), ("premium", 10))
REASON_WEIGHTS = (
    (RequestReason.NOT_HAPPY, 25),
    (RequestReason.OTHER, 12),
    (RequestReason.SERVICE_UNAVAILABLE, 20),
    (RequestReason.CHARGED_TWICE, 5),
    (RequestReason.JOB_FAILED, 13),
    (RequestReason.CREDITS_NOT_ADDED, 5),
)
OPEN_FOR = timedelta(days=14)
DENIAL_REASONS = ("credits_used", "results_quality", "window", "other")


def _weighted(rng: random.Random, pairs):
    values, weights = zip(*pairs, strict=True)
    return rng.choices(values, weights)[0]


def _job_outcome(rng: random.Random):
    roll = rng.random()
    if roll < 0.07:
        return "failed", "platform_error"
    if roll < 0.10:
        return "failed", "invalid_input"
    return "succeeded", None


def _charge_size(rng: random.Random) -> int:
    roll = rng.random()
    return 1 if roll < 0.5 else 2 if roll < 0.8 else 3 if roll < 0.95 else 5


def generate(params: DatasetParams, password_hash: str, now: datetime) -> dict:
    """Simulate every customer's history; return rows per table and facts about them."""
    rng = random.Random(params.seed)  # noqa: S311  (repeatable data, not secrets)
    now = now.replace(microsecond=0)
    events: list[tuple] = []
    sequence = itertools.count()

    def at(moment: datetime, handler: Callable, *args) -> None:
        events.append((moment, next(sequence), handler, args))

    # Users: staff first, then the heavy customer, then everyone else.
    users = []
    user_ids = itertools.count(1)
    staff_ids = []
    for number in range(1, params.staff + 1):
        user_id = next(user_ids)
        staff_ids.append(user_id)
        users.append(
            [user_id, staff_email(number), "staff", "America/Vancouver", now - timedelta(days=900)]
        )
    heavy_id = next(user_ids)
    users.append(
        [heavy_id, HEAVY_EMAIL, "customer", "America/Vancouver", now - timedelta(days=760)]
    )
    normal_ids = []
    for number in range(1, params.customers):
        user_id = next(user_ids)
        normal_ids.append(user_id)
        created = now - timedelta(days=rng.uniform(30, 420))
        zone = rng.choice(TIMEZONES) if rng.random() < 0.9 else None
        users.append([user_id, customer_email(number), "customer", zone, created])
    user_created = {row[0]: row[4] for row in users}

    # Incidents over two years: mostly short, a few long enough for the outage rule.
    incident_rows = []
    for number in range(1, params.incidents + 1):
        started = now - timedelta(days=rng.uniform(2, 730))
        hours = rng.uniform(49, 96) if rng.random() < 0.04 else rng.uniform(0.3, 8)
        ended = started + timedelta(hours=hours)
        title = f"{rng.choice(('GPU pool', 'Queue', 'Storage', 'API'))} outage #{number}"
        incident_rows.append((number, title, started, ended, rng.choice(staff_ids)))
    sim = _Simulation([(row[2], row[3], row[1]) for row in incident_rows])

    purchases: list[_Purchase] = []
    purchase_ids = itertools.count(1)
    packages = policy.PACKAGES_BY_CODE

    def new_purchase(user_id, package, created):
        purchase = _Purchase(next(purchase_ids), user_id, package, created)
        purchases.append(purchase)
        return purchase

    # -- the heavy customer: evenly spaced premium purchases, jobs and older charges ------
    span = timedelta(days=730)
    start = now - span
    step = span / params.heavy_purchases
    heavy_purchases = []
    for index in range(params.heavy_purchases):
        created = start + step * index + step * rng.uniform(0, 0.2)
        heavy_purchases.append(new_purchase(heavy_id, packages["premium"], created))
    activity_start = heavy_purchases[0].paid_at + timedelta(hours=1)
    activity_seconds = (now - timedelta(minutes=3) - activity_start).total_seconds()
    heavy_jobs = []
    for _ in range(params.heavy_jobs):
        created = activity_start + timedelta(seconds=rng.uniform(0, activity_seconds))
        status, failure = _job_outcome(rng)
        finished = created + timedelta(seconds=rng.randint(5, 120))
        job = _Job(
            heavy_id, rng.choice(OPERATIONS), _charge_size(rng), status, failure, created, finished
        )
        heavy_jobs.append(job)
    heavy_jobs.sort(key=lambda job: job.created_at)
    for job in heavy_jobs[-3:]:
        job.status, job.failure, job.finished_at = "running", None, None
    restored_jobs = sum(1 for job in heavy_jobs if job.failure == "platform_error")
    legacy = params.heavy_entries - params.heavy_purchases - params.heavy_jobs - restored_jobs
    if legacy < 0:
        raise ValueError("heavy_entries must cover the heavy customer's purchases and jobs")
    for _ in range(legacy):
        moment = activity_start + timedelta(seconds=rng.uniform(0, activity_seconds))
        operation = rng.choice(OPERATIONS)
        at(moment, sim.spend, heavy_id, _charge_size(rng), moment, None, f"{operation} (batch)")
    for job in heavy_jobs:
        at(job.created_at, sim.spend, heavy_id, job.credits, job.created_at, job, job.operation)
        if job.failure == "platform_error":
            at(job.finished_at, sim.restore_job, job, job.finished_at)

    # -- everyone else: a dozen purchases and a few jobs each ----------------------------
    normal_requests = params.refund_requests - min(max(1, params.heavy_purchases // 10), 40)
    per_customer = max(3, math.ceil(1.4 * normal_requests / max(1, len(normal_ids))))
    normal_purchases = []
    normal_jobs = []
    for user_id in normal_ids:
        created = user_created[user_id]
        window = (now - timedelta(minutes=30) - created).total_seconds()
        count = rng.randint(max(1, per_customer - 5), per_customer + 5)
        moments = sorted(
            created + timedelta(seconds=rng.uniform(3600, window)) for _ in range(count)
        )
        mine = [
            new_purchase(user_id, packages[_weighted(rng, PACKAGE_WEIGHTS)], m) for m in moments
        ]
        normal_purchases.extend(mine)
        first = mine[0].paid_at
        job_window = (now - timedelta(minutes=3) - first).total_seconds()
        for _ in range(rng.randint(2, 6)):
            created_job = first + timedelta(seconds=rng.uniform(600, max(601, job_window)))
            if created_job >= now:
                continue
            status, failure = _job_outcome(rng)
            finished = created_job + timedelta(seconds=rng.randint(5, 240))
            job = _Job(
                user_id,
                rng.choice(OPERATIONS),
                rng.randint(1, 5),
                status,
                failure,
                created_job,
                finished,
            )
            normal_jobs.append(job)
            at(created_job, sim.spend, user_id, job.credits, created_job, job, job.operation)
            if failure == "platform_error":
                at(finished, sim.restore_job, job, finished)

    # -- refund requests -----------------------------------------------------------------
    requests: list[_Request] = []

    def plan_request(purchase: _Purchase, heavy: bool, filed: datetime | None = None):
        request = _Request()
        request.id = None
        request.user_id = purchase.user_id
        request.purchase = purchase
        request.heavy = heavy
        request.job = None
        request.check = None
        request.assignee_id = None
        request.decider_id = None
        request.decision_reason = None
        request.clock_paused_at = None
        request.decided_at = None
        if filed is None:
            latest = now - timedelta(minutes=5)
            filed = purchase.paid_at + timedelta(
                seconds=max(600.0, rng.expovariate(1 / (8 * 86400)))
            )
            if filed > latest:
                filed = purchase.paid_at + (latest - purchase.paid_at) * rng.uniform(0.2, 0.9)
        request.filed_at = filed
        reason = _weighted(rng, REASON_WEIGHTS)
        if heavy and reason == RequestReason.CREDITS_NOT_ADDED:
            reason = RequestReason.OTHER
        request.reason = reason
        if reason == RequestReason.CREDITS_NOT_ADDED:
            purchase.late_credit = True
            request.outcome = "resolved_automatically"
        elif now - filed < OPEN_FOR:
            request.outcome = _weighted(
                rng, (("open", 45), ("in_review", 35), ("waiting_on_customer", 20))
            )
        else:
            request.outcome = "decide"
            request.decided_at = filed + timedelta(hours=rng.uniform(2, 120))
        if request.outcome in ("in_review", "waiting_on_customer") or request.outcome == "decide":
            request.assignee_id = rng.choice(staff_ids)
        requests.append(request)
        return request

    heavy_request_count = params.refund_requests - normal_requests
    chosen = rng.sample(
        heavy_purchases[:-1], min(heavy_request_count - 1, len(heavy_purchases) - 1)
    )
    for purchase in chosen:
        plan_request(purchase, heavy=True)
    newest = heavy_purchases[-1]
    heavy_open = plan_request(
        newest, heavy=True, filed=max(newest.paid_at + timedelta(hours=1), now - timedelta(hours=6))
    )
    heavy_open.reason = RequestReason.SERVICE_UNAVAILABLE
    heavy_open.outcome = "open"
    heavy_open.assignee_id = None
    heavy_open.decided_at = None
    if normal_requests > len(normal_purchases):
        raise ValueError("not enough purchases for the refund requests asked for")
    sampled = rng.sample(range(len(normal_purchases)), normal_requests)
    # The newest purchase of anyone but the heavy customer gets an open request, so the
    # benchmark always has a small customer's open request to compare with.
    newest_index = max(range(len(normal_purchases)), key=lambda i: normal_purchases[i].paid_at)
    if newest_index not in sampled:
        sampled[0] = newest_index
    for index in sampled:
        request = plan_request(normal_purchases[index], heavy=False)
        if index == newest_index:
            request.reason = RequestReason.SERVICE_UNAVAILABLE
            request.purchase.late_credit = False
            request.outcome = "open"
            request.assignee_id = None
            request.decided_at = None

    # Purchase ids follow time, as they do in production (keyset pages and LIMIT queries
    # ordered by id behave as they would there).
    for number, purchase in enumerate(sorted(purchases, key=lambda p: p.created_at), 1):
        purchase.id = number
    for purchase in purchases:
        if not purchase.late_credit:
            at(
                purchase.paid_at + timedelta(seconds=2),
                sim.credit_purchase,
                purchase,
                purchase.paid_at + timedelta(seconds=2),
            )

    def file(request: _Request) -> None:
        purchase = request.purchase
        account = sim.account(request.user_id)
        if request.reason == RequestReason.JOB_FAILED:
            failed = [job for job in account.failed_jobs if job.created_at < request.filed_at]
            if failed:
                request.job = rng.choice(failed)
            else:
                request.reason = RequestReason.OTHER
        lot = purchase.lot
        unused = lot.remaining if lot else 0
        used_up_at = account.used_up_at.get(lot.id) if lot and lot.remaining == 0 else None
        job = request.job
        incidents = ()
        if purchase.credited_at is not None:
            incidents = sim.incidents_for(purchase.credited_at, used_up_at or request.filed_at)
        snapshot = eligibility.Snapshot(
            reason=request.reason,
            purchase=eligibility.PurchaseFacts(
                id=purchase.id,
                package_code=purchase.package.code,
                credits=purchase.package.credits,
                amount_cents=purchase.package.price_cents,
                currency="usd",
                paid_at=purchase.paid_at,
                credited_at=purchase.credited_at,
                refunded_cents=purchase.refunded_cents,
            ),
            unused_credits=unused,
            used_up_at=used_up_at,
            job=None
            if job is None
            else eligibility.JobFacts(
                id=job.id,
                operation=job.operation,
                credits=job.credits,
                status=job.status,
                failure_reason=job.failure,
                credits_restored=job.restored,
                restored_at=job.restored_at,
            ),
            incidents=incidents,
        )
        request.check = eligibility.precheck(snapshot, request.filed_at)
        request.id = next(sim.ids["refund_requests"])
        sim.requests.append(request)
        sim.events.append(
            (
                request,
                "filed",
                None,
                True,
                f"Request filed: {request.reason.value.replace('_', ' ')}.",
                request.filed_at,
            )
        )
        sim.events.append(
            (request, "precheck", None, True, request.check.summary, request.filed_at)
        )
        if request.outcome == "resolved_automatically":
            sim.credit_purchase(purchase, request.filed_at + timedelta(seconds=1))
            request.status = "resolved_automatically"
            request.decided_at = request.filed_at
            sim.events.append(
                (
                    request,
                    "auto_resolved",
                    None,
                    True,
                    f"The {purchase.package.credits:,} missing credits were added to your balance.",
                    request.filed_at,
                )
            )
            return
        request.status = request.outcome if request.outcome != "decide" else "in_review"
        if request.assignee_id is not None:
            assigned = min(request.filed_at + timedelta(hours=1), now - timedelta(minutes=1))
            sim.events.append(
                (
                    request,
                    "assigned",
                    request.assignee_id,
                    False,
                    f"Assigned to staff member {request.assignee_id}.",
                    assigned,
                )
            )
        if request.outcome == "waiting_on_customer":
            asked = min(request.filed_at + timedelta(hours=2), now - timedelta(minutes=1))
            request.clock_paused_at = asked
            sim.events.append(
                (
                    request,
                    "information_requested",
                    request.assignee_id,
                    True,
                    "Could you tell us which images failed?",
                    asked,
                )
            )

    def decide(request: _Request) -> None:
        purchase = request.purchase
        check = request.check
        moment = request.decided_at
        request.decider_id = request.assignee_id
        amount = min(
            check.recommended_cents, purchase.package.price_cents - purchase.refunded_cents
        )
        approve = (
            not request.heavy
            and amount > 0
            and rng.random() < (0.85 if check.verdict.value == "likely_eligible" else 0.5)
        )
        if not approve:
            if rng.random() < 0.85:
                request.status = "denied"
                reason = rng.choice(DENIAL_REASONS)
                request.decision_reason = reason.replace("_", " ")
                sim.events.append(
                    (
                        request,
                        "decision",
                        request.decider_id,
                        True,
                        f"Not refunded ({request.decision_reason}).",
                        moment,
                    )
                )
            else:
                request.status = "closed"
                sim.events.append(
                    (
                        request,
                        "decision",
                        request.decider_id,
                        True,
                        "Closed at the customer's request.",
                        moment,
                    )
                )
            return
        request.status = "approved"
        refund_id = next(sim.ids["refunds"])
        package = purchase.package
        lot = purchase.lot
        unused = lot.remaining if lot else 0
        credits = min(unused, -(-amount * package.credits // package.price_cents))
        scheduled = moment + timedelta(minutes=10)
        sim.refunds.append(
            (
                refund_id,
                purchase.id,
                request,
                amount,
                "usd",
                "succeeded",
                check.stripe_reason,
                f"re_bench_{refund_id}",
                f"refund-{refund_id}-{moment:%Y%m%dT%H%M%S%f}-attempt-1",
                1,
                request.decider_id,
                None,
                scheduled + timedelta(seconds=5),
                scheduled,
                moment,
                scheduled + timedelta(seconds=30),
            )
        )
        if credits:
            sim._post(
                sim.account(purchase.user_id),
                "refund_claw_back",
                [(lot, -credits)],
                f"refund:{refund_id}:attempt-1:claw-back",
                f"refund of RR-{request.id:06d}",
                moment,
                purchase_id=purchase.id,
                refund_id=refund_id,
            )
        purchase.refunded_cents += amount
        purchase.status = (
            "refunded" if purchase.refunded_cents >= package.price_cents else "partially_refunded"
        )
        text_amount = f"${amount // 100:,}.{amount % 100:02d}"
        sim.events.append(
            (
                request,
                "decision",
                request.decider_id,
                True,
                f"Approved: {text_amount} back to your original payment method.",
                moment,
            )
        )
        sim.events.append(
            (
                request,
                "refund_scheduled",
                request.decider_id,
                True,
                f"Refund of {text_amount} scheduled.",
                moment,
            )
        )

    for request in requests:
        at(request.filed_at, file, request)
        if request.outcome == "decide":
            at(request.decided_at, decide, request)

    # Failed jobs become known to the account (for job_failed requests) once they finish.
    def job_failed(job: _Job) -> None:
        if job.moves is not None:
            sim.account(job.user_id).failed_jobs.append(job)

    for job in (*heavy_jobs, *normal_jobs):
        if job.status == "failed":
            at(job.finished_at, job_failed, job)

    events.sort(key=lambda event: (event[0], event[1]))
    for _, _, handler, args in events:
        handler(*args)
    if sim.dropped_charges.get(heavy_id):
        raise RuntimeError("the heavy customer ran out of credits; the plan is inconsistent")

    return _rows(
        sim, params, users, staff_ids, heavy_id, purchases, incident_rows, password_hash, now
    )


def _rows(sim, params, users, staff_ids, heavy_id, purchases, incident_rows, password_hash, now):
    tables: dict[str, tuple[tuple[str, ...], list[tuple]]] = {}
    tables["users"] = (
        (
            "id",
            "email",
            "password_hash",
            "role",
            "status",
            "terminated_at",
            "termination_reason",
            "credits_balance",
            *ACCOUNT_TOTALS,
            "timezone",
            "stripe_customer_id",
            "session_generation",
            "created_at",
            "last_login_at",
            "totp_secret",
            "totp_enrolled_at",
            "totp_last_step",
        ),
        [
            (
                user_id,
                email,
                password_hash,
                role,
                "active",
                None,
                None,
                sim.accounts[user_id].balance if user_id in sim.accounts else 0,
                *(
                    sim.accounts[user_id].totals[name] if user_id in sim.accounts else 0
                    for name in ACCOUNT_TOTALS
                ),
                zone,
                None,
                0,
                created,
                None,
                BENCH_TOTP_SECRET if role == "staff" else None,
                created if role == "staff" else None,
                None,
            )
            for user_id, email, role, zone, created in users
        ],
    )
    tables["incidents"] = (
        ("id", "title", "started_at", "ended_at", "note", "created_by_id", "created_at"),
        [
            (number, title, started, ended, "", creator, started + timedelta(minutes=20))
            for number, title, started, ended, creator in incident_rows
        ],
    )
    tables["purchases"] = (
        (
            "id",
            "user_id",
            "package_code",
            "credits",
            "amount_cents",
            "currency",
            "status",
            "stripe_checkout_session_id",
            "stripe_payment_intent_id",
            "stripe_charge_id",
            "receipt_url",
            "refunded_cents",
            "committed_refund_cents",
            "created_at",
            "paid_at",
            "credited_at",
        ),
        [
            (
                p.id,
                p.user_id,
                p.package.code,
                p.package.credits,
                p.package.price_cents,
                "usd",
                p.status,
                f"cs_bench_{p.id}",
                f"pi_bench_{p.id}",
                f"ch_bench_{p.id}",
                f"https://pay.stripe.com/receipts/bench/ch_bench_{p.id}",
                p.refunded_cents,
                p.refunded_cents,
                p.created_at,
                p.paid_at,
                p.credited_at,
            )
            for p in purchases
        ],
    )
    tables["jobs"] = (
        (
            "id",
            "user_id",
            "external_id",
            "operation",
            "credits",
            "status",
            "failure_reason",
            "failure_detail",
            "credits_restored",
            "created_at",
            "finished_at",
        ),
        [
            (
                job.id,
                job.user_id,
                f"bench-job-{job.id}",
                job.operation,
                job.credits,
                job.status,
                job.failure,
                None
                if job.failure is None
                else "GPU worker lost"
                if job.failure == "platform_error"
                else "Corrupt image file",
                job.restored,
                job.created_at,
                job.finished_at,
            )
            for job in sorted(sim.jobs, key=lambda job: job.id)
        ],
    )
    tables["credit_lots"] = (
        (
            "id",
            "user_id",
            "origin",
            "purchase_id",
            "credits_granted",
            "credits_remaining",
            "created_at",
        ),
        [
            (lot.id, lot.user_id, lot.origin, lot.purchase_id, lot.granted, lot.remaining, created)
            for lot, created in zip(sim.lots, sim.lot_created, strict=True)
        ],
    )
    tables["refund_requests"] = (
        (
            "id",
            "user_id",
            "purchase_id",
            "job_id",
            "reason",
            "details",
            "transaction_ids",
            "status",
            "verdict",
            "precheck",
            "recommended_cents",
            "recommended_credits",
            "assignee_id",
            "due_at",
            "clock_paused_at",
            "decision_reason",
            "decided_at",
            "decided_by_id",
            "created_at",
        ),
        [
            (
                r.id,
                r.user_id,
                r.purchase.id,
                r.job.id if r.job else None,
                r.reason.value,
                "Generated by the benchmark: the customer explains what went wrong here.",
                "",
                r.status,
                r.check.verdict.value,
                _precheck_json(r.check, verify=r.id % 997 == 1),
                r.check.recommended_cents,
                r.check.recommended_credits,
                r.assignee_id,
                add_business_days(r.filed_at, policy.RESPONSE_BUSINESS_DAYS_MAX),
                r.clock_paused_at,
                r.decision_reason,
                r.decided_at,
                r.decider_id,
                r.filed_at,
            )
            for r in sorted(sim.requests, key=lambda r: r.id)
        ],
    )
    tables["refunds"] = (
        (
            "id",
            "purchase_id",
            "refund_request_id",
            "amount_cents",
            "currency",
            "status",
            "reason",
            "stripe_refund_id",
            "idempotency_key",
            "attempt",
            "created_by_id",
            "failure_reason",
            "sent_at",
            "scheduled_for",
            "created_at",
            "updated_at",
        ),
        [(row[0], row[1], row[2].id, *row[3:]) for row in sim.refunds],
    )
    tables["ledger_entries"] = (
        (
            "id",
            "user_id",
            "kind",
            "credits",
            "balance_after",
            "purchase_id",
            "job_id",
            "refund_id",
            "idempotency_key",
            "memo",
            "created_at",
        ),
        sim.entries,
    )
    tables["lot_allocations"] = (("id", "ledger_entry_id", "lot_id", "credits"), sim.allocations)
    tables["day_end_balances"] = (
        ("user_id", "day", "balance"),
        [
            (account.user_id, day, balance)
            for account in sim.accounts.values()
            for day, balance in account.day_ends.items()
        ],
    )
    # Timeline ids follow each request's own order (filed, pre-check, ..., decision).
    events = sorted(sim.events, key=lambda event: (event[0].id, event[5]))
    tables["refund_request_events"] = (
        ("id", "request_id", "kind", "actor_id", "visible_to_customer", "body", "created_at"),
        [
            (number, request.id, kind, actor, visible, body, moment)
            for number, (request, kind, actor, visible, body, moment) in enumerate(events, 1)
        ],
    )

    open_statuses = ("open", "in_review", "waiting_on_customer")
    heavy_open = max(r.id for r in sim.requests if r.user_id == heavy_id and r.status == "open")
    small = next(
        r
        for r in sorted(sim.requests, key=lambda r: r.id)
        if r.user_id != heavy_id and r.status in open_statuses
    )
    small_email = next(row[1] for row in users if row[0] == small.user_id)
    facts = {
        "heavy_user_id": heavy_id,
        "small_user_id": small.user_id,
        "small_email": small_email,
        "staff_email": staff_email(1),
        "heavy_open_request_id": heavy_open,
        "small_open_request_id": small.id,
        "heavy_entries": sum(1 for entry in sim.entries if entry[1] == heavy_id),
    }
    return {"tables": tables, "facts": facts}


def _precheck_json(check: eligibility.Precheck, verify: bool = False) -> dict:
    """`Precheck.to_json()` as stored (a JSON document), without dataclasses.asdict's cost.

    `verify` compares it with the portal's own `to_json`, so a change of shape is caught.
    """
    document = {
        "verdict": check.verdict.value,
        "rules": [
            {
                "code": rule.code,
                "title": rule.title,
                "outcome": rule.outcome.value,
                "explanation": rule.explanation,
            }
            for rule in check.rules
        ],
        "recommended_cents": check.recommended_cents,
        "recommended_credits": check.recommended_credits,
        "stripe_reason": check.stripe_reason,
        "actions": [action.value for action in check.actions],
        "summary": check.summary,
    }
    if verify and json.loads(json.dumps(check.to_json())) != document:
        raise RuntimeError("Precheck.to_json changed shape: update the benchmark's copy")
    return document


# -- writing -------------------------------------------------------------------------------


def _write_postgresql(connection, tables: dict, log) -> None:
    from portal.db import db

    raw = connection.connection.driver_connection
    with raw.cursor() as cursor:
        for name in TABLE_ORDER:
            columns, rows = tables[name]
            json_columns = {
                index
                for index, column in enumerate(columns)
                if isinstance(db.metadata.tables[name].c[column].type, JSON)
            }
            started = time.perf_counter()
            with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    if json_columns:
                        row = tuple(
                            json.dumps(value) if index in json_columns else value
                            for index, value in enumerate(row)
                        )
                    copy.write_row(row)
            log(f"  {name}: {len(rows):,} rows in {time.perf_counter() - started:.1f} s (COPY)")
        for name in TABLE_ORDER:
            if "id" not in db.metadata.tables[name].c:
                continue  # keyed by its columns (day-end balances): no sequence
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "  # noqa: S608
                f"COALESCE((SELECT MAX(id) FROM {name}), 1), "
                f"(SELECT MAX(id) FROM {name}) IS NOT NULL)"
            )


def _write_generic(connection, tables: dict, log, chunk: int = 500) -> None:
    from portal.db import db

    for name in TABLE_ORDER:
        columns, rows = tables[name]
        table = db.metadata.tables[name]
        for offset in range(0, len(rows), chunk):
            batch = [dict(zip(columns, row, strict=True)) for row in rows[offset : offset + chunk]]
            connection.execute(table.insert(), batch)
        log(f"  {name}: {len(rows):,} rows (multi-row INSERT)")


def build_dataset(params: DatasetParams, log: Callable[[str], None] = print) -> DatasetInfo:
    """Generate and write the data set into the (migrated, empty) database of the app
    context; return what the benchmark needs to know. Call inside an app context."""
    from portal.accounts.passwords import hash_password
    from portal.db import db

    started = time.perf_counter()
    now = datetime.now(UTC)
    password_hash = hash_password(BENCH_PASSWORD)
    log(f"generating the data set {asdict(params)}")
    generated = generate(params, password_hash, now)
    log(f"  simulated in {time.perf_counter() - started:.1f} s")
    tables = generated["tables"]
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            _write_postgresql(connection, tables, log)
        else:
            _write_generic(connection, tables, log)
    facts = generated["facts"]
    counts = {name: len(tables[name][1]) for name in TABLE_ORDER}
    info = DatasetInfo(
        fingerprint=params.fingerprint(),
        params=asdict(params),
        built_at=now.isoformat(),
        build_seconds=0.0,
        baseline=table_baseline(),
        counts=counts,
        heavy_email=HEAVY_EMAIL,
        customer_emails_sample=[customer_email(n) for n in range(1, min(params.customers, 2001))],
        **facts,
    )
    info.build_seconds = round(time.perf_counter() - started, 1)
    log(f"  built in {info.build_seconds} s: {counts}")
    return info


# -- the marker, the baseline, and going back to it ---------------------------------------


def table_baseline() -> dict:
    from portal.db import db

    with db.engine.connect() as connection:
        return {
            name: connection.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {name}")).scalar()  # noqa: S608
            for name in BASELINE_TABLES
        }


def read_marker() -> DatasetInfo | None:
    from sqlalchemy import inspect

    from portal.db import db

    if not inspect(db.engine).has_table(MARKER_TABLE):
        return None
    with db.engine.connect() as connection:
        row = connection.execute(text(f"SELECT info FROM {MARKER_TABLE}")).first()  # noqa: S608
    return DatasetInfo(**json.loads(row[0])) if row else None


def write_marker(info: DatasetInfo) -> None:
    from portal.db import db

    with db.engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} "
                "(fingerprint VARCHAR(64) PRIMARY KEY, info TEXT NOT NULL)"
            )
        )
        connection.execute(text(f"DELETE FROM {MARKER_TABLE}"))  # noqa: S608
        connection.execute(
            text(f"INSERT INTO {MARKER_TABLE} (fingerprint, info) VALUES (:f, :i)"),  # noqa: S608
            {"f": info.fingerprint, "i": json.dumps(asdict(info))},
        )


def drop_marker() -> None:
    from portal.db import db

    with db.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {MARKER_TABLE}"))


# The account totals the ledger keeps beside the balance, in a fixed order.
ACCOUNT_TOTALS = tuple(sorted({total for total, _ in TOTAL_OF_KIND.values()}))


RESET_STATEMENTS = (
    # What later entries moved out of (or into) the data set's lots and balances.
    """UPDATE credit_lots SET credits_remaining = credits_remaining - (
           SELECT COALESCE(SUM(a.credits), 0) FROM lot_allocations a
           WHERE a.lot_id = credit_lots.id AND a.id > :lot_allocations)
       WHERE id <= :credit_lots AND id IN (
           SELECT lot_id FROM lot_allocations WHERE id > :lot_allocations)""",
    # The balance and the running totals (see ledger.services.TOTAL_OF_KIND).
    """UPDATE users SET
           credits_balance = credits_balance - COALESCE(later.all_kinds, 0),
           credits_bought = credits_bought - COALESCE(later.bought, 0),
           credits_used = credits_used + COALESCE(later.used, 0),
           credits_refunded = credits_refunded + COALESCE(later.refunded, 0),
           credits_granted = credits_granted - COALESCE(later.granted, 0)
       FROM (SELECT user_id,
                 SUM(credits) AS all_kinds,
                 SUM(credits) FILTER (WHERE kind = 'purchase_credit') AS bought,
                 SUM(credits) FILTER (WHERE kind IN ('job_charge', 'job_refund')) AS used,
                 SUM(credits) FILTER (
                     WHERE kind IN ('refund_claw_back', 'claw_back_reversal')) AS refunded,
                 SUM(credits) FILTER (WHERE kind = 'grant') AS granted
             FROM ledger_entries WHERE id > :ledger_entries GROUP BY user_id) AS later
       WHERE users.id = later.user_id""",
    "DELETE FROM lot_allocations WHERE id > :lot_allocations",
    "DELETE FROM ledger_entries WHERE id > :ledger_entries",
    "DELETE FROM credit_lots WHERE id > :credit_lots",
    "DELETE FROM refund_request_events WHERE id > :refund_request_events",
    "DELETE FROM attachments WHERE id > :attachments",
    "DELETE FROM refunds WHERE id > :refunds",
    "DELETE FROM refund_requests WHERE id > :refund_requests",
    "DELETE FROM jobs WHERE id > :jobs",
    "DELETE FROM purchases WHERE id > :purchases",
    "DELETE FROM incidents WHERE id > :incidents",
    "DELETE FROM stripe_events WHERE id > :stripe_events",
    "DELETE FROM audit_log WHERE id > :audit_log",
    "DELETE FROM outbox_emails WHERE id > :outbox_emails",
    "DELETE FROM user_sessions WHERE id > :user_sessions",
    "DELETE FROM password_reset_tokens WHERE id > :password_reset_tokens",
)


def reset_to_baseline(info: DatasetInfo) -> dict:
    """Remove every row added since the data set was built, restoring balances and lots.

    Returns how many rows each table lost.
    """
    from portal.db import db

    removed = {}
    with db.engine.begin() as connection:
        _restore_day_ends(connection, info.baseline["ledger_entries"])
        for statement in RESET_STATEMENTS:
            result = connection.execute(text(statement), info.baseline)
            if statement.startswith("DELETE"):
                removed[statement.split()[2]] = result.rowcount
    return {name: count for name, count in removed.items() if count}


def _restore_day_ends(connection, last_entry_id: int) -> None:
    """Put back the day-end balances of the days that later entries changed."""
    from portal.ledger.models import DayEndBalance, LedgerEntry

    def day_of(moment: datetime):
        return moment.astimezone(UTC).date()

    entries = LedgerEntry.__table__.c
    later = connection.execute(
        select(entries.user_id, entries.created_at).where(entries.id > last_entry_id)
    ).all()
    touched = {(user_id, day_of(moment)) for user_id, moment in later}
    if not touched:
        return
    day_ends = DayEndBalance.__table__
    for user_id, day in touched:
        connection.execute(
            delete(day_ends).where(day_ends.c.user_id == user_id, day_ends.c.day == day)
        )
    earliest = datetime.combine(min(day for _, day in touched), datetime.min.time(), UTC)
    closing = {}
    for user_id, moment, balance in connection.execute(
        select(entries.user_id, entries.created_at, entries.balance_after)
        .where(
            entries.id <= last_entry_id,
            entries.user_id.in_({user_id for user_id, _ in touched}),
            entries.created_at >= earliest,
        )
        .order_by(entries.id)
    ):
        if (user_id, day_of(moment)) in touched:
            closing[user_id, day_of(moment)] = balance
    if closing:
        connection.execute(
            insert(day_ends),
            [{"user_id": u, "day": d, "balance": b} for (u, d), b in closing.items()],
        )


def vacuum_analyze(tables: Iterable[str] = ()) -> None:
    """Bring the planner's statistics and the visibility map up to date (PostgreSQL)."""
    from portal.db import db

    if db.engine.dialect.name != "postgresql":
        return
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        names = list(tables)
        if names:
            for name in names:
                connection.execute(text(f"VACUUM (ANALYZE) {name}"))
        else:
            connection.execute(text("VACUUM (ANALYZE)"))


def create_database_if_missing(url: str, log=print) -> None:
    """CREATE DATABASE for a PostgreSQL URL whose database does not exist yet."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("postgresql"):
        return
    name = parsed.database
    engine = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                log(f"creating database {name}")
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def wipe_schema() -> None:
    """Drop every table (the portal's, Alembic's and the marker) of the app's database."""
    from sqlalchemy import MetaData

    from portal.db import db

    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        else:
            metadata = MetaData()
            metadata.reflect(connection)
            metadata.drop_all(connection)


def ensure_dataset(
    params: DatasetParams,
    log: Callable[[str], None] = print,
    max_age: timedelta = timedelta(days=7),
    rebuild: bool = False,
    migrate: bool = True,
) -> tuple[DatasetInfo, bool]:
    """Reuse the app database's data set if it has the same parameters, or build it anew
    with the real migrations. Returns (info, reused). Call inside an app context.

    `migrate=False` builds into the schema as it is (an empty, migrated database, such as
    the test suite's) instead of dropping everything and running the migrations.
    """
    from portal import schema

    info = None if rebuild else read_marker()
    if info is not None and info.fingerprint == params.fingerprint():
        age = datetime.now(UTC) - info.built
        if age <= max_age:
            removed = reset_to_baseline(info)
            if removed:
                log(f"reusing the data set built {info.built_at}; removed earlier runs' {removed}")
            else:
                log(f"reusing the data set built {info.built_at}")
            # Every table, not only those just cleared: where autovacuum is off (as on
            # this machine's server), rows deleted by earlier runs stay dead, and six runs
            # in one afternoon left 377,000 dead rows beside 408,000 live ledger entries.
            vacuum_analyze()
            return info, True
        log(f"the data set is {age.days} days old (dates drive the pages): rebuilding")
    elif info is not None:
        log("the data set was built with other parameters: rebuilding")
    if migrate:
        wipe_schema()
        schema.upgrade()
    info = build_dataset(params, log)
    vacuum_analyze()
    write_marker(info)
    return info, False
