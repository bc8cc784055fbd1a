"""Absolute links to the portal's pages, for e-mails and Stripe.

Kept apart from `portal.security` so that services (which write e-mails) can build links
without importing the web's extensions.
"""

from flask import current_app, has_request_context, url_for


def external_url(endpoint: str, **values) -> str:
    """An absolute link to `endpoint` for e-mails and Stripe, on the configured address.

    Built from PORTAL_BASE_URL when it is set, so that a forged Host header can never
    put an attacker's domain into a password-reset e-mail.
    """
    base = current_app.config["PORTAL_BASE_URL"]
    if not has_request_context() and not current_app.config["SERVER_NAME"]:
        # The worker writes e-mails outside any request: the path comes from the routes,
        # the address from the settings alone.
        if not base:
            raise RuntimeError("PORTAL_BASE_URL is needed to write links outside a request")
        return base + current_app.url_map.bind("portal").build(endpoint, values)
    if base:
        return base + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def external_url_or_none(endpoint: str, **values) -> str | None:
    """`external_url`, or None where there is no address to link to (outside a request
    with no PORTAL_BASE_URL): an e-mail then names the page instead, since no payment or
    charge may fail over an e-mail's link."""
    try:
        return external_url(endpoint, **values)
    except RuntimeError:
        return None
