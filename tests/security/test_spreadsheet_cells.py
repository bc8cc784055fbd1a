"""The one CSV writer: text a spreadsheet would run as a formula is escaped, numbers are not."""

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

import pytest

from portal import csvfile


class Kind(StrEnum):
    NEGATIVE = "-negative"


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+2", "'=1+2"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tTab", "'\tTab"),
        ("\rreturn", "'\rreturn"),
        (Kind.NEGATIVE, "'-negative"),
        ("a = b", "a = b"),
        ("", ""),
        ("plain@example.com", "plain@example.com"),
        (-5, "-5"),
        (0, "0"),
        (Decimal("-1.50"), "-1.50"),
        (-0.5, "-0.5"),
        (None, ""),
        (True, "True"),
        (datetime(2026, 1, 2, tzinfo=UTC), "2026-01-02 00:00:00+00:00"),
    ],
)
def test_each_cell_is_written_as_a_spreadsheet_shows_it(cell, written):
    out = io.StringIO(newline="")
    csvfile.writer(out).writerow([cell])
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [[written]]


def test_writerows_escapes_every_row():
    out = io.StringIO(newline="")
    csvfile.writer(out).writerows([["=A1", 1], ["ok", -1]])
    assert out.getvalue() == "'=A1,1\r\nok,-1\r\n"
