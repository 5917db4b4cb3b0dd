"""Running an engine re-index from the bot without freezing it.

The re-index runs in a worker thread; the event loop keeps answering other chats and, every few
seconds, edits ONE status message with the latest progress (Telegram limits edits, and a message
per step would flood the chat). The engine swaps the served index only when the run succeeds, so
a failure leaves the old index serving and is reported in the same message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from telegram import Message
from telegram.constants import ParseMode
from telegram.error import BadRequest, TelegramError

from bot.i18n import Lang, t
from bot.paging import fit_html
from core.errors import IndexBusyError, KontrolError
from core.indexer import IndexProgress, IndexReport

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)


class ReindexRunner:
    """At most one bot-started re-index at a time; `running` is only touched on the event loop."""

    def __init__(self, engine: Engine, progress_interval: float = 2.5) -> None:
        self.engine = engine
        self.progress_interval = progress_interval
        self.running = False
        self._latest: IndexProgress | None = None

    def try_begin(self) -> bool:
        """Claim the runner; False if a re-index is already under way (no await: no race)."""
        if self.running:
            return False
        self.running = True
        self._latest = None
        return True

    def _on_progress(self, progress: IndexProgress) -> None:
        """Called in the worker thread: only store; the loop decides when to show it."""
        self._latest = progress

    async def run(self, status: Message, lang: Lang) -> None:
        """Re-index, keep `status` up to date, then report the outcome in it. Releases the claim."""
        try:
            work = asyncio.ensure_future(
                asyncio.to_thread(self.engine.reindex, self._on_progress, train="background")
            )
            shown: IndexProgress | None = None
            while not work.done():
                await asyncio.wait({work}, timeout=self.progress_interval)
                latest = self._latest
                if not work.done() and latest is not None and latest != shown:
                    await _edit(status, _progress_text(lang, latest))
                    shown = latest
            try:
                report = work.result()
            except IndexBusyError:
                await _edit(status, t(lang, "reindex_busy"), final=True)
            except KontrolError as exc:
                log.warning("Re-index failed: %s", exc)
                await _edit(status, t(lang, "reindex_failed", error=str(exc)), final=True)
            except Exception as exc:
                log.exception("Re-index crashed")
                error = type(exc).__name__
                await _edit(status, t(lang, "reindex_failed", error=error), final=True)
            else:
                log.info("Re-index done: %s", report)
                await _edit(status, _done_text(lang, report), final=True)
        finally:
            self.running = False


def _progress_text(lang: Lang, progress: IndexProgress) -> str:
    percent = 100 * progress.done // progress.total if progress.total else 100
    return t(
        lang,
        "reindex_progress",
        percent=percent,
        done=progress.done,
        total=progress.total,
        rate=f"{progress.images_per_s:.1f}",
    )


def _done_text(lang: Lang, report: IndexReport) -> str:
    return t(
        lang,
        "reindex_done",
        seconds=f"{report.seconds:.1f}",
        total=report.total,
        added=report.added,
        removed=report.removed,
        unchanged=report.unchanged,
        skipped=len(report.skipped),
    )


async def _edit(status: Message, text: str, *, final: bool = False) -> None:
    """Edit the status message; a lost progress edit is harmless, a lost final one is re-sent."""
    text = fit_html(text)  # a long error must not make the outcome unreportable
    try:
        await status.edit_text(text, parse_mode=ParseMode.HTML)
    except BadRequest as exc:
        if "not modified" in str(exc).lower():
            return
        log.warning("Could not edit the re-index status: %s", exc)
        if final:
            await _resend(status, text)
    except TelegramError as exc:
        log.warning("Could not edit the re-index status: %s", exc)
        if final:
            await _resend(status, text)


async def _resend(status: Message, text: str) -> None:
    try:
        await status.get_bot().send_message(status.chat_id, text, parse_mode=ParseMode.HTML)
    except TelegramError as exc:
        log.error("Could not report the re-index outcome: %s", exc)
