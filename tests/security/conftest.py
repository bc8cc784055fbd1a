"""Fixtures for the security tests: a quiet sandbox, the service token, a world of real
objects, and one logged-in browser per role."""

import pytest

from portal.extensions import limiter
from tests.factories import quiet_sandbox
from tests.security.helpers import ROLES, SERVICE_TOKEN, Actor, World, actor_for, build_world


@pytest.fixture(autouse=True)
def _quiet_sandbox(app, monkeypatch):
    """No webhook from a background thread, no retry pauses, and the jobs API's token known."""
    quiet_sandbox(app, monkeypatch, webhooks="off")
    monkeypatch.setitem(app.config, "PORTAL_SERVICE_TOKEN", SERVICE_TOKEN)


@pytest.fixture(autouse=True)
def _limits_as_configured(app):
    """Every app shares the one Limiter, and the last app built (a production one, or one
    with limits on) switches it for all: keep it as the test app is configured."""
    limiter.enabled = app.config["RATELIMIT_ENABLED"]
    yield
    limiter.enabled = app.config["RATELIMIT_ENABLED"]


@pytest.fixture
def world(app) -> World:
    return build_world()


@pytest.fixture
def actors(app, world) -> dict[str, Actor]:
    """One logged-in browser per role."""
    return {role: actor_for(app, world, role) for role in ROLES}
