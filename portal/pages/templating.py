"""Jinja filters and globals: money, credits and local times are formatted only here."""

import re
from collections.abc import Callable
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask, current_app, request, url_for
from flask_login import current_user
from flask_wtf.csrf import generate_csrf
from jinja2 import pass_context
from markupsafe import Markup, escape

from portal import policy
from portal.db import MAX_ID
from portal.money import format_cents, format_credits
from portal.timeutil import DATE_FORMAT, DATE_TIME_FORMAT, company_deadline, company_deadline_day


def _viewer_zone() -> ZoneInfo:
    name = getattr(current_user, "timezone", None) or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@pass_context
def localtime(context, moment: datetime | None, fmt: str = DATE_TIME_FORMAT) -> str:
    """Show `moment` in the viewer's timezone: "Dec 6, 2026, 7:25 PM"."""
    if moment is None:
        return ""
    # The zone is looked up once per page (see `portal_globals`), not once per date.
    zone = context.get("viewer_zone") or _viewer_zone()
    return moment.astimezone(zone).strftime(fmt)


@pass_context
def localdate(context, moment: datetime | None) -> str:
    """The viewer's calendar date of `moment`: "Dec 6, 2026"."""
    return localtime(context, moment, DATE_FORMAT)


def calendar_day(day: date) -> str:
    """A calendar day (already in the right zone): "Jan 3, 2027"."""
    return day.strftime(DATE_FORMAT)


def breakable_email(address: str | None) -> Markup:
    """An e-mail address that may wrap after its "@" and before its dots, never mid-word."""
    text = str(escape(address or ""))
    return Markup(text.replace("@", "@<wbr>").replace(".", "<wbr>."))  # noqa: S704  # nosec B704


def _span(css_class: str, text: str) -> Markup:
    # Both values are escaped; the f-string only joins them (four times as fast as
    # Markup's own % or format, and these run once per table row).
    return Markup(f'<span class="{escape(css_class)}">{escape(text)}</span>')  # noqa: S704  # nosec B704


# Written in Python rather than as Jinja macros: tables show one per row, and a macro
# call costs several times as much as a function call.
def badge(status: str) -> Markup:
    """A status as a coloured label: "waiting_on_customer" reads "Waiting on customer"."""
    return _span(f"badge badge-{status}", status.replace("_", " ").capitalize())


def credit_change(credits: int) -> Markup:
    """A signed credit amount, green when credits came in and red when they went out."""
    css = "credit-plus" if credits > 0 else "credit-minus"
    return _span(css, format_credits(credits, signed=True))


def nav_link(endpoint: str, label: str, within: tuple[str, ...] = ()) -> Markup:
    """A link of the site's navigation (ten on every page, so not a macro either).

    The section the page belongs to is marked, for sight and for screen readers: its
    own page, and the pages `within` it.
    """
    here = request.endpoint == endpoint or request.endpoint in within
    current = ' aria-current="page"' if here else ""
    return Markup(f'<a href="{escape(url_for(endpoint))}"{current}>{escape(label)}</a>')  # noqa: S704  # nosec B704


# How the pre-check's verdict reads on a badge, to customers and staff alike.
VERDICT_WORDS = {
    "likely_eligible": "Likely eligible",
    "likely_ineligible": "Likely not eligible",
    "needs_review": "Needs a closer look",
    "resolved_automatically": "Settled automatically",
}


def verdict_badge(verdict) -> Markup:
    """A pre-check verdict (a Verdict or its stored value) as a badge."""
    value = getattr(verdict, "value", verdict)
    return _span(f"badge badge-{value}", VERDICT_WORDS.get(value, value))


def _moment(value: str) -> datetime | None:
    """The moment an audit value holds, when it is an ISO 8601 time with its zone."""
    if len(value) < 19 or value[10] != "T":
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


# A value stored as an identifier ("needs_review"), not as words.
_CODE = re.compile(r"[a-z]+(?:_[a-z]+)+")


def _dollars(value):
    return format_cents(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _audit_value(value, zone: ZoneInfo) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str) and (moment := _moment(value)):
        return moment.astimezone(zone).strftime(DATE_TIME_FORMAT)
    if isinstance(value, str) and _CODE.fullmatch(value):
        return value.replace("_", " ")  # a stored enum value: "needs_review" reads "needs review"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_audit_value(item, zone) for item in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_audit_value(item, zone)}" for key, item in value.items())
    return str(value)


@pass_context
def audit_changes(context, before: dict | None, after: dict | None) -> Markup:
    """An audit entry's before and after as one line per field: "Status: open → approved".

    A field only in `after` was set; one only in `before` was removed. Staff read these
    to see what an action changed, so unchanged fields are left out. Times read in the
    viewer's zone, as every other time does.
    """
    zone = context.get("viewer_zone") or _viewer_zone()
    before, after = before or {}, after or {}
    lines = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key), after.get(key)
        in_before, in_after = key in before, key in after
        if key.endswith("_cents"):
            # Money is stored in cents and read in dollars.
            key = key.removesuffix("_cents")
            old, new = (_dollars(value) for value in (old, new))
        label = escape(key.replace("_", " ").capitalize())
        if in_before and in_after:
            if old == new:
                continue
            change = f"{escape(_audit_value(old, zone))} → {escape(_audit_value(new, zone))}"
        elif in_after:
            change = escape(_audit_value(new, zone))
        else:
            change = f"{escape(_audit_value(old, zone))} → removed"
        lines.append(f"<li><strong>{label}:</strong> {change}</li>")
    if not lines:
        return Markup('<span class="muted">—</span>')
    return Markup(f'<ul class="changes">{"".join(lines)}</ul>')  # noqa: S704  # nosec B704


def url_for_each(endpoint: str, key: str) -> Callable[[int], str]:
    """`url_for(endpoint, **{key: row_id})` for every row of a table, built once.

    Werkzeug builds each URL from its rule (converters, query string) in about 10 µs;
    a table of 50 rows with two links each spent a fifth of its page there (profiled).
    Only the integer id changes from row to row, so the URL is built once around a
    placeholder id and each row's id takes its place. No other values: one of them
    could contain the placeholder's digits.
    """
    head, tail = url_for(endpoint, **{key: MAX_ID}).split(str(MAX_ID))
    return lambda row_id: f"{head}{int(row_id)}{tail}"


def csrf_field() -> Markup:
    """The hidden CSRF input of a form with no other fields (log out, take, undo).

    The same token Flask-WTF's forms carry, without building a form for it: the base
    template has one, a request's page several.
    """
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return Markup()
    name = escape(current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token"))
    token = escape(generate_csrf())
    return Markup(f'<input name="{name}" type="hidden" value="{token}">')  # noqa: S704  # nosec B704


def register(app: Flask) -> None:
    app.add_template_filter(format_cents, "usd")
    app.add_template_filter(format_credits, "credits")
    app.add_template_filter(localtime, "localtime")
    app.add_template_filter(localdate, "localdate")
    app.add_template_filter(company_deadline, "deadline")
    app.add_template_filter(calendar_day, "day")
    app.add_template_filter(company_deadline_day, "deadline_day")
    app.add_template_filter(breakable_email, "email")
    app.add_template_global(badge)
    app.add_template_global(credit_change)
    app.add_template_global(verdict_badge)
    app.add_template_global(nav_link)
    app.add_template_global(csrf_field)
    app.add_template_global(url_for_each)
    app.add_template_global(audit_changes)

    @app.context_processor
    def portal_globals():
        return {
            "policy": policy,
            "support_email": current_app.config["SUPPORT_EMAIL"],
            "sandbox_payments": current_app.config["PAYMENTS_MODE"] == "sandbox",
            "viewer_zone": _viewer_zone(),
        }
