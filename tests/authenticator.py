"""A test's phone: the codes an authenticator app shows, each handed out once.

The portal takes a 30-second step's code once, and the next step's too (clocks drift).
Journeys that log the same staff member in again soon use the next step, or wait for one.
"""

import time

import pyotp


class Authenticator:
    def __init__(self, secret: str):
        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    def fresh_code(self) -> str:
        """A code the portal has not seen from this phone yet."""
        while True:
            current = int(time.time() // self.totp.interval)
            for step in (current, current + 1):
                if step > self.last_step:
                    self.last_step = step
                    return self.totp.at(step * self.totp.interval)
            time.sleep(1)
