"""What every browser test needs: a live portal, watched tabs, the platform's API, data.

`Browsing` opens tabs (each its own browser context, so its own cookies) and watches them:
console errors, uncaught exceptions, server errors, and every page a tab lands on. A test
calls `browse.check(page, "step")` at each key step, which takes a screenshot into
test-artifacts/ and runs axe-core on the page. When the test ends, the conftest's hook
calls `browse.problems()`: the test fails if any tab logged a JavaScript error, any page
had a `serious` or `critical` accessibility violation, or a tab landed on a page that
was never checked. `browse.check_fits(page, name)` checks a page as `check` does and
measures its layout at the tab's screen size: the page must not scroll sideways, and
each table's key columns must be in view; what does not fit fails the test at its end,
every page's findings together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask
from playwright.sync_api import APIRequestContext, Browser, Page, expect

from tests.authenticator import Authenticator

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
AXE_FILE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"

# Long enough for the policy (15+ characters), and not a common password.
PASSWORD = "plum-orbit-lantern-1947"
STAFF_PASSWORD = "quartz-harbour-violet-2026"
SERVICE_TOKEN = "e2e-platform-token-3f9a61c2"

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PHONE_CONTEXT = {"viewport": PHONE, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
# The screens every page must fit (issue 18): a laptop and a phone. Their names start
# the screenshots' file names (desktop-staff-queue.png, phone-staff-queue.png).
SCREENS = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": PHONE_CONTEXT,
}
BLOCKING_IMPACTS = ("serious", "critical")


# -- the live server ------------------------------------------------------------------


class ErrorLog(logging.Handler):
    """Keeps every ERROR the portal logs (unhandled exceptions, failed webhooks)."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.records: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        with self._lock:
            self.records.append(text)

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return self.records[mark:]


@dataclass
class LiveServer:
    url: str
    app: Flask
    errors: ErrorLog

    @contextmanager
    def database(self) -> Iterator[None]:
        """An app context on the live server's database, for setting up data directly."""
        from portal.db import db

        with self.app.app_context():
            try:
                yield
            finally:
                db.session.remove()

    @property
    def sandbox(self):
        """The in-process Stripe sandbox the live server pays and refunds with."""
        return self.app.extensions["stripe_sandbox"]


# -- data set up directly in the database ---------------------------------------------


_counter = iter(range(1, 1_000_000))


def unique_email(kind: str) -> str:
    return f"{kind}-{next(_counter)}-{int(time.time() * 1000) % 10**8}@example.com"


def create_customer(
    server: LiveServer, timezone: str | None = "America/Vancouver", email: str | None = None
) -> str:
    """A customer account made in the database; returns its e-mail.

    With a timezone already set, the pages do not report the browser's and reload.
    """
    from portal.accounts import services

    email = email or unique_email("customer")
    with server.database():
        user = services.register_user(email, PASSWORD)
        if timezone:
            services.update_timezone(user, timezone)
    return email


# The authenticator secrets of the staff members the journeys made, by e-mail: the
# journeys' phone.
AUTHENTICATORS: dict[str, Authenticator] = {}


def create_staff(
    server: LiveServer,
    timezone: str = "America/Vancouver",
    enrolled: bool = True,
    email: str | None = None,
) -> str:
    """A staff member made in the database; with `enrolled`, their authenticator set up."""
    import pyotp

    from portal.accounts import services
    from portal.db import db
    from portal.timeutil import utcnow

    email = email or unique_email("staff")
    with server.database():
        user, _ = services.create_or_promote_staff(email, STAFF_PASSWORD)
        services.update_timezone(user, timezone)
        if enrolled:
            user = services.user_by_email(email)
            user.totp_secret = pyotp.random_base32()
            AUTHENTICATORS[email] = Authenticator(user.totp_secret)
            user.totp_enrolled_at = utcnow()
            db.session.commit()
    return email


def authenticator_code(email: str) -> str:
    """A code the journeys' phone shows for `email` that the portal has not seen yet."""
    return AUTHENTICATORS[email].fresh_code()


def purchase_of(server: LiveServer, email: str, package_code: str):
    """(id, Stripe payment intent, status) of the customer's latest purchase of a package."""
    from sqlalchemy import select

    from portal.accounts.models import User
    from portal.billing.models import Purchase
    from portal.db import db

    with server.database():
        purchase = db.session.scalars(
            select(Purchase)
            .join(User, User.id == Purchase.user_id)
            .where(User.email == email, Purchase.package_code == package_code)
            .order_by(Purchase.id.desc())
        ).first()
        assert purchase is not None, f"{email} has no {package_code} purchase"
        return purchase.id, purchase.stripe_payment_intent_id, purchase.status.value


def make_overdue(server: LiveServer, request_id: int) -> None:
    """Move a refund request's answer-due time into the past, as if days had gone by."""
    from portal.db import db
    from portal.refunds.models import RefundRequest
    from portal.timeutil import utcnow

    with server.database():
        request = db.session.get(RefundRequest, request_id)
        assert request is not None, request_id
        request.due_at = utcnow() - timedelta(days=2)
        db.session.commit()


def emailed_link(server: LiveServer, email: str) -> str:
    """What `flask worker` does next for sign-ups and resets; the link it e-mailed `email`."""
    from sqlalchemy import select

    from portal.accounts.services import answer_account_requests
    from portal.accounts.views import account_links
    from portal.db import db
    from portal.notifications.models import OutboxEmail
    from portal.timeutil import utcnow

    with server.database():
        answer_account_requests(utcnow(), account_links())
        body = db.session.scalars(
            select(OutboxEmail.body_text)
            .where(OutboxEmail.to_address == email)
            .order_by(OutboxEmail.id.desc())
        ).first()
    assert body is not None, f"no e-mail to {email}"
    return re.search(r"http://\S+/(?:signup/finish|reset)/\S+", body)[0]


def run_refund_worker(server: LiveServer) -> int:
    """What `flask worker` does, 11 minutes from now: send the refunds whose undo window passed."""
    from portal.billing.money_back.sending import send_due_refunds
    from portal.timeutil import utcnow

    with server.database():
        return send_due_refunds(utcnow() + timedelta(minutes=11))


def run_recharge_worker(server: LiveServer) -> int:
    """What `flask worker` does next for auto-recharge: start, charge and invoice."""
    from portal.billing import auto_recharge
    from portal.timeutil import utcnow

    with server.database():
        return auto_recharge.run(utcnow())


# -- the processing platform ------------------------------------------------------------


class Platform:
    """The processing platform, charging jobs through the portal's API with its token."""

    def __init__(self, request: APIRequestContext):
        self.request = request

    def _post(self, path: str, body: dict, expected: int) -> dict:
        response = self.request.post(path, data=body)
        assert response.status == expected, f"POST {path}: {response.status} {response.text()}"
        return response.json()

    def charge(self, email: str, credits: int, operation: str = "upscale") -> dict:
        external_id = f"job-{next(_counter)}-{int(time.time() * 1000) % 10**8}"
        body = {
            "external_id": external_id,
            "customer_email": email,
            "operation": operation,
            "credits": credits,
        }
        return self._post("/api/v1/jobs", body, 201)

    def complete(self, job_id: int) -> dict:
        return self._post(f"/api/v1/jobs/{job_id}/complete", {}, 200)

    def fail(self, job_id: int, detail: str, reason: str = "platform_error") -> dict:
        return self._post(f"/api/v1/jobs/{job_id}/fail", {"reason": reason, "detail": detail}, 200)

    def balance(self, email: str) -> int:
        response = self.request.get(f"/api/v1/customers/{email}/balance")
        assert response.status == 200, response.text()
        return response.json()["balance"]


# -- watched tabs -----------------------------------------------------------------------


@dataclass
class Watch:
    """What one tab saw."""

    label: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    visited: dict[str, str] = field(default_factory=dict)  # path -> first full URL
    checked: set[str] = field(default_factory=set)


def _path(url: str) -> str:
    return urlsplit(url).path or "/"


class Browsing:
    """Tabs for one test, each watched; screenshots and axe results for each checked step."""

    def __init__(
        self,
        browser: Browser,
        context_args: dict,
        server: LiveServer,
        test_name: str,
        axe_source: str,
    ):
        self.browser = browser
        self.context_args = context_args
        self.server = server
        self.axe_source = axe_source
        self.folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.watches: dict[Page, Watch] = {}
        self.contexts = []
        self.violations: list[dict] = []
        self.allowed_console: list[re.Pattern] = []
        self.shots = 0
        self.log_mark = len(server.errors.records)
        self.phone_widths: list[str] = []
        self.phone_words: list[str] = []
        self.layout_failures: list[str] = []

    # -- tabs ---------------------------------------------------------------------------

    def open(self, label: str, **context_overrides) -> Page:
        """A new tab in a fresh browser context (its own cookies), watched."""
        args = {**self.context_args, **context_overrides}
        context = self.browser.new_context(**args)
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = context.new_page()
        watch = Watch(label)
        self.watches[page] = watch

        def on_console(message) -> None:
            if message.type == "error":
                where = message.location.get("url", "") if message.location else ""
                watch.console_errors.append(f"{message.text} [{where or page.url}]")

        def on_response(response) -> None:
            if response.status >= 500:
                watch.server_errors.append(f"{response.status} {response.url}")

        def on_navigated(frame) -> None:
            if frame == page.main_frame and frame.url.startswith(self.server.url):
                watch.visited.setdefault(_path(frame.url), frame.url)

        page.on("console", on_console)
        page.on("pageerror", lambda error: watch.page_errors.append(f"{error} [{page.url}]"))
        page.on("response", on_response)
        page.on("framenavigated", on_navigated)
        return page

    def allow_console_error(self, pattern: str) -> None:
        """Accept console errors matching `pattern` (e.g. the 403 a test asks for)."""
        self.allowed_console.append(re.compile(pattern))

    def close(self) -> None:
        for context in self.contexts:
            # A browser that died has nothing left to close.
            with contextlib.suppress(Exception):
                context.close()

    # -- checks -------------------------------------------------------------------------

    def check(self, page: Page, step: str, file_name: str | None = None) -> list[dict]:
        """Screenshot the page and run axe-core on it; return its violations (all impacts).

        The screenshot is numbered in the order taken, or called `file_name`.png.
        """
        page.wait_for_load_state("load")
        watch = self.watches[page]
        self.shots += 1
        name = f"{self.shots:02d}-{watch.label}-{re.sub(r'[^a-z0-9]+', '-', step.lower())}.png"
        if file_name:
            name = f"{file_name}.png"
        page.screenshot(path=str(self.folder / name), full_page=True)
        found = self._axe(page)
        for violation in found:
            violation["step"] = f"{watch.label}: {step}"
            violation["url"] = page.url
        self.violations.extend(found)
        watch.checked.add(_path(page.url))
        return found

    def check_phone_width(self, page: Page, step: str) -> int:
        """Screenshot at phone size and record whether the page scrolls sideways."""
        self.check(page, f"phone {step}")
        width = page.evaluate("document.documentElement.scrollWidth")
        viewport = page.viewport_size["width"]
        if width > viewport:
            wide = page.evaluate(WIDEST_ELEMENTS, viewport)
            self.phone_widths.append(
                f"{step} ({page.url}): document.documentElement.scrollWidth is {width}px "
                f"on a {viewport}px-wide screen; elements reaching past the edge: {wide}"
            )
        broken = page.evaluate(BROKEN_WORDS)
        if broken:
            self.phone_words.append(f"{step} ({page.url}): {', '.join(broken)}")
        return width

    def check_fits(
        self,
        page: Page,
        name: str,
        key_columns: Mapping[str, Sequence[str] | None] | None = None,
    ) -> list[str]:
        """Check the page (screenshot `<screen>-<name>.png`, axe), then whether it fits.

        It fits when the page does not scroll sideways and, in every table, each key
        column's cell in every body row is rendered and lies inside the screen and inside
        every ancestor that clips overflow (a scrolling `.table-wrap` included): readable
        without scrolling. `key_columns` maps a table's name (the heading just before
        it; "*" for any table not named) to the header texts of its key columns, or to
        None for all of them; a table it does not name must show every column. Headers
        are found by their text, so a header that is only visually hidden (a table shown
        as stacked cards on a phone) still names its column.

        Returns what does not fit; the test fails with it, and every other page's, at
        its end.
        """
        screen = _screen_of(page)
        # Sections that start closed are measured, and photographed, open: what they
        # hold must fit once a person opens them.
        page.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; })")
        self.check(page, f"{screen} {name}", file_name=f"{screen}-{name}")
        viewport = page.viewport_size["width"]
        found: list[str] = []
        width, inner = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        # A phone zooms out to show a page wider than its screen: innerWidth grows with
        # the page, and the screen's own width is the limit.
        if width > min(viewport, inner):
            zoomed = f" (zoomed out: innerWidth {inner}px)" if inner != viewport else ""
            found.append(
                f"scrolls sideways: document.documentElement.scrollWidth is {width}px on a "
                f"{viewport}px screen{zoomed}; reaching past the edge: "
                + page.evaluate(WIDEST_ELEMENTS, viewport)
            )
        tables = page.evaluate(TABLE_CELLS, viewport)
        found += _key_column_failures(tables, key_columns or {})
        self.layout_failures += [f"{screen} {name} ({_path(page.url)}): {line}" for line in found]
        return found

    def _axe(self, page: Page) -> list[dict]:
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.evaluate(self.axe_source)
        result = page.evaluate(
            """async () => {
                const result = await axe.run(document, {resultTypes: ["violations"]});
                return result.violations.map(v => ({
                    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
                    tags: v.tags,
                    nodes: v.nodes.map(n => ({
                        target: n.target.join(" "), html: n.html.slice(0, 300),
                        summary: n.failureSummary,
                    })),
                }));
            }"""
        )
        return result

    # -- the verdict --------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything that makes the test fail besides its own assertions."""
        found: list[str] = []
        for watch in self.watches.values():
            for message in watch.console_errors:
                if not any(pattern.search(message) for pattern in self.allowed_console):
                    found.append(f"console error in tab '{watch.label}': {message}")
            found += [f"uncaught exception in tab '{watch.label}': {e}" for e in watch.page_errors]
            found += [f"server error seen by tab '{watch.label}': {e}" for e in watch.server_errors]
            for path, url in watch.visited.items():
                if path not in watch.checked:
                    found.append(f"tab '{watch.label}' visited {url} but the test never checked it")
        found += [
            f"portal logged an error: {line}" for line in self.server.errors.since(self.log_mark)
        ]
        for violation in self.violations:
            if violation["impact"] in BLOCKING_IMPACTS:
                targets = "; ".join(node["target"] for node in violation["nodes"][:5])
                found.append(
                    f"accessibility ({violation['impact']}) {violation['id']}: {violation['help']} "
                    f"at {violation['step']} {_path(violation['url'])} -> {targets}"
                )
        found += [f"horizontal scrolling at phone size: {line}" for line in self.phone_widths]
        found += [
            f"words split across lines at phone size (unreadable columns): {line}"
            for line in self.phone_words
        ]
        found += [f"does not fit: {line}" for line in self.layout_failures]
        return found

    def write_report(self) -> None:
        """All axe findings of the test (every impact) beside its screenshots."""
        report = {
            "violations": self.violations,
            "phone_widths": self.phone_widths,
            "phone_broken_words": self.phone_words,
            "layout_failures": self.layout_failures,
            "pages": {
                watch.label: sorted(watch.visited.values()) for watch in self.watches.values()
            },
        }
        (self.folder / "accessibility.json").write_text(json.dumps(report, indent=2))


# Lists the elements whose right edge passes the viewport (for a readable failure). One
# inside a box that clips or scrolls its overflow (a `.table-wrap`) does not widen the
# page, so it is not listed: what is listed is what makes the page scroll sideways. An
# absolutely positioned element (a visually hidden label) escapes every box up to its
# nearest positioned ancestor, clipping or not.
WIDEST_ELEMENTS = """(viewport) => {
    const clipped = (el) => {
        let escapes = getComputedStyle(el).position === "absolute";
        for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
            const style = getComputedStyle(up);
            if (escapes && style.position === "static") continue;
            if (style.overflowX !== "visible") return true;
            escapes = style.position === "absolute";
        }
        return false;
    };
    const seen = [];
    for (const el of document.querySelectorAll("body *")) {
        const box = el.getBoundingClientRect();
        if (box.right > viewport + 1 && box.width > 0 && !clipped(el)) {
            let name = el.tagName.toLowerCase();
            if (el.id) name += "#" + el.id;
            if (el.classList.length) name += "." + [...el.classList].join(".");
            const text = el.children.length ? "" : el.textContent.trim().slice(0, 40);
            if (text) name += ' "' + text + '"';
            seen.push(name + " (right edge " + Math.round(box.right) + "px)");
        }
        if (seen.length >= 6) break;
    }
    return seen.join(", ") || "none found";
}"""


def _screen_of(page: Page) -> str:
    """The SCREENS name of the tab's viewport, or its size."""
    viewport = page.viewport_size
    for screen, context in SCREENS.items():
        if context["viewport"] == viewport:
            return screen
    return f"{viewport['width']}x{viewport['height']}"


def _key_column_failures(
    tables: list[dict], key_columns: Mapping[str, Sequence[str] | None]
) -> list[str]:
    """What TABLE_CELLS measured, against the key columns asked for, in words."""
    found: list[str] = []
    names = [table["name"] for table in tables]
    for wanted in key_columns:
        if wanted != "*" and wanted not in names:
            found.append(f"no table named '{wanted}' (tables: {names or 'none'})")
    for table in tables:
        label = f"table '{table['name']}'"
        columns = [column["name"] for column in table["columns"]]
        keys = key_columns.get(table["name"], key_columns.get("*"))
        if keys is None:
            keys = columns
        for missing in [key for key in keys if key not in columns]:
            found.append(f"{label} has no column '{missing}' (its columns: {columns})")
        if not table["rows"]:
            found.append(f"{label} has no rows to check")
            continue
        cut = []
        for column in table["columns"]:
            if column["name"] in keys and column["failures"]:
                count, example = len(column["failures"]), column["failures"][0]
                cut.append(
                    f"'{column['name']}' {count} of {table['rows']} cells {example['kind']} "
                    f"({example['detail']})"
                )
        if cut:
            found.append(f"{label}, key columns not in view: " + "; ".join(cut))
    return found


# Every table's columns (named by their header's text, hidden or not) and, for each
# column, the body cells that cannot be read without scrolling sideways: not rendered,
# past the screen's edge, or cut off by an ancestor that clips or scrolls its overflow.
# A row with a single cell spanning columns ("No jobs yet.") is a message, not data, and
# an empty cell has nothing to see.
TABLE_CELLS = r"""(screenWidth) => {
    const words = (el) => (el.textContent || "").replace(/\s+/g, " ").trim();
    const describe = (el) => {
        let name = el.tagName.toLowerCase();
        if (el.id) name += "#" + el.id;
        if (el.classList.length) name += "." + [...el.classList].join(".");
        return name;
    };
    const px = (value) => Math.round(value);
    const headings = [...document.querySelectorAll("h1, h2, h3, h4")];
    // The last heading before the table in a box that holds the table too: a heading
    // inside a form or card the table comes after does not name it.
    const nameOf = (table) => {
        let name = "";
        for (const heading of headings) {
            if (!(heading.compareDocumentPosition(table) & Node.DOCUMENT_POSITION_FOLLOWING)) break;
            // A heading that is a disclosure's summary names what the disclosure holds.
            const summary = heading.closest("summary");
            const box = summary ? summary.parentElement : heading.parentElement;
            if (box.contains(table)) name = words(heading);
        }
        return name || (table.caption ? words(table.caption) : "(no heading)");
    };
    const clippers = (cell) => {
        const found = [];
        for (let el = cell.parentElement; el && el !== document.body; el = el.parentElement) {
            const style = getComputedStyle(el);
            if (style.overflowX !== "visible" || style.overflowY !== "visible") found.push(el);
        }
        return found;
    };
    const problemOf = (cell) => {
        if (!words(cell) && !cell.querySelector("a, button, input, select, img, svg")) return null;
        const style = getComputedStyle(cell);
        if (style.display === "none") return {kind: "not rendered", detail: "display: none"};
        if (style.visibility !== "visible") {
            return {kind: "not rendered", detail: "visibility: " + style.visibility};
        }
        const box = cell.getBoundingClientRect();
        // Two pixels: the visually-hidden pattern leaves a 1x1 box.
        if (box.width < 2 || box.height < 2) {
            return {kind: "not rendered", detail: px(box.width) + "x" + px(box.height) + "px"};
        }
        const span = "x " + px(box.left) + "-" + px(box.right) + "px";
        for (const el of clippers(cell)) {
            const style = getComputedStyle(el);
            const frame = el.getBoundingClientRect();
            const left = frame.left + el.clientLeft, right = left + el.clientWidth;
            const top = frame.top + el.clientTop, bottom = top + el.clientHeight;
            const clipsX = style.overflowX !== "visible";
            // Rows below a scrolling box's fold are a vertical scroll, not a clipped column.
            const clipsY = style.overflowY === "hidden" || style.overflowY === "clip";
            if ((clipsX && (box.left < left - 1 || box.right > right + 1))
                || (clipsY && (box.top < top - 1 || box.bottom > bottom + 1))) {
                return {
                    kind: "cut off by " + describe(el) + " (overflow " + style.overflowX + ")",
                    detail: span + ", the box shows x " + px(left) + "-" + px(right) + "px",
                };
            }
        }
        if (box.left < -1 || box.right > screenWidth + 1) {
            const detail = span + " on a " + screenWidth + "px screen";
            return {kind: "outside the screen", detail: detail};
        }
        if (style.overflowX !== "visible" && cell.scrollWidth > cell.clientWidth + 1) {
            return {
                kind: "with their content cut off",
                detail: cell.scrollWidth + "px of content in " + cell.clientWidth + "px",
            };
        }
        return null;
    };
    return [...document.querySelectorAll("table")].map((table) => {
        const head = table.tHead && table.tHead.rows.length
            ? table.tHead.rows[table.tHead.rows.length - 1] : null;
        const columns = [];
        let at = 0;
        for (const cell of head ? head.cells : []) {
            const span = cell.colSpan || 1;
            columns.push({name: words(cell), start: at, end: at + span, failures: []});
            at += span;
        }
        let rows = 0;
        for (const body of table.tBodies) {
            for (const row of body.rows) {
                if (row.cells.length === 1 && row.cells[0].colSpan > 1) continue;
                rows += 1;
                let start = 0;
                for (const cell of row.cells) {
                    const span = cell.colSpan || 1;
                    const problem = problemOf(cell);
                    for (const column of columns) {
                        if (problem && column.start < start + span && start < column.end) {
                            column.failures.push(problem);
                        }
                    }
                    start += span;
                }
            }
        }
        return {name: nameOf(table), columns: columns, rows: rows};
    });
}"""


# Words (3 to 16 letters or digits) that the layout splits across two lines, as
# `overflow-wrap: anywhere` does to squeezed table columns: "Packa|ge", "R|R|-|0|0|0".
BROKEN_WORDS = """() => {
    const broken = new Set();
    const walker = document.createTreeWalker(document.querySelector("main"), NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
        const node = walker.currentNode;
        const parent = node.parentElement;
        if (!parent || parent.closest(".visually-hidden, script, style")) continue;
        if (parent.getBoundingClientRect().width < 2) continue;
        for (const match of node.data.matchAll(/[A-Za-z0-9]{3,16}/g)) {
            const range = document.createRange();
            range.setStart(node, match.index);
            range.setEnd(node, match.index + match[0].length);
            const lines = new Set(
                [...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top))
            );
            if (lines.size > 1) broken.add(match[0]);
        }
        if (broken.size >= 12) break;
    }
    return [...broken];
}"""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


# -- steps a person takes ---------------------------------------------------------------


def main_nav(page: Page):
    return page.get_by_role("navigation", name="Main")


def stat(page: Page, term: str):
    """The value a page's description list gives `term` (Refunded, Still unused, Answer
    due by...): the `dd` after the `dt` that reads exactly `term`."""
    term_test = f"normalize-space(.)={json.dumps(term)}"
    return page.locator(f"xpath=//dl//dt[{term_test}]/following-sibling::dd[1]")


def status_of(page: Page):
    """The status badge beside a page's title (a request's, a purchase's, a job's)."""
    return page.locator(".page-heading .badge")


def log_in(browse: Browsing, page: Page, email: str, password: str = PASSWORD) -> None:
    """Log in through the form; lands on the dashboard (customers) or the queue (staff)."""
    page.goto("/login")
    browse.check(page, "log-in form")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/(dashboard|staff/|login/second-factor)$"))
    if page.url.endswith("/login/second-factor"):
        browse.check(page, "second factor")
        page.get_by_label("Code").fill(authenticator_code(email))
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(re.compile(r"/staff/$"))


def pay_in_sandbox(browse: Browsing, page: Page, package: str, card: str, price: str) -> None:
    """From the dashboard: Buy credits, choose `package`, pay with `card` on the sandbox."""
    main_nav(page).get_by_role("link", name="Buy credits").click()
    browse.check(page, "buy credits")
    page.get_by_role("button", name=f"Buy {package}").click()
    page.wait_for_url(re.compile(r"/sandbox/checkout/cs_"))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Pay {price}")
    browse.check(page, "sandbox checkout")
    page.get_by_label(card).check()
    page.get_by_role("button", name=f"Pay {price}").click()


CARD_OK = "Card 4242 4242 4242 4242: payment succeeds"
CARD_DECLINED = "Card 4000 0000 0000 0002: the bank declines it"
CARD_DISPUTED = "Card 4000 0000 0000 0259: payment succeeds, then is disputed as fraud"
CARD_CHARGES_FAIL = "Card 4000 0000 0000 0341: can be saved, but every payment is declined"
CARD_AUTHENTICATES = (
    "Card 4000 0027 6000 3184: the bank asks the cardholder to confirm every payment"
)


def customer_with_starter(browse: Browsing, server: LiveServer, **tab) -> tuple[str, Page]:
    """A logged-in customer who just bought Starter (50 credits, $5); (e-mail, tab)."""
    email = create_customer(server)
    page = browse.open("customer", **tab)
    log_in(browse, page, email)
    pay_in_sandbox(browse, page, "Starter", CARD_OK, "$5.00")
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits added")
    browse.check(page, "50 credits added")
    return email, page


def customer_with_partly_used_pro(browse: Browsing, server: LiveServer, platform: Platform, **tab):
    """A logged-in customer who bought Pro (300 credits, $20) and spent 60 of them."""
    email = create_customer(server)
    page = browse.open("customer", **tab)
    log_in(browse, page, email)
    browse.check(page, "dashboard")
    pay_in_sandbox(browse, page, "Pro", CARD_OK, "$20.00")
    expect(page.get_by_role("heading", level=1)).to_have_text("Credits added")
    browse.check(page, "300 credits added")
    for credits, operation in ((25, "upscale"), (35, "style-transfer")):
        platform.complete(platform.charge(email, credits, operation)["id"])
    assert platform.balance(email) == 240
    return email, page


def open_refund_form(browse: Browsing, page: Page, package: str = "Pro") -> None:
    """From anywhere: Purchases, then the purchase's "Request a refund" link."""
    main_nav(page).get_by_role("link", name="Purchases").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your purchases")
    browse.check(page, "purchases")
    row = page.get_by_role("row", name=re.compile(package))
    row.get_by_role("link", name="Request a refund").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Request a refund")


def request_id_from(page: Page) -> int:
    match = re.search(r"/refunds/(\d+)$", page.url)
    assert match, page.url
    return int(match.group(1))
