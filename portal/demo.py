"""Believable demo data for `make run`; never used in production."""

from portal.accounts.models import User


def seed_demo_history(customer: User) -> None:
    """Give the demo customer a purchase and job history, once.

    The ledger and purchase features fill this in; until then the customer starts empty.
    """
