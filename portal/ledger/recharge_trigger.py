"""The ledger's half of auto-recharge: asking for a recharge when a job charge leaves the
balance below the customer's threshold.

The ledger calls `watch_for_recharge` for every entry it posts, under the customer's row
lock (see `services._post`), and only raises a flag on that row
(`User.auto_recharge_wanted`). Billing's worker takes the flag up, charges the card and
clears it (portal/billing/auto_recharge.py). Because the flag is read and set under the
lock every balance change takes, twenty charges crossing the threshold at once raise it
once, and the charge itself never waits for Stripe.

Only job charges ask. A refund's claw-back or a dispute's hold lowers the balance too,
but buying credits back on the customer's card because they asked for money back would
be perverse; the next job charged below the threshold asks instead.
"""

from portal.accounts.models import User
from portal.ledger.models import EntryKind


def watch_for_recharge(account: User, kind: EntryKind) -> None:
    """Ask for a recharge if this entry was a job charge that left the locked account's
    balance below its auto-recharge threshold, and none is asked for already."""
    threshold = account.auto_recharge_below
    if (
        threshold is not None
        and kind == EntryKind.JOB_CHARGE
        and account.credits_balance < threshold
        and not account.auto_recharge_wanted
    ):
        account.auto_recharge_wanted = True
