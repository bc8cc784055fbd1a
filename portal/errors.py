"""Domain exceptions raised by services; views turn them into messages or status codes."""


class PortalError(Exception):
    """Base class of every error a service raises on purpose."""


class ValidationError(PortalError):
    """Input that breaks a business rule; `field` names the input when there is one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(PortalError):
    """The object does not exist, or is not the caller's to see."""


class AccountTerminated(PortalError):
    """The account was terminated and may only read its history."""


class InsufficientCredits(PortalError):
    """A spend larger than the balance."""

    def __init__(self, balance: int, requested: int):
        super().__init__(f"balance {balance} is less than {requested}")
        self.balance = balance
        self.requested = requested


class Conflict(PortalError):
    """The object is in a state that does not allow the operation.

    `existing_id` names the object that is in the way, when there is one.
    """

    def __init__(self, message: str, existing_id: int | None = None):
        super().__init__(message)
        self.existing_id = existing_id


class PaymentProviderError(PortalError):
    """Stripe refused the call or could not be reached.

    `retryable` is true when Stripe may not have seen the call at all (network trouble,
    a 5xx or 429): retrying with the same idempotency key is then the right move. A false
    value is Stripe's final answer for that key.
    """

    def __init__(self, message: str, retryable: bool = False, code: str | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.code = code
