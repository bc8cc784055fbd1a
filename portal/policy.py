"""The refund policy's rules and numbers, each defined once.

Source: the published refund policy (last updated February 13, 2026). Every page, rule
and e-mail that mentions a package, a price or a deadline reads it from here.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    """A prepaid credit package as sold through Checkout."""

    code: str
    name: str
    credits: int
    price_cents: int
    currency: str = "usd"

    @property
    def cents_per_10_credits(self) -> int:
        """Return the price of 10 credits, rounded to the nearest cent (for display)."""
        return (self.price_cents * 10 * 2 + self.credits) // (2 * self.credits)

    def saving_against(self, other: "Package") -> int:
        """Return how much less a credit costs here than in `other`, in whole percent."""
        # Compare prices per credit exactly (cross-multiplied), then round half up.
        mine, theirs = self.price_cents * other.credits, other.price_cents * self.credits
        return (200 * (theirs - mine) + theirs) // (2 * theirs)

    def refund_for_unused(self, unused_credits: int) -> int:
        """Return the refund in cents for `unused_credits`, rounded down to the cent."""
        return unused_credits * self.price_cents // self.credits


PACKAGES: tuple[Package, ...] = (
    Package("starter", "Starter", 50, 500),
    Package("basic", "Basic", 120, 1_000),
    Package("pro", "Pro", 300, 2_000),
    Package("premium", "Premium", 1_000, 5_000),
)
PACKAGES_BY_CODE: dict[str, Package] = {package.code: package for package in PACKAGES}
# The package with the cheapest credit, marked "Best value" where packages are compared.
BEST_VALUE = min(PACKAGES, key=lambda package: package.price_cents / package.credits)
# A product fact rather than a refund rule: the ledger gives credits no expiry date, so
# the pages that sell them say so.
CREDITS_EXPIRE = False

# Requests made more than this many days after the purchase are generally not refunded.
REFUND_WINDOW_DAYS = 30
# "If our platform experiences extended downtime (more than 48 consecutive hours) that
# prevents you from using purchased credits, you may be eligible for a partial or full
# refund." Exactly 48 hours is not enough: one outage must last longer.
DOWNTIME_THRESHOLD_HOURS = 48
# "If you were charged multiple times for the same purchase, we will refund the duplicate
# charges in full." A second payment of the same package at most this many minutes after
# the first with the same card, none of whose credits were used, is taken for a duplicate
# charge; one whose credits were used, or paid with another card, is a purchase the
# customer meant to make.
DUPLICATE_WINDOW_MINUTES = 10

# "We aim to respond to all refund requests within 3-5 business days."
RESPONSE_BUSINESS_DAYS_MIN = 3
RESPONSE_BUSINESS_DAYS_MAX = 5
# "Approved refunds will be processed to the original payment method within 5-10 business days."
PAYOUT_BUSINESS_DAYS_MIN = 5
PAYOUT_BUSINESS_DAYS_MAX = 10

# Business days are counted in the company's timezone, skipping weekends and
# British Columbia statutory holidays.
COMPANY_TIMEZONE = "America/Vancouver"
# How pages name that zone beside a deadline: "11:59 PM Vancouver time (PST)".
COMPANY_TIMEZONE_NAME = "Vancouver"
COMPANY_HOLIDAY_REGION = ("CA", "BC")

# The support e-mail address is a setting (SUPPORT_EMAIL): the published policy's copy of
# it was scrubbed by an e-mail obfuscator, so the real address comes from the environment.
COMPANY_NAME = "Goopter Holdings Ltd (DBA: Goopter Commerce)"
PRODUCT_NAME = "AI Image Studio"
SUPPORT_PHONE = "(778) 875-8095"
COMPANY_ADDRESS = "7790 Royal Oak Ave, Burnaby, BC V5J 4K4"
POLICY_LAST_UPDATED = "February 13, 2026"

# The policy's "Credit Purchases" section. No circumstance it lists for a refund covers
# credits the customer simply no longer needs.
PURCHASES_FINAL = (
    f"All credit purchases on {PRODUCT_NAME} are considered final once the credits have been "
    "added to your account."
)


def downtime_words() -> str:
    """How long downtime must last, in the policy's words: "more than 48 consecutive hours"."""
    return f"more than {DOWNTIME_THRESHOLD_HOURS} consecutive hours"
