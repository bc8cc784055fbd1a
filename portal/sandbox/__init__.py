"""A small, faithful stand-in for the parts of Stripe the portal uses.

Enabled only when PAYMENTS_MODE=sandbox (development and tests; refused in production).
The real `stripe` library talks to it exactly as it talks to Stripe, so the portal's
payment code runs unchanged. No public fake implements Checkout Sessions, hence this one.
"""
