"""Password hashing for operator accounts: argon2id through argon2-cffi, off the event loop.

argon2-cffi's default parameters are RFC 9106's low-memory profile (argon2id, 64 MiB, t=3,
p=4, ~0.1 s a check). A few checks run at a time in a small thread pool, so that a burst of
logins neither blocks the server's event loop nor takes gigabytes of memory.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from concurrent.futures import ThreadPoolExecutor

DEFAULT_HASHER = PasswordHasher()
MAX_CONCURRENT_PASSWORD_HASHES = 4
PROVISIONAL_PASSWORD_BYTES = 15       # 20 URL-safe characters, 120 bits
PASSWORD_MIN_LENGTH_CHARS = 12
PASSWORD_MAX_LENGTH_CHARS = 128

_hashing = ThreadPoolExecutor(MAX_CONCURRENT_PASSWORD_HASHES, thread_name_prefix="argon2")
_dummy_hashes: dict[tuple[int, int, int], str] = {}


class PasswordRefused(ValueError):
    """A new password that breaks the rules; the message says which, never the password."""


def provisional_password() -> str:
    return secrets.token_urlsafe(PROVISIONAL_PASSWORD_BYTES)


def check_new_password(password: str, login: str) -> None:
    if not PASSWORD_MIN_LENGTH_CHARS <= len(password) <= PASSWORD_MAX_LENGTH_CHARS:
        raise PasswordRefused(f"a password has {PASSWORD_MIN_LENGTH_CHARS} to "
                              f"{PASSWORD_MAX_LENGTH_CHARS} characters")
    if login.lower() in password.lower():
        raise PasswordRefused("a password must not contain the login")


async def hash_password(hasher: PasswordHasher, password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_hashing, hasher.hash, password)


async def verify_password(hasher: PasswordHasher, stored: str | None, password: str) -> bool:
    """True when `password` matches `stored`. With no stored hash (unknown login, locked
    account), the same work against a dummy hash of the same parameters, and False."""
    if stored is None:
        key = (hasher.time_cost, hasher.memory_cost, hasher.parallelism)
        if key not in _dummy_hashes:
            _dummy_hashes[key] = await hash_password(hasher, secrets.token_urlsafe(16))
        stored = _dummy_hashes[key]
        password = ""

    def verify() -> bool:
        try:
            return hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return await asyncio.get_running_loop().run_in_executor(_hashing, verify)
