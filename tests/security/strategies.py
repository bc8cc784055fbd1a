"""Hypothesis strategies for hostile input: odd text, raw bytes, numbers that are not,
missing and repeated form fields, and JSON of the wrong shape."""

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.security.helpers import SQL, XSS

# Modest, reproducible runs: every test also pins its own @seed.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FEWER = settings(FUZZ, max_examples=25)

HUGE = "A" * 70_000

HOSTILE_TEXT = st.sampled_from(
    [
        XSS,
        SQL,
        "' OR '1'='1",
        '"><svg onload=alert(1)>',
        "{{7*7}}",
        "\x00",
        "a\x00b",
        "\u202e\u0635\u0648\u0631\u0629",
        "\U0001f4a9" * 3,
        "\ufeff",
        "e\u0301" * 5,
        "٥",
        "１２",
        "1e3",
        "NaN",
        "Infinity",
        "-Infinity",
        "-1",
        "-0",
        "0",
        "9" * 40,
        "x" * 6000,
        HUGE,
        " ",
        "",
        "\r\n",
        "%00",
        "%ff",
        "../../etc/passwd",
        "nobody@example.com",
        "2026-02-30",
        "9999-12-31",
        "0001-01-01",
        "9999-12-31T23:59",
        "0001-01-01T00:00",
    ]
)

# Text a browser can send (no lone surrogates: they cannot be UTF-8 encoded).
TEXT = st.one_of(
    HOSTILE_TEXT,
    st.text(max_size=30),
    st.text(max_size=12).map(lambda text: text + XSS),
)

# Raw bytes in a url-encoded body: often not UTF-8 at all.
RAW = st.binary(max_size=20)

NUMBER_TEXT = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)

VALUE = st.one_of(TEXT, TEXT, RAW, NUMBER_TEXT)


def field(*likely, value=VALUE):
    """One form field: missing (None), one value, or the name repeated with several.

    `likely` are realistic values (valid ones among them) drawn as often as junk.
    """
    single = st.one_of(st.sampled_from(likely), value) if likely else value
    return st.one_of(
        st.none(),
        single,
        single,
        single,
        st.lists(single, min_size=2, max_size=3),
    )


def form(**fields) -> st.SearchStrategy[list[tuple[str, str | bytes]]]:
    """Url-encoded pairs for a form whose fields are given as strategies (see `field`)."""

    def flatten(values: dict) -> list[tuple[str, str | bytes]]:
        pairs = []
        for name, value in values.items():
            if value is None:
                continue
            for one in value if isinstance(value, list) else [value]:
                pairs.append((name, one))
        return pairs

    return st.fixed_dictionaries(fields).map(flatten)


# -- JSON ---------------------------------------------------------------------------------

LONE_SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80", "\ud83d"])

JSON_TEXT = st.one_of(TEXT, LONE_SURROGATES, st.text(max_size=10).map(lambda s: s + "\ud800"))

JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    JSON_TEXT,
)

JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)


def json_member(*likely):
    """A JSON object member: absent (None), a realistic value, or any JSON value."""
    return st.one_of(st.none(), st.sampled_from(likely) if likely else JSON_VALUE, JSON_VALUE)


def json_object(**members) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(members).map(
        lambda values: {name: value for name, value in values.items() if value is not None}
    )


def json_bytes(document) -> bytes:
    """JSON text as Python writes it: NaN and Infinity included, surrogates escaped."""
    return json.dumps(document).encode()


RAW_BODY = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b'"text"',
            b"{",
            b'{"credits": NaN}',
            b'{"credits": Infinity}',
            b'{"credits": -Infinity}',
            b'{"credits": 1e400}',
            b'{"a": 1, "a": 2}',
            b"\xef\xbb\xbf{}",
            b'{"external_id": "\\ud800"}',
            b"[" * 5000 + b"]" * 5000,
            b'{"x": ' + b"9" * 5000 + b"}",
        ]
    ),
)
