"""Retrying transient Bot API failures, so an answer is not lost to one bad gateway.

Telegram (and the proxies in front of it) sometimes answers 5xx, drops a connection or times
out; python-telegram-bot raises `NetworkError`/`TimedOut` and the reply is gone. `RetryingRequest`
is the bot's HTTP layer with a bounded exponential-backoff retry around each request: it covers
every API method (sends, edits, getFile...) and file downloads alike, because they all go through
it. A retry after a timeout may post a message twice; a duplicate is better than a lost answer.
429 (flood control) is not retried here: python-telegram-bot's rate limiter handles it with the
wait Telegram asks for. The long-poll `getUpdates` uses its own request object and is not wrapped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from telegram.error import NetworkError, TimedOut
from telegram.request import HTTPXRequest

log = logging.getLogger(__name__)

#: Attempts per request (the first one included).
TRIES = 4
#: Delay before the first retry, in seconds; it doubles per retry, up to `MAX_DELAY`.
BASE_DELAY = 0.5
MAX_DELAY = 4.0


def backoff(retry: int, base: float = BASE_DELAY, cap: float = MAX_DELAY) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): base, 2*base, 4*base... <= cap."""
    return min(cap, base * 2 ** (retry - 1))


def _what(url: str) -> str:
    """The API method (or 'file download') of a request URL, never the URL: it holds the token."""
    if "/file/bot" in url:
        return "file download"
    return url.rsplit("/", 1)[-1].split("?", 1)[0] or "request"


class RetryingRequest(HTTPXRequest):
    """`HTTPXRequest` that retries 5xx answers, dropped connections and timeouts."""

    def __init__(
        self,
        *args: Any,
        tries: int = TRIES,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tries = max(1, tries)
        self.base_delay = base_delay
        self.max_delay = max_delay

    async def do_request(
        self, url: str, method: str, *args: Any, **kwargs: Any
    ) -> tuple[int, bytes]:
        attempt = 1
        while True:
            try:
                code, payload = await super().do_request(url, method, *args, **kwargs)
            except (NetworkError, TimedOut) as exc:  # connection refused/dropped, timeouts
                if attempt >= self.tries:
                    raise
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if code < 500 or attempt >= self.tries:
                    return code, payload
                problem = f"HTTP {code}"
            delay = backoff(attempt, self.base_delay, self.max_delay)
            log.warning(
                "Telegram %s failed (%s), attempt %d of %d; retrying in %.2f s",
                _what(url),
                problem,
                attempt,
                self.tries,
                delay,
            )
            await asyncio.sleep(delay)
            attempt += 1
