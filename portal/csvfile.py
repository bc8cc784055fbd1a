"""Every CSV file the portal writes goes through this writer, so that none can run a formula.

A spreadsheet treats a cell starting with = + - @ (or a tab or carriage return before
one) as a formula, and a formula can open links or run commands on the reader's
computer. Text that starts that way, such as an e-mail address a customer chose or a
job's operation, is written with a leading apostrophe: the spreadsheet then shows it as
text. Numbers are written as they are (a charge of -5 credits stays the number -5).
"""

import csv
from collections.abc import Iterable
from decimal import Decimal
from typing import TextIO

FORMULA_STARTS = frozenset("=+-@\t\r")
NUMBER_TYPES = (int, float, Decimal)  # bool is an int too


def spreadsheet_cell(value):
    """The cell a spreadsheet shows as written: text that would be a formula is escaped."""
    if value is None or isinstance(value, NUMBER_TYPES):
        return value
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text[:1] in FORMULA_STARTS else text


def _safe_cells(cells: Iterable) -> list:
    # `spreadsheet_cell` for every cell, with its two common cases written out: an export
    # of 200,000 entries spent a fifth of its time calling the function for them.
    return [
        ("'" + cell if cell[:1] in FORMULA_STARTS else cell)
        if cell.__class__ is str
        else cell
        if cell.__class__ is int
        else spreadsheet_cell(cell)
        for cell in cells
    ]


class SafeWriter:
    """`csv.writer` whose every text cell is passed through `spreadsheet_cell`."""

    def __init__(self, out: TextIO):
        self._writer = csv.writer(out)

    def writerow(self, cells: Iterable) -> None:
        self._writer.writerow(_safe_cells(cells))

    def writerows(self, rows: Iterable[Iterable]) -> None:
        self._writer.writerows(map(_safe_cells, rows))


def writer(out: TextIO) -> SafeWriter:
    """A CSV writer on `out` (opened with newline="") that defuses formulas."""
    return SafeWriter(out)
