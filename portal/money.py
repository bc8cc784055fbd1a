"""Formatting of integer cents and credits. Money never becomes a float."""


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
