import logging
from pathlib import Path

import pytest

from portal import create_app
from portal.accounts.passwords import common_passwords
from portal.config import ConfigError, database_url, load_config
from portal.ops import deploycheck


def test_development_generates_and_keeps_a_secret_key(tmp_path: Path):
    first = load_config({}, tmp_path)["SECRET_KEY"]
    second = load_config({}, tmp_path)["SECRET_KEY"]
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_default_database_is_sqlite_under_instance(tmp_path: Path):
    config = load_config({}, tmp_path)
    assert config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'portal.db'}"
    assert config["PAYMENTS_MODE"] == "sandbox"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_url_names_the_psycopg_driver(given, expected):
    assert database_url(given) == expected


def test_unknown_environment_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError):
        load_config({"PORTAL_ENV": "staging"}, tmp_path)


def test_production_settings_come_from_the_environment(tmp_path: Path):
    config = load_config(
        {
            "PORTAL_ENV": "production",
            "SECRET_KEY": "k" * 40,
            "STRIPE_SECRET_KEY": "sk_live_x",
            "PORTAL_BASE_URL": "https://portal.example/",
        },
        tmp_path,
    )
    assert config["SESSION_COOKIE_SECURE"] and config["REMEMBER_COOKIE_SECURE"]
    assert config["PAYMENTS_MODE"] == "stripe"
    assert config["PORTAL_BASE_URL"] == "https://portal.example"


def test_production_never_makes_up_a_secret_key(tmp_path: Path):
    # It refuses to start instead (below); a key made up per machine would differ per server.
    assert load_config({"PORTAL_ENV": "production"}, tmp_path)["SECRET_KEY"] == ""
    assert not (tmp_path / "secret_key").exists()


# -- production refuses to start with what `flask check-deploy` calls unsafe ------------------

SAFE_PRODUCTION = {
    "PORTAL_ENV": "production",
    "SECRET_KEY": "5f0c1e9a7b3d4c2e8f6a1b0d9c7e5a3f2b4d6e8a",
    "DATABASE_URL": "postgresql://portal@db.invalid/portal",  # never connected to here
    "STRIPE_SECRET_KEY": "sk_live_x",
    "STRIPE_WEBHOOK_SECRET": "whsec_live_0123456789",
    "PORTAL_SERVICE_TOKEN": "service-token-0123456789abcdef-0123456789",
    "PORTAL_BASE_URL": "https://portal.example",
}
# Settings of the developer's shell that would change what is built.
OTHER_SETTINGS = (
    "PAYMENTS_MODE",
    "STRIPE_API_BASE",
    "FLASK_DEBUG",
    "MAIL_BACKEND",
    "PROXY_FIX_COUNT",
    "REDIS_URL",
    "TRUSTED_HOSTS",
    "PROMETHEUS_MULTIPROC_DIR",
)


def _start_production(monkeypatch, tmp_path: Path, overrides: dict | None = None, **environ):
    """create_app under PORTAL_ENV=production with SAFE_PRODUCTION changed by `environ`."""
    for name in OTHER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**SAFE_PRODUCTION, **environ}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return create_app({"INSTANCE_PATH": str(tmp_path), **(overrides or {})})


def test_production_starts_with_safe_settings_and_warns_of_the_rest(
    monkeypatch, tmp_path: Path, caplog
):
    with caplog.at_level(logging.WARNING, logger="portal.ops.deploycheck"):
        app = _start_production(monkeypatch, tmp_path)
    assert app.config["PORTAL_ENV"] == "production"
    warnings = "\n".join(record.getMessage() for record in caplog.records)
    for setting in ("PROXY_FIX_COUNT", "REDIS_URL", "TRUSTED_HOSTS", "PROMETHEUS_MULTIPROC_DIR"):
        assert setting in warnings


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("SECRET_KEY", "a", "SECRET_KEY"),
        ("SECRET_KEY", None, "SECRET_KEY"),
        ("SECRET_KEY", "k" * 31, "SECRET_KEY"),
        ("DATABASE_URL", "sqlite:////srv/portal/portal.db", "SQLite"),
        ("DATABASE_URL", None, "SQLite"),  # the default: SQLite under instance/
        ("STRIPE_WEBHOOK_SECRET", None, "STRIPE_WEBHOOK_SECRET"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_sandbox", "STRIPE_WEBHOOK_SECRET"),
        ("PORTAL_SERVICE_TOKEN", None, "PORTAL_SERVICE_TOKEN"),
        ("PORTAL_SERVICE_TOKEN", "short-token", "PORTAL_SERVICE_TOKEN"),
        ("STRIPE_SECRET_KEY", None, "sandbox"),
        ("PAYMENTS_MODE", "sandbox", "sandbox"),
        ("PORTAL_BASE_URL", None, "PORTAL_BASE_URL"),
        ("PORTAL_BASE_URL", "http://portal.example", "PORTAL_BASE_URL"),
        ("FLASK_DEBUG", "1", "Debug"),
    ],
)
def test_production_refuses_to_start_with_each_unsafe_setting(
    monkeypatch, tmp_path: Path, setting, value, named
):
    with pytest.raises(ConfigError, match="Refusing to start in production: 1 unsafe") as error:
        _start_production(monkeypatch, tmp_path, **{setting: value})
    assert named in str(error.value)


def test_production_refusal_names_every_problem_at_once(monkeypatch, tmp_path: Path):
    # Finding 11: a weak key, SQLite, no webhook secret and no service token.
    with pytest.raises(ConfigError) as error:
        _start_production(
            monkeypatch,
            tmp_path,
            SECRET_KEY="a",
            DATABASE_URL=None,
            STRIPE_WEBHOOK_SECRET=None,
            PORTAL_SERVICE_TOKEN=None,
        )
    message = str(error.value)
    assert "4 unsafe setting(s)" in message
    for named in ("SECRET_KEY", "SQLite", "STRIPE_WEBHOOK_SECRET", "PORTAL_SERVICE_TOKEN"):
        assert named in message


def test_no_common_password_is_long_enough_for_a_secret_key():
    # Why the deploy check judges SECRET_KEY by length alone.
    assert max(map(len, common_passwords())) < deploycheck.MIN_SECRET_LENGTH


def test_production_judges_the_settings_given_in_code_too(monkeypatch, tmp_path: Path):
    with pytest.raises(ConfigError, match="Secure"):
        _start_production(monkeypatch, tmp_path, overrides={"SESSION_COOKIE_SECURE": False})


def test_development_and_tests_start_on_sqlite_and_the_sandbox(monkeypatch, tmp_path: Path):
    for env in ("development", "testing"):
        app = _start_production(
            monkeypatch,
            tmp_path,
            PORTAL_ENV=env,
            SECRET_KEY="a",
            DATABASE_URL=None,
            STRIPE_SECRET_KEY=None,
            STRIPE_WEBHOOK_SECRET=None,
            PORTAL_SERVICE_TOKEN=None,
            PORTAL_BASE_URL=None,
        )
        assert app.config["PAYMENTS_MODE"] == "sandbox"
        assert app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")
