"""Formatting and parsing of integer cents and credits. Money never becomes a float."""

import re


def format_cents(cents: int, currency: str = "usd") -> str:
    """Render `cents` as money, e.g. 123456 -> "$1,234.56"; negatives keep their sign."""
    sign = "-" if cents < 0 else ""
    dollars, remainder = divmod(abs(cents), 100)
    symbol = "$" if currency.lower() == "usd" else ""
    suffix = "" if symbol else f" {currency.upper()}"
    return f"{sign}{symbol}{dollars:,}.{remainder:02d}{suffix}"


def format_credits(credits: int, signed: bool = False) -> str:
    """Render a credit count with thousands separators, optionally with a + sign."""
    return f"{credits:+,}" if signed else f"{credits:,}"


_DOLLARS = re.compile(r"^\$?([0-9]{1,7})(?:\.([0-9]{1,2}))?$")


def parse_dollars(text: str) -> int | None:
    """Read "5.86" or "$5.86" as 586 cents; None for anything else.

    Only ASCII digits and at most two decimals: no exponents, NaN, infinity, signs or
    thousands separators, which float-based parsing would let through.
    """
    match = _DOLLARS.match((text or "").strip())
    if not match:
        return None
    whole, fraction = match.groups()
    return int(whole) * 100 + int((fraction or "0").ljust(2, "0"))


# Plain digits, or digits grouped by commas as `|credits` prints them ("1,300").
_CREDITS = re.compile(r"^(?:[0-9]{1,3}(?:,[0-9]{3}){1,2}|[0-9]{1,9})$")


def parse_credits(text: str) -> int | None:
    """Read "500" or "1,300" as a whole number of credits; None for anything else.

    Only ASCII digits: no signs, decimals, exponents or other scripts' digits. Commas are
    taken only where a thousands separator belongs, so "1,30" is refused, not guessed at.
    """
    match = _CREDITS.match((text or "").strip())
    if not match:
        return None
    return int(match.group().replace(",", ""))
