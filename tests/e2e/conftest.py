"""Browser tests: the portal as a real server, driven by Playwright in Debian's Chromium.

Without Chromium the whole folder is skipped with one reason. Playwright never downloads
a browser here: it launches /usr/bin/chromium (or $E2E_CHROMIUM). axe-core comes from
npm into tests/e2e/node_modules (`npm ci --prefix tests/e2e`, run by `make test`).
"""

import logging
import os
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect
from werkzeug.serving import WSGIRequestHandler, make_server

from portal import schema
from tests.e2e.support import (
    AXE_FILE,
    DESKTOP,
    SERVICE_TOKEN,
    Browsing,
    ErrorLog,
    LiveServer,
    Platform,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
NO_CHROMIUM = "browser tests need Chromium: apt-get install chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


# The live server shares two cores with Chromium and the test: give assertions some slack.
expect.set_options(timeout=10_000)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: browser test against a live portal (needs Chromium; tests/e2e)"
    )


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item of the run: mark only this folder's.
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


class _WithoutChromium(pytest.Module):
    """A test module of this folder on a machine without Chromium: skipped, not imported."""

    def collect(self):
        # Every module is skipped from this one line, so pytest reports one line for all.
        pytest.skip(NO_CHROMIUM)


def pytest_pycollect_makemodule(module_path, parent):
    if not CHROMIUM.exists() and HERE in Path(module_path).parents:
        return _WithoutChromium.from_parent(parent, path=Path(module_path))
    return None


@pytest.fixture(autouse=True)
def _clean_database():
    """Replaces the root conftest's: browser tests use the live server's own database.

    Every test makes its own users with unique e-mails, so tests never see each other's
    data except in the staff queue, which they search by reference.
    """
    yield


# -- the live server ------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code="-", size="-"):
        pass


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    from portal import create_app
    from portal.db import db

    root = tmp_path_factory.mktemp("e2e")
    app = create_app(
        {
            "PORTAL_ENV": "testing",
            "TESTING": True,
            "SECRET_KEY": "e2e-secret-key",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{root / 'portal.db'}",
            "INSTANCE_PATH": str(root / "instance"),
            "MAIL_BACKEND": "log",
            "PAYMENTS_MODE": "sandbox",
            "STRIPE_API_BASE": "",
            "STRIPE_SECRET_KEY": "sk_test_sandbox",
            "STRIPE_WEBHOOK_SECRET": "whsec_sandbox",
            "STRIPE_WEBHOOK_SECRET_PREVIOUS": "",
            "SANDBOX_WEBHOOKS": "thread",
            "SANDBOX_REFUND_SECONDS": 0.5,
            "PORTAL_SERVICE_TOKEN": SERVICE_TOKEN,
            "PASSWORD_HASH_PROFILE": "fast-for-tests",
            "RATELIMIT_ENABLED": False,
            "PROXY_FIX_COUNT": 0,
        }
    )
    with app.app_context():
        schema.upgrade()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    # Links in e-mails (sign-up, reset) are written by the worker, outside any request.
    app.config["PORTAL_BASE_URL"] = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="e2e-live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", app, errors)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        logging.getLogger().removeHandler(errors)
        with app.app_context():
            db.engine.dispose()


# -- Playwright, configured for Debian's Chromium ---------------------------------------


@pytest.fixture(scope="session")
def base_url(live_server):
    return live_server.url


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # Playwright gives every launch a fresh, temporary user-data dir of its own.
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": CHROMIUM_FLAGS,
        "chromium_sandbox": False,
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args, base_url):
    return {
        **browser_context_args,
        "base_url": base_url,
        "viewport": DESKTOP,
        "locale": "en-US",
        "timezone_id": "America/Vancouver",
    }


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_FILE.exists():
        pytest.fail(
            f"axe-core is not installed ({AXE_FILE} is missing): "
            "run `npm ci --prefix tests/e2e` (make test does)",
            pytrace=False,
        )
    return AXE_FILE.read_text()


@pytest.fixture
def browse(request, browser, browser_context_args, live_server, axe_source):
    """Watched tabs for this test; see support.Browsing."""
    # The node's name carries a parametrized test's parameters: one folder for each.
    browsing = Browsing(browser, browser_context_args, live_server, request.node.name, axe_source)
    yield browsing
    browsing.close()


@pytest.fixture
def platform(playwright, live_server):
    """The processing platform's API client, with the service token."""
    context = playwright.request.new_context(
        base_url=live_server.url,
        extra_http_headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    yield Platform(context)
    context.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """After a browser test, fail it for console errors, axe findings or unchecked pages."""
    browsing = getattr(item, "funcargs", {}).get("browse")
    if not isinstance(browsing, Browsing):
        return (yield)
    try:
        result = yield
    except BaseException:
        browsing.write_report()
        found = browsing.problems()
        if found:
            item.add_report_section("call", "browser checks", "\n".join(found))
        raise
    browsing.write_report()
    found = browsing.problems()
    if found:
        raise AssertionError(
            f"{len(found)} problem(s) seen in the browser:\n" + "\n".join(f"- {p}" for p in found)
        )
    return result
