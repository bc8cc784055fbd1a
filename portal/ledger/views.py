"""The customer's dashboard and balance history (page and CSV export)."""

import io
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, render_template, request, stream_with_context
from flask_login import current_user, login_required

from portal import csvfile
from portal.billing.queries import latest_purchases
from portal.jobs.services import latest_jobs
from portal.ledger import queries
from portal.ledger.chart import balance_chart
from portal.ledger.forms import HistoryFilterForm
from portal.ledger.models import EntryKind
from portal.pagination import page_request
from portal.timeutil import utcnow

bp = Blueprint("ledger", __name__)

CHART_DAYS = 90


@bp.get("/dashboard")
@login_required
def dashboard():
    series = queries.balance_series(current_user.id, CHART_DAYS, utcnow().date())
    return render_template(
        "ledger/dashboard.html",
        balance=current_user.credits_balance,
        totals=queries.totals(current_user),
        chart=balance_chart(series),
        chart_days=CHART_DAYS,
        purchases=latest_purchases(current_user.id),
        jobs=latest_jobs(current_user.id),
    )


def _filters(form: HistoryFilterForm) -> queries.HistoryFilter:
    """Turn the form's local dates into UTC bounds in the customer's timezone."""
    if not form.validate():
        return queries.HistoryFilter()
    zone = ZoneInfo(current_user.timezone or "UTC")

    def local_midnight(day):
        return datetime.combine(day, time(0), tzinfo=zone)

    return queries.HistoryFilter(
        kind=EntryKind(form.kind.data) if form.kind.data else None,
        start=local_midnight(form.start.data) if form.start.data else None,
        end=local_midnight(form.end.data + timedelta(days=1)) if form.end.data else None,
    )


@bp.get("/history")
@login_required
def history():
    form = HistoryFilterForm(request.args)
    filters = _filters(form)
    wanted = page_request(request.args)
    page = queries.history_page(current_user.id, filters, wanted.size, wanted.before, wanted.after)
    kept = {key: value for key, value in request.args.items() if key not in ("before", "after")}
    return render_template(
        "ledger/history.html",
        form=form,
        page=page,
        kept_args=kept,
        labels=queries.KIND_LABELS,
    ), (400 if form.errors else 200)


# Rows per chunk of the CSV export (about 70 kB): each chunk is one fetch from the database
# and one write to the client. A row per chunk spent more time on writes than on rows;
# much larger chunks would only delay the first byte and hold more memory.
CSV_ROWS_PER_CHUNK = 1000
_CSV_HEADER = ("date", "what happened", "credits", "balance after", "purchase", "job", "note")


@bp.get("/history.csv")
@login_required
def history_csv():
    form = HistoryFilterForm(request.args)
    filters = _filters(form)
    zone = ZoneInfo(current_user.timezone or "UTC")
    batches = queries.history_for_export(current_user.id, filters, batch=CSV_ROWS_PER_CHUNK)
    filename = f"credit-history-{utcnow():%Y-%m-%d}.csv"
    return Response(
        stream_with_context(_csv_chunks(batches, zone)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _csv_chunks(batches, zone: ZoneInfo):
    """Yield the CSV text one batch of entries at a time, the header with the first."""
    buffer = io.StringIO()
    writer = csvfile.writer(buffer)
    writer.writerow(_CSV_HEADER)
    labels = queries.KIND_LABELS
    for batch in batches:
        writer.writerows(
            (
                created_at.astimezone(zone).isoformat(timespec="seconds"),
                labels[kind],
                credits,
                balance_after,
                purchase_id or "",
                job_id or "",
                memo,
            )
            for _id, created_at, kind, credits, balance_after, purchase_id, job_id, memo in batch
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()
