"""Passwords: the rule for a new one (issue 12, finding 16: 12 to 128 characters, not one of the
passwords every guessing list starts with, not the username), and hashing them (argon2)."""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verifying against this keeps the timing of "no such user" close to "wrong password".
_DUMMY_HASH = _hasher.hash("not-a-real-password")
# Argon2 costs ~50 ms and 64 MiB per verification: a burst of sign-ins must not take every core.
_HASHING = threading.BoundedSemaphore(2)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_password(password: str, password_hash: str | None) -> bool:
    """Sign-in's check, bounded to two at once; with no account (None) it costs the same and fails."""
    with _HASHING:
        if password_hash is None:
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, password_hash)

MIN_LENGTH = 12
MAX_LENGTH = 128

# The most common passwords of 12+ characters in public breach lists, and patterns of them; a
# guesser tries these first. Compared case-insensitively.
COMMON = frozenset({
    "123456789012", "1234567890123", "12345678910", "123456789101", "111111111111", "000000000000",
    "qwertyuiop12", "qwertyuiop123", "qwerty123456", "1q2w3e4r5t6y", "1qaz2wsx3edc", "zaq12wsxcde3",
    "password1234", "password12345", "password123456", "passwordpassword", "password-123", "password_123",
    "password!123", "p@ssw0rd1234", "passw0rd1234", "iloveyou1234", "letmein12345", "welcome12345",
    "welcome@1234", "administrator", "admin1234567", "adminadmin12", "changeme1234", "changemenow1",
    "abcdefghijkl", "abc123456789", "aaaaaaaaaaaa", "asdfghjkl123", "monkey123456", "dragon123456",
    "football1234", "baseball1234", "superman1234", "sunshine1234", "princess1234", "trustno11234",
})


def password_problem(password: str, username: str | None = None) -> str | None:
    """Why ``password`` may not be used for a new account, or None."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        return f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters"
    lowered = password.lower()
    if lowered in COMMON or len(set(password)) < 4:
        return "this password is among the first a guesser tries; choose a longer or less common one"
    if username and username.lower() in lowered:
        return "the password must not contain the username"
    return None
