"""The credit portal: `create_app` reads like the table of contents of the application."""

import os
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict | None = None) -> Flask:
    """Build the portal; `config` overrides settings read from the environment."""
    instance_path = Path((config or {}).get("INSTANCE_PATH") or ROOT / "instance")
    app = Flask(
        __name__,
        instance_path=str(instance_path),
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(load_config(os.environ, instance_path))
    app.config.update(config or {})

    configure_logging(app)
    refuse_unsafe_production(app)
    register_routing(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_template_helpers(app)
    register_security(app)
    register_operations(app)
    register_cli(app)
    if app.config["PROXY_FIX_COUNT"]:
        count = app.config["PROXY_FIX_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)
    return app


def configure_logging(app: Flask) -> None:
    from portal.ops.requestlog import configure_logging as configure

    configure(app)


def refuse_unsafe_production(app: Flask) -> None:
    from portal.ops.deploycheck import refuse_unsafe_production as refuse

    refuse(app)


def register_routing(app: Flask) -> None:
    from portal.db import IdConverter

    app.url_map.converters["id"] = IdConverter


def register_extensions(app: Flask) -> None:
    from portal import models  # noqa: F401  (every table known to the metadata)
    from portal.accounts.services import load_user_from_session
    from portal.db import db, end_read_only_transaction
    from portal.extensions import csrf, limiter, login_manager

    db.init_app(app)
    # Runs before Flask-SQLAlchemy's own teardown, which rolls back what is left.
    app.teardown_request(end_read_only_transaction)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "accounts.login"
    login_manager.login_message = "Please log in to see that page."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"
    login_manager.user_loader(load_user_from_session)


def register_blueprints(app: Flask) -> None:
    from portal.accounts.views import bp as accounts
    from portal.billing import gateway
    from portal.billing.views import bp as billing
    from portal.billing.webhooks import bp as webhooks
    from portal.jobs.api import bp as jobs_api
    from portal.jobs.views import bp as jobs
    from portal.ledger.views import bp as ledger
    from portal.notifications.views import bp as notifications
    from portal.pages.views import bp as pages
    from portal.refunds.views import bp as refunds
    from portal.staff.views import bp as staff

    features = (accounts, billing, webhooks, ledger, jobs, jobs_api, refunds, staff, notifications)
    for blueprint in (pages, *features):
        app.register_blueprint(blueprint)
    gateway.register(app)
    if app.config["PAYMENTS_MODE"] == "sandbox":
        from portal.sandbox.views import register as register_sandbox

        register_sandbox(app)


def register_error_handlers(app: Flask) -> None:
    from portal.pages.errors import register

    register(app)


def register_template_helpers(app: Flask) -> None:
    from portal.pages.templating import register

    register(app)


def register_security(app: Flask) -> None:
    from portal.security import register

    register(app)


def register_operations(app: Flask) -> None:
    from portal.ops import metrics, requestlog
    from portal.ops.health import bp as health

    app.register_blueprint(health)
    requestlog.register(app)
    metrics.register(app)


def register_cli(app: Flask) -> None:
    from portal.cli import register

    register(app)
