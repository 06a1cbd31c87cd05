"""URLs as they may be shown: in output, log lines, error texts and stored records, never with their secrets.

A URL can carry a secret in its user info (`postgresql://user:password@db/app`), in its query string
(`?token=…`, `?sig=…`, any name a receiver picks) and, for webhooks, in its path (chat services put the
token there: `/services/T0/B0/secret`). `mask_url` keeps what tells an operator where the URL points (scheme,
host, port, and the path unless told otherwise) and replaces everything else: every query value, since no list
of parameter names can know what each receiver treats as a secret, and the whole user info.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

REDACTED = "***"
ELIDED_PATH = "/…"

# Anything in free text that starts like a URL (scheme://), up to whitespace or a closing quote or bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")


def mask_url(url: str, *, path: bool = True) -> str:
    """Return `url` without its secrets: user info and every query value redacted, the fragment dropped.

    With `path=False` the path is shown as `/…` (a webhook's path may be its token). Text that does not
    parse as a URL is redacted whole.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme:
        return REDACTED
    query = "&".join(f"{name}={REDACTED}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if not parts.netloc:  # sqlite:///file.db, unix:///run/redis.sock: no user info to hide
        base = url.split("#", 1)[0].split("?", 1)[0]
        return f"{base}?{query}" if query else base
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"{REDACTED}@{netloc}"
    shown_path = parts.path if path else (ELIDED_PATH if parts.path not in ("", "/") or query else parts.path)
    return urlunsplit((parts.scheme, netloc, shown_path, query, ""))


def mask_urls_in(text: str, *, path: bool = True) -> str:
    """Return `text` with every URL in it masked (an exception's message, say)."""
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0), path=path), text)
