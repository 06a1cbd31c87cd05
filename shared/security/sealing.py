"""Callback URLs encrypted at rest: a URL's query or path often is the receiver's secret.

Jobs and batches store `callback_url` as a Fernet token (AES-128-CBC with HMAC-SHA256, from `cryptography`);
the worker opens it to deliver. The keys are WEBHOOK_URL_KEYS (the first encrypts, all decrypt, so a key can
be rotated: put the new one first and keep the old until the rows it sealed are gone); without them a key is
derived from WEBHOOK_SECRET, which callbacks need anyway.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Protocol

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken
from cryptography.fernet import MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

from shared.errors import ConfigError

DERIVATION_INFO = b"model-router callback_url encryption"


class SealingSettings(Protocol):
    """The settings a sealer is made from; shared.config.Settings has them (and validates its keys here, with
    check_key, which is why this module does not import the settings)."""

    @property
    def webhook_url_keys(self) -> Sequence[SecretStr]: ...

    @property
    def webhook_secret(self) -> SecretStr | None: ...


class Unreadable(Exception):
    """A stored value that none of the keys opens: sealed with a key since removed, or not sealed at all."""


class Sealer:
    """Encrypts with the first key and decrypts with any."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, text: str) -> str:
        """Return `text` encrypted and authenticated, as URL-safe ASCII."""
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, token: str) -> str:
        """Return the text `token` seals, or raise Unreadable."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise Unreadable("the value is not sealed with any of the configured keys") from None


def derive_key(secret: str) -> bytes:
    """Return the Fernet key derived from `secret` (HKDF-SHA256), for when no key is configured."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=DERIVATION_INFO).derive(secret.encode())
    return base64.urlsafe_b64encode(key)


def check_key(key: str) -> str:
    """Return `key` if it is a Fernet key (32 bytes, URL-safe base64), else raise ValueError."""
    try:
        Fernet(key.encode())
    except (ValueError, UnicodeError):
        raise ValueError("must be Fernet keys (32 url-safe base64-encoded bytes, Fernet.generate_key())") from None
    return key


def from_settings(settings: SealingSettings) -> Sealer | None:
    """Return the sealer the settings configure, or None when neither keys nor WEBHOOK_SECRET are set."""
    if settings.webhook_url_keys:
        return Sealer([key.get_secret_value().encode() for key in settings.webhook_url_keys])
    if settings.webhook_secret is not None:
        return Sealer([derive_key(settings.webhook_secret.get_secret_value())])
    return None


def require(settings: SealingSettings) -> Sealer:
    """Return the configured sealer, or raise ConfigError naming the settings that make one."""
    sealer = from_settings(settings)
    if sealer is None:
        raise ConfigError("callback URLs are stored encrypted: set WEBHOOK_URL_KEYS or WEBHOOK_SECRET")
    return sealer
