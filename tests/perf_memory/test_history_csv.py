"""The CSV export writes many rows per chunk yet keeps its bytes exactly as they were.

EXPECTED_ROWS were produced by the export as it stood before it was batched (one row per
chunk), so any change to dates, labels, quoting or the formula guard shows up here.
"""

from datetime import UTC, datetime

import pytest

from portal.db import db
from portal.jobs.models import Job
from portal.ledger import views
from portal.ledger.models import EntryKind, LedgerEntry
from tests.factories import login_as, make_purchase, make_user

# (UTC time, kind, credits, balance after, link, memo), oldest first; the link is to the
# purchase (p), the job (j) or nothing. The times straddle both of Vancouver's 2026 clock
# changes and the turn of a year; the memos cover every character the formula guard
# defuses and everything the csv module must quote.
ENTRIES = [
    ("2025-12-31 23:59:59.999999", "purchase_credit", 1000, 1000, "p", "Pro package"),
    ("2026-03-08 07:59:00", "job_charge", -3, 997, "j", '=HYPERLINK("http://x")'),
    ("2026-03-08 09:59:59.900000", "job_refund", 3, 1000, "j", "+1, plus"),
    ("2026-03-08 10:00:00", "grant", 5, 1005, "", "-2"),
    ("2026-11-01 08:30:00", "adjustment", -1, 1004, "", "@SUM(A1)"),
    ("2026-11-01 09:30:00", "dispute_hold", -4, 1000, "p", "\tTab"),
    ("2026-11-02 12:00:01", "dispute_release", 4, 1004, "p", "\rreturn"),
    ("2026-11-03 00:00:00", "refund_claw_back", -2, 1002, "p", 'Said "hi"\nthen ü ✓'),
    ("2026-11-04 00:00:00", "claw_back_reversal", 2, 1004, "p", ""),
    ("2026-11-05 00:00:00", "job_charge", -1, 1003, "j", "a = b"),
]

HEADER = "date,what happened,credits,balance after,purchase,job,note\r\n"
# Newest first, as the export writes them; {p} and {j} stand for the purchase and job ids.
EXPECTED_ROWS = [
    "2026-11-04T16:00:00-08:00,Job charged,-1,1003,,{j},a = b\r\n",
    "2026-11-03T16:00:00-08:00,Refund did not go through: credits put back,2,1004,{p},,\r\n",
    "2026-11-02T16:00:00-08:00,Refunded: unused credits removed,-2,1002,{p},,"
    '"Said ""hi""\nthen ü ✓"\r\n',
    '2026-11-02T04:00:01-08:00,Dispute closed: credits released,4,1004,{p},,"\'\rreturn"\r\n',
    "2026-11-01T01:30:00-08:00,Payment disputed: unused credits on hold,-4,1000,{p},,'\tTab\r\n",
    "2026-11-01T01:30:00-07:00,Correction,-1,1004,,,'@SUM(A1)\r\n",
    "2026-03-08T03:00:00-07:00,Credits granted,5,1005,,,'-2\r\n",
    '2026-03-08T01:59:59-08:00,Failed job: credits returned,3,1000,,{j},"\'+1, plus"\r\n',
    '2026-03-07T23:59:00-08:00,Job charged,-3,997,,{j},"\'=HYPERLINK(""http://x"")"\r\n',
    "2025-12-31T15:59:59-08:00,Credits bought,1000,1000,{p},,Pro package\r\n",
]


@pytest.fixture
def history(client):
    """A customer in Vancouver with ENTRIES as their whole ledger, logged in."""
    user = make_user(timezone="America/Vancouver")
    # A purchase and a job for entries to point at, without the entries the services post.
    purchase = make_purchase(user, "pro", credited=False)
    job = Job(user_id=user.id, external_id="csv-golden", operation="upscale", credits=1)
    db.session.add(job)
    db.session.flush()
    for number, (at, kind, credits, balance, link, memo) in enumerate(ENTRIES):
        db.session.add(
            LedgerEntry(
                user_id=user.id,
                kind=EntryKind(kind),
                credits=credits,
                balance_after=balance,
                job_id=job.id if link == "j" else None,
                purchase_id=purchase.id if link == "p" else None,
                idempotency_key=f"golden:{number}",
                memo=memo,
                created_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
            )
        )
    db.session.commit()
    login_as(client, user)
    return {"p": str(purchase.id), "j": str(job.id)}


def expected(ids: dict, rows: list[str]) -> bytes:
    return (HEADER + "".join(row.format(**ids) for row in rows)).encode()


def test_export_bytes_are_unchanged(client, history):
    assert client.get("/history.csv").data == expected(history, EXPECTED_ROWS)


def test_chunk_boundaries_change_nothing(client, history, monkeypatch):
    monkeypatch.setattr(views, "CSV_ROWS_PER_CHUNK", 3)
    streamed = []
    write_chunks = views._csv_chunks

    def recording(*args):
        for chunk in write_chunks(*args):
            streamed.append(chunk)
            yield chunk

    monkeypatch.setattr(views, "_csv_chunks", recording)
    assert client.get("/history.csv").data == expected(history, EXPECTED_ROWS)
    # Ten rows in batches of three, the header riding with the first.
    assert len(streamed) == 4
    assert streamed[0].startswith(HEADER) and streamed[0].count("\r\n") == 4


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("kind=job_charge", [0, 8]),
        # 8 March in Vancouver: the clocks went forward at 2:00, 10:00 UTC.
        ("start=2026-03-08&end=2026-03-08", [6, 7]),
        # 1 November: 1:30 happened twice, once in PDT and once in PST.
        ("start=2026-11-01&end=2026-11-01", [4, 5]),
        ("kind=grant&start=2026-01-01", [6]),
        ("kind=grant&end=2026-01-01", []),
    ],
)
def test_filters_keep_the_same_bytes(client, history, query, kept):
    rows = [EXPECTED_ROWS[index] for index in kept]
    assert client.get(f"/history.csv?{query}").data == expected(history, rows)


def test_an_empty_history_is_the_header_alone(client):
    login_as(client, make_user())
    assert client.get("/history.csv").data == HEADER.encode()
