"""The jobs API the processing platform calls: JSON in and out, bearer-token auth."""

import hmac
import re

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import inspect, select

from portal import limits
from portal.accounts.models import User
from portal.db import db
from portal.errors import AccountTerminated, Conflict, InsufficientCredits, NotFound, PortalError
from portal.extensions import csrf, limiter
from portal.jobs import services
from portal.jobs.models import FailureReason, Job
from portal.jobs.openapi import OPENAPI_DOCUMENT

bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)
limiter.limit(limits.configured("RATELIMIT_JOBS_API"), key_func=limits.service_token)(bp)

MAX_CREDITS_PER_JOB = 1_000_000
# The most jobs one batch may charge.
MAX_JOBS_PER_BATCH = 100
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class BadRequest(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _error(status: int, error: str, message: str, **extra):
    response = jsonify({"error": error, "message": message, **extra})
    response.status_code = status
    return response


@bp.errorhandler(BadRequest)
def _bad_request(error: BadRequest):
    return _error(400, "invalid_request", error.message, field=error.field)


def _refusal(error: PortalError) -> tuple[int, dict]:
    """The status and body the API answers a service's refusal with."""
    if isinstance(error, InsufficientCredits):
        body = {"error": "insufficient_credits", "message": "the balance does not cover this job"}
        return 402, body | {"balance": error.balance}
    status, code = REFUSALS[type(error)]
    return status, {"error": code, "message": str(error)}


REFUSALS = {
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    AccountTerminated: (403, "account_terminated"),
}


@bp.errorhandler(NotFound)
@bp.errorhandler(Conflict)
@bp.errorhandler(AccountTerminated)
@bp.errorhandler(InsufficientCredits)
def _refused(error: PortalError):
    status, body = _refusal(error)
    response = jsonify(body)
    response.status_code = status
    return response


@bp.before_request
def _authenticate():
    if request.endpoint == "jobs_api.openapi":
        return None
    expected = current_app.config["PORTAL_SERVICE_TOKEN"]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest keeps the comparison time independent of where the tokens differ.
    if (
        not expected
        or scheme != "Bearer"
        or not hmac.compare_digest(given.encode(), expected.encode())
    ):
        response = _error(401, "unauthorized", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="portal"'
        return response
    return None


def _json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        # Thousands of nested brackets: no honest job needs that.
        raise BadRequest("body", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("body", "the body must be a JSON object")
    return body


def _string(body: dict, field: str, max_length: int, pattern: re.Pattern | None = None) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(field, f"{field} is required and must be a non-empty string")
    if len(value) > max_length:
        raise BadRequest(field, f"{field} must be at most {max_length} characters")
    if not _storable(value):
        raise BadRequest(field, f"{field} must be valid text without NUL characters")
    if pattern is not None and not pattern.match(value.strip()):
        raise BadRequest(field, f"{field} is not valid")
    return value.strip()


def _storable(text: str) -> bool:
    # JSON can carry lone surrogates ("\\ud800") and NULs, which no database column takes.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _credits(body: dict) -> int:
    value = body.get("credits")
    # JSON booleans are ints in Python; 1.0 and "1" are not credit counts either.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("credits", "credits is required and must be a whole number")
    if not 0 < value <= MAX_CREDITS_PER_JOB:
        raise BadRequest("credits", f"credits must be between 1 and {MAX_CREDITS_PER_JOB:,}")
    return value


def job_json(job: Job, account: User | None = None) -> dict:
    """The job as the API shows it; with `account`, its customer's balance as it stands."""
    document = {
        "id": job.id,
        "external_id": job.external_id,
        "operation": job.operation,
        "status": job.status.value,
        "credits": job.credits,
        "failure_reason": job.failure_reason.value if job.failure_reason else None,
        "credits_restored": job.credits_restored,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if account is not None:
        document["balance_after"] = account.credits_balance
        document.update(_low_balance_json(account.credits_balance, account.low_balance_threshold))
    return document


def _low_balance_json(balance: int, threshold: int | None) -> dict:
    # The customer's own low-balance alert, so that the platform can warn them too.
    return {
        "low_balance_threshold": threshold,
        "balance_below_threshold": threshold is not None and balance < threshold,
    }


def _described(job: Job) -> dict:
    """The job as the API shows it, with its customer's balance: one query after a commit."""
    (job_id,) = inspect(job).identity  # without reloading the expired job just for its id
    job, account = db.session.execute(
        select(Job, User).join(User, User.id == Job.user_id).where(Job.id == job_id)
    ).one()
    return job_json(job, account)


def _job_request(body: dict) -> services.JobRequest:
    return services.JobRequest(
        external_id=_string(body, "external_id", 255),
        customer_email=_string(body, "customer_email", 254, EMAIL),
        operation=_string(body, "operation", 100),
        credits=_credits(body),
    )


@bp.post("/jobs")
def create_job():
    outcome = services.charge(_job_request(_json_body()))
    return jsonify(_charged_json(outcome)), 201 if outcome.created else 200


@bp.post("/jobs:batch")
def create_jobs():
    """Charge up to MAX_JOBS_PER_BATCH jobs in one call. Each gets its own answer, with
    the status and body `POST /jobs` would have given it; the call itself answers 200
    once the batch could be read (400 when it could not, charging nothing)."""
    body = _json_body()
    items = body.get("jobs")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_JOBS_PER_BATCH:
        raise BadRequest("jobs", f"jobs must be a list of 1 to {MAX_JOBS_PER_BATCH} jobs")
    answers: list[dict | None] = [None] * len(items)
    asked, positions = [], []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise BadRequest("jobs", "each job must be a JSON object")
            asked.append(_job_request(item))
            positions.append(index)
        except BadRequest as error:
            answers[index] = {
                "status": 400,
                "error": "invalid_request",
                "message": error.message,
                "field": f"jobs[{index}].{error.field}"
                if error.field != "jobs"
                else f"jobs[{index}]",
            }
    for index, outcome in zip(positions, services.charge_jobs(asked), strict=True):
        answers[index] = _batch_answer(outcome)
    return jsonify({"results": answers})


def _batch_answer(outcome: services.Charged) -> dict:
    if outcome.refusal is not None:
        status, body = _refusal(outcome.refusal)
        return {"status": status, **body}
    return {"status": 201 if outcome.created else 200, "job": _charged_json(outcome)}


def _charged_json(outcome: services.Charged) -> dict:
    """A job just charged (or found), with the balance and alert just after it."""
    document = job_json(outcome.job)
    document["balance_after"] = outcome.balance_after
    document.update(_low_balance_json(outcome.balance_after, outcome.low_balance_threshold))
    return document


@bp.get("/jobs/<id:job_id>")
def show_job(job_id: int):
    job = db.session.get(Job, job_id)
    if job is None:
        raise NotFound("no job with this id")
    return jsonify(job_json(job))


@bp.post("/jobs/<id:job_id>/complete")
def complete_job(job_id: int):
    job = services.complete_job(job_id)
    return jsonify(_described(job))


@bp.post("/jobs/<id:job_id>/fail")
def fail_job(job_id: int):
    body = _json_body()
    reason = body.get("reason")
    if not isinstance(reason, str) or reason not in {member.value for member in FailureReason}:
        raise BadRequest("reason", "reason must be platform_error or invalid_input")
    detail = body.get("detail", "")
    if not isinstance(detail, str) or len(detail) > 2000 or not _storable(detail):
        raise BadRequest("detail", "detail must be text of at most 2,000 characters")
    job = services.fail_job(job_id, FailureReason(reason), detail)
    return jsonify(_described(job))


@bp.get("/customers/<path:email>/balance")
def customer_balance(email: str):
    if not _storable(email) or len(email) > 254:
        raise NotFound("no customer with this e-mail")
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not user.known_to_the_platform:
        raise NotFound("no customer with this e-mail")
    return jsonify(
        {
            "customer_email": user.email,
            "balance": user.credits_balance,
            **_low_balance_json(user.credits_balance, user.low_balance_threshold),
        }
    )


@bp.get("/openapi.json")
def openapi():
    return jsonify(OPENAPI_DOCUMENT)
