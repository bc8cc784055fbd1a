"""Argon2id password hashing and the rules a new password must meet."""

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

# NIST SP 800-63B-4: at least 15 characters when the password is the only factor.
MIN_LENGTH = 15
MAX_LENGTH = 128
COMMON_PASSWORDS_CHECKED = 30_000

HASHERS = {
    # OWASP Password Storage Cheat Sheet, Argon2id minimum: m=19 MiB, t=2, p=1.
    "owasp": PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1),
    # Cheap parameters so the test suite can create thousands of users; never in production.
    "fast-for-tests": PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
}


def _hasher() -> PasswordHasher:
    return HASHERS[current_app.config["PASSWORD_HASH_PROFILE"]]


def hash_password(password: str) -> str:
    """Return the Argon2id hash of `password`."""
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Say whether `password` matches `password_hash`."""
    try:
        return _hasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Say whether the hash was made with other parameters than today's."""
    return _hasher().check_needs_rehash(password_hash)


@lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The most common leaked passwords, from the frequency list zxcvbn ships."""
    # Loaded on first use: the lists are megabytes that most processes never need.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"][:COMMON_PASSWORDS_CHECKED])


def _repeated_unit(password: str) -> str:
    """Return the shortest piece that `password` repeats, e.g. "abcabcabc" -> "abc"."""
    for size in range(1, len(password) // 2 + 1):
        if len(password) % size == 0 and password[:size] * (len(password) // size) == password:
            return password[:size]
    return password


def _is_predictable(lowered: str) -> bool:
    # At 15+ characters few leaked passwords fit as they are, so also catch the usual
    # stretchings of them: repetition ("passwordpassword") and trailing digits or symbols.
    common = common_passwords()
    unit = _repeated_unit(lowered)
    stem = lowered.rstrip("0123456789!@#$%^&*?.-_ ")
    return len(set(lowered)) <= 3 or any(form in common for form in {lowered, unit, stem})


def password_problems(password: str, email: str = "") -> list[str]:
    """Return what is wrong with `password` as a new password, or an empty list."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"Use at least {MIN_LENGTH} characters.")
    if len(password) > MAX_LENGTH:
        problems.append(f"Use at most {MAX_LENGTH} characters.")
    lowered = password.lower()
    if _is_predictable(lowered):
        problems.append("This password is too common; choose a less predictable one.")
    elif email and lowered == email.lower():
        problems.append("Your password must not be your e-mail address.")
    return problems
