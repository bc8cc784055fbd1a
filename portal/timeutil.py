"""The one place "now" is made, and business-day arithmetic in the company's timezone."""

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from portal import policy

COMPANY_TZ = ZoneInfo(policy.COMPANY_TIMEZONE)

# How every page and e-mail writes a date and a moment: "Dec 6, 2026", "Dec 6, 2026, 7:25 PM".
DATE_FORMAT = "%b %-d, %Y"
DATE_TIME_FORMAT = "%b %-d, %Y, %-I:%M %p"


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


@lru_cache(maxsize=32)
def _holidays_for(year: int) -> holidays.HolidayBase:
    country, subdivision = policy.COMPANY_HOLIDAY_REGION
    return holidays.country_holidays(country, subdiv=subdivision, years=year)


def is_business_day(day: date) -> bool:
    """Say whether `day` is a weekday that is not a British Columbia statutory holiday."""
    return day.weekday() < 5 and day not in _holidays_for(day.year)


def add_business_days(start: datetime, days: int) -> datetime:
    """Return the end of the business day `days` business days after `start`.

    Counting happens on the company's calendar: a request filed on Friday evening in
    Vancouver with 5 business days is due at the end of the following Friday.
    """
    local_day = start.astimezone(COMPANY_TZ).date()
    remaining = days
    while remaining > 0:
        local_day += timedelta(days=1)
        if is_business_day(local_day):
            remaining -= 1
    end_of_day = datetime.combine(local_day, time(23, 59, 59), tzinfo=COMPANY_TZ)
    return end_of_day.astimezone(UTC)


def company_date(moment: datetime) -> date:
    """Return the calendar date of `moment` in the company's timezone."""
    return moment.astimezone(COMPANY_TZ).date()


def company_month(moment: datetime) -> tuple[datetime, datetime]:
    """The company-calendar month `moment` falls in: its first moment, and the next
    month's first moment (both in UTC)."""
    local = moment.astimezone(COMPANY_TZ)
    start = datetime(local.year, local.month, 1, tzinfo=COMPANY_TZ)
    following = datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=COMPANY_TZ)
    return start.astimezone(UTC), following.astimezone(UTC)


def company_deadline(moment: datetime | None) -> str:
    """A deadline as the company keeps it, its zone named: "Fri, Dec 11, 2026, 11:59 PM PST".

    Deadlines are counted on the company's calendar (see `add_business_days`), so they are
    shown there too: in a viewer's own zone, Friday 23:59 in Vancouver reads as Saturday.
    """
    if moment is None:
        return ""
    local = moment.astimezone(COMPANY_TZ)
    zone = f"{policy.COMPANY_TIMEZONE_NAME} time ({local:%Z})"
    return f"{local:%a}, {local.strftime(DATE_TIME_FORMAT)} {zone}"


def company_deadline_day(moment: datetime | None) -> str:
    """The company's calendar day of a deadline, for tables: "Fri, Dec 11, 2026"."""
    if moment is None:
        return ""
    local = moment.astimezone(COMPANY_TZ)
    return f"{local:%a}, {local.strftime(DATE_FORMAT)}"
