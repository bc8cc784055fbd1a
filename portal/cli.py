"""`flask --app portal ...` commands for operators."""

import sys

import click
from flask import Flask, current_app

from portal import schema
from portal.errors import ValidationError

DEMO_CUSTOMER = ("customer@demo.test", "demo-customer-password-2026")
DEMO_STAFF = ("staff@demo.test", "demo-staff-password-2026")


@click.command("create-staff")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create_staff(email: str, password_stdin: bool) -> None:
    """Create a staff user, or give an existing user the staff role."""
    from portal.accounts.services import create_or_promote_staff, user_by_email

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif user_by_email(email) is None:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = None
    try:
        user, created = create_or_promote_staff(email, password)
    except ValidationError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{'Created' if created else 'Promoted'} staff user {user.email}.")
    if user.totp_enrolled_at is None:
        enrolment = current_app.url_map.bind("portal").build("accounts.second_factor")
        click.echo(
            "At their first log-in they set up an authenticator app: after the password, "
            f"the portal's {enrolment} page shows the QR code to scan."
        )


@click.command("seed-demo")
def seed_demo() -> None:
    """Create the demo customer and staff user (once) and print their credentials."""
    from portal.accounts.services import create_or_promote_staff, register_user, user_by_email
    from portal.demo import seed_demo_history

    email, password = DEMO_CUSTOMER
    customer = user_by_email(email) or register_user(email, password)
    staff_email, staff_password = DEMO_STAFF
    if user_by_email(staff_email) is None:
        create_or_promote_staff(staff_email, staff_password)
    seed_demo_history(customer)
    click.echo("Demo users (development only):")
    click.echo(f"  customer  {email}  /  {password}")
    click.echo(f"  staff     {staff_email}  /  {staff_password}")


@click.command("send-mail")
def send_mail() -> None:
    """Send pending outbox e-mails over SMTP now."""
    from portal.notifications.services import deliver_pending

    click.echo(f"Sent {deliver_pending()} e-mail(s).")


@click.command("ledger-check")
def ledger_check() -> None:
    """Verify the ledger's and money-back invariants; exit 1 naming the accounts that fail."""
    from portal.billing.money_back import checks
    from portal.ledger.services import check_books

    problems = check_books() + checks.problems()
    for problem in problems:
        click.echo(f"account {problem.user_id} <{problem.email}>: {problem.problem}", err=True)
    if problems:
        accounts = len({problem.user_id for problem in problems})
        raise click.ClickException(f"{len(problems)} problem(s) in {accounts} account(s)")
    click.echo(
        "Ledger OK: every balance matches its entries and lots, and no purchase has more "
        "money back than was paid or spendable credits whose money went back."
    )


@click.command("ledger-rebuild-figures")
def ledger_rebuild_figures() -> None:
    """Recompute the running totals and day-end balances every account keeps."""
    from portal.ledger.services import rebuild_kept_figures

    changed = rebuild_kept_figures()
    click.echo(f"Figures rebuilt from the entries: {len(changed)} account(s) corrected.")


@click.command("reconcile")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
    help="Look at Checkout Sessions created since this UTC date (default: 3 days ago).",
)
def reconcile(since) -> None:
    """Credit paid Checkout Sessions whose webhook never arrived, and settle refunds still
    pending and disputes still open as Stripe says they stand."""
    from datetime import UTC, timedelta

    from portal.billing.fulfilment import Fulfilment
    from portal.billing.reconcile import reconcile as run_reconciliation
    from portal.billing.reconcile import reconcile_money_back
    from portal.errors import PaymentProviderError
    from portal.timeutil import utcnow

    start = since.replace(tzinfo=UTC) if since else utcnow() - timedelta(days=3)
    try:
        results = run_reconciliation(start)
        rechecked = reconcile_money_back(utcnow(), start)
    except PaymentProviderError as error:
        raise click.ClickException(f"Stripe could not be reached: {error}") from None
    fixed = [result for result in results if result.outcome == Fulfilment.CREDITED]
    for result in results:
        if result.outcome != Fulfilment.ALREADY_CREDITED:
            click.echo(f"{result.session_id}  purchase {result.purchase_id}  {result.outcome}")
    click.echo(
        f"Checked {len(results)} completed session(s) since {start:%Y-%m-%d %H:%M} UTC; "
        f"credited {len(fixed)} that had been missed."
    )
    click.echo(
        f"Re-read {rechecked.refunds} pending refund(s) and {rechecked.disputes} open or "
        f"recent dispute(s) from Stripe; {rechecked.unanswered} could not be looked up."
    )


@click.command("worker")
@click.option("--once", is_flag=True, help="Do one round of work and exit.")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between rounds.")
@click.option(
    "--wait-for",
    metavar="URL",
    help="Start once this address answers (the server this worker runs beside).",
)
def worker(once: bool, interval: float, wait_for: str | None) -> None:
    """Send due refunds and outbox e-mails until stopped (SIGTERM finishes the round)."""
    from flask import current_app

    from portal.worker import Worker

    runner = Worker(current_app._get_current_object(), interval)
    if once:
        click.echo(f"Done: {runner.run_once()}")
    else:
        runner.run(wait_for=wait_for)


@click.command("digest")
def digest() -> None:
    """E-mail staff the refund requests that are past their response date."""
    from portal.staff.services import send_overdue_digest
    from portal.timeutil import utcnow

    click.echo(f"{send_overdue_digest(utcnow())} overdue request(s) in the digest.")


@click.command("terminate-account")
@click.argument("email")
@click.option("--reason", required=True, help="Why: the customer reads it in the e-mail.")
def terminate_account(email: str, reason: str) -> None:
    """Terminate a customer's account for a Terms of Use breach (audited, no staff actor)."""
    from portal.accounts.services import user_by_email
    from portal.errors import Conflict, NotFound
    from portal.staff.services import terminate_for_terms_breach
    from portal.timeutil import utcnow

    user = user_by_email(email)
    if user is None:
        raise click.ClickException(f"No account has the address {email}.")
    try:
        terminate_for_terms_breach(user.id, reason, None, None, utcnow())
    except NotFound:
        raise click.ClickException(f"No account has the address {email}.") from None
    except (Conflict, ValidationError) as refusal:
        raise click.ClickException(str(refusal)) from None
    click.echo(f"Terminated the account of {user.email}; they were e-mailed the reason.")


@click.command("check-deploy")
def check_deploy() -> None:
    """Fail, listing each problem, when settings are unsafe for production."""
    from flask import current_app

    from portal.ops.deploycheck import deployment_problems

    problems = deployment_problems(current_app._get_current_object())
    for problem in problems:
        click.echo(f"- {problem}", err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} deployment problem(s).")
    click.echo("Deployment settings look safe.")


def register(app: Flask) -> None:
    commands = (
        create_staff,
        seed_demo,
        send_mail,
        ledger_check,
        ledger_rebuild_figures,
        reconcile,
        worker,
        digest,
        terminate_account,
        check_deploy,
    )
    for command in commands:
        app.cli.add_command(command)
    schema.register_commands(app)
