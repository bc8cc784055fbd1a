from pathlib import Path

import pytest

from portal.config import ConfigError, database_url, load_config


def test_development_generates_and_keeps_a_secret_key(tmp_path: Path):
    first = load_config({}, tmp_path)["SECRET_KEY"]
    second = load_config({}, tmp_path)["SECRET_KEY"]
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_production_refuses_to_start_without_secret_key(tmp_path: Path):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_config(
            {
                "PORTAL_ENV": "production",
                "STRIPE_SECRET_KEY": "sk_live_x",
                "PORTAL_BASE_URL": "https://portal.example",
            },
            tmp_path,
        )


def test_production_refuses_sandbox_payments(tmp_path: Path):
    with pytest.raises(ConfigError, match="sandbox"):
        load_config(
            {
                "PORTAL_ENV": "production",
                "SECRET_KEY": "k" * 40,
                "PORTAL_BASE_URL": "https://portal.example",
            },
            tmp_path,
        )


def test_production_cookies_are_secure(tmp_path: Path):
    config = load_config(
        {
            "PORTAL_ENV": "production",
            "SECRET_KEY": "k" * 40,
            "STRIPE_SECRET_KEY": "sk_live_x",
            "PORTAL_BASE_URL": "https://portal.example",
        },
        tmp_path,
    )
    assert config["SESSION_COOKIE_SECURE"] and config["REMEMBER_COOKIE_SECURE"]
    assert config["PAYMENTS_MODE"] == "stripe"


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


def test_production_refuses_to_start_without_a_base_url(tmp_path: Path):
    with pytest.raises(ConfigError, match="PORTAL_BASE_URL"):
        load_config(
            {"PORTAL_ENV": "production", "SECRET_KEY": "k" * 40, "STRIPE_SECRET_KEY": "sk_x"},
            tmp_path,
        )
