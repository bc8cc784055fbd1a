from portal.accounts.models import Role
from portal.accounts.services import user_by_email
from tests.factories import make_user


def test_create_staff_with_password_on_stdin(app):
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["create-staff", "Ops@Example.com", "--password-stdin"],
        input="a staff passphrase that is long\n",
    )
    assert result.exit_code == 0, result.output
    assert "Created staff user ops@example.com" in result.output
    assert "/login/second-factor page shows the QR code" in result.output
    assert user_by_email("ops@example.com").role == Role.STAFF


def test_create_staff_promotes_an_existing_customer(app):
    make_user(email="promote@example.com")
    result = app.test_cli_runner().invoke(args=["create-staff", "promote@example.com"])
    assert result.exit_code == 0, result.output
    assert "Promoted" in result.output
    assert user_by_email("promote@example.com").is_staff


def test_create_staff_refuses_a_weak_password(app):
    result = app.test_cli_runner().invoke(
        args=["create-staff", "weak@example.com", "--password-stdin"], input="short\n"
    )
    assert result.exit_code != 0
    assert "at least 15" in result.output
    assert user_by_email("weak@example.com") is None


def test_seed_demo_is_repeatable(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed-demo"])
    second = runner.invoke(args=["seed-demo"])
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    assert "customer@demo.test" in first.output
    assert user_by_email("staff@demo.test").is_staff
