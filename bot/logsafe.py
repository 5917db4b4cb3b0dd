"""Keep the bot token out of every log line.

The token is part of every Bot API URL, and httpx logs full URLs at INFO; exception texts can carry
URLs too. Redaction happens when a log record is *created* (a wrapped record factory), so it covers
every logger and every handler, including ones attached later (e.g. pytest's caplog), which a filter
on one logger or handler would miss.
"""

from __future__ import annotations

import logging
import threading
import traceback
from urllib.parse import quote

REDACTED = "[REDACTED]"

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


def _variants(secret: str) -> set[str]:
    """The secret as written and percent-encoded (download URLs encode the ':' of a token)."""
    return {secret, quote(secret, safe=""), quote(secret)}


def redact(text: str) -> str:
    """`text` with every registered secret replaced by [REDACTED]."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, exception and stack text without any registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            if not record.exc_text:
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_filter = RedactingFilter()


def protect_secret(secret: str | None) -> None:
    """Register `secret` for redaction and make sure every new log record is filtered."""
    global _installed
    if not secret:
        return
    with _lock:
        _secrets.update(_variants(secret))
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _filter.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def quiet_http_loggers() -> None:
    """httpx/httpcore log every request URL (which contains the token) at INFO: keep them quiet."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
