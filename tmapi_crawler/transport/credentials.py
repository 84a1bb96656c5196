"""The API token: where it is read, how it is added, and how it is kept out of text.

The token is added to a private copy of a request at download time only; everything that
can be logged, queued or stored sees the token-free URL. ``redact`` is the last line of
defence for text that came from below that point (e.g. a network error naming the URL).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from scrapy.settings import BaseSettings

from tmapi_crawler import api

REDACTED = "***"


class MissingToken(ValueError):
    """No token configured; raised before anything is sent."""


def token_from_settings(settings: BaseSettings) -> str:
    token = (settings.get("TMAPI_TOKEN") or "").strip()
    if not token:
        raise MissingToken(
            "TMAPI_TOKEN: no API token configured (set the TMAPI_TOKEN environment "
            "variable or setting; get one from the tmapi console)"
        )
    return token


def signed_url(url: str, token: str) -> str:
    """The URL with the token appended, for the wire only."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{api.TOKEN_PARAM}={quote(token, safe='')}"


def redact(text: str, token: str) -> str:
    if not token:
        return text
    return text.replace(quote(token, safe=""), REDACTED).replace(token, REDACTED)


def fingerprint(token: str) -> str:
    """What logs may show of a token: enough to tell two apart, useless to an attacker."""
    return f"{token[:4]}…" if len(token) > 12 else REDACTED


class RedactingFilter(logging.Filter):
    """Scrubs the token from every record a handler emits, arguments and traceback included."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message or quote(self.token, safe="") in message:
            record.msg, record.args = redact(message, self.token), None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self.token in text or quote(self.token, safe="") in text:
                record.exc_info, record.exc_text = None, redact(text, self.token)
        return True
