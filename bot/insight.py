"""Admin commands for keeping the collection clean: /duplicates and /suspicious.

Each runs the collection analysis (`core.insight.analyse`: k nearest neighbours of every photo
through the store, no O(N^2) work) in a worker thread, then sends the top groups as albums. The
album photos are remembered like any other album, so an admin can answer one with /remove.
"""

from __future__ import annotations

import asyncio
import html
import logging
from pathlib import Path
from typing import Any, Literal

from telegram import Update
from telegram.ext import ContextTypes

from bot.album import send_album
from bot.i18n import lang_of, t
from bot.replies import not_indexed_text, reply
from bot.services import get_services
from core.errors import IndexMissingError, KontrolError
from core.insight import Options, analyse
from core.paths import UnsafePathError, safe_join

log = logging.getLogger(__name__)

Kind = Literal["duplicates", "suspicious"]
#: Groups (or suspicious photos) sent as albums per command.
TOP = 3
_LOCK_KEY = "kontrol_insight_lock"


def _hit(root: Path, member: dict[str, Any], similarity: float) -> dict[str, Any] | None:
    try:
        path = safe_join(root, str(member.get("path") or ""))
    except UnsafePathError:
        return None
    return {
        "image_path": str(path),
        "path": member.get("path"),
        "class": member.get("species"),
        "similarity": similarity,
        "uuid": member.get("id"),
    }


def albums(kind: Kind, insight: Any, root: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """(headline, album hits) for the top items of one kind."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    if kind == "duplicates":
        for group in insight.duplicate_groups[:TOP]:
            sim = float(group.get("max_similarity") or 1.0)
            hits = [_hit(root, m, sim) for m in group["members"][:10]]
            species = ", ".join(group.get("species") or [])
            out.append((f"{len(group['members'])} × {species}", [h for h in hits if h]))
    else:
        for item in insight.suspicious[:TOP]:
            own = _hit(root, item, 1.0)
            hits = [own] + [_hit(root, n, float(n["similarity"])) for n in item["neighbours"]]
            headline = (
                f"{item.get('path')}: {item.get('species')} → "
                f"{item.get('rank', 'species')} {item.get('label')} ({item.get('score', 0):.0%})"
            )
            out.append((headline, [h for h in hits[:10] if h]))
    return out


async def _run(update: Update, context: ContextTypes.DEFAULT_TYPE, kind: Kind) -> None:
    message, svc = update.effective_message, get_services(context)
    if message is None:
        return
    lang = lang_of(update.effective_user)
    user_id = update.effective_user.id if update.effective_user else None
    if not svc.is_admin(user_id):
        log.info("Refused /%s from non-admin user %s", kind, user_id)
        await reply(message, t(lang, "insight_denied"))
        return
    lock: asyncio.Lock = context.application.bot_data.setdefault(_LOCK_KEY, asyncio.Lock())
    if lock.locked():
        await reply(message, t(lang, "insight_busy"))
        return
    async with lock:
        try:
            if not await asyncio.to_thread(svc.engine.is_indexed):
                raise IndexMissingError("not indexed")
            await reply(message, t(lang, "insight_started"))
            insight = await asyncio.to_thread(analyse, svc.engine.store, Options())
        except IndexMissingError:
            await reply(message, not_indexed_text(lang, svc, update))
            return
        except KontrolError as exc:
            log.warning("/%s failed: %s", kind, exc)
            await reply(message, t(lang, "insight_failed"))
            return
        items = insight.duplicate_groups if kind == "duplicates" else insight.suspicious
        await reply(message, t(lang, f"{kind}_found", count=len(items), total=insight.count))
        root = Path(svc.engine.settings.images_dir)
        for headline, hits in albums(kind, insight, root):
            await reply(message, f"<b>{html.escape(headline)}</b>")
            await send_album(
                context.bot,
                message.chat_id,
                hits,
                lang,
                thumbs=svc.thumbs,
                file_ids=svc.file_ids,
                on_sent=lambda pairs: svc.state.remember_album(message.chat_id, pairs),
            )


async def on_duplicates(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Groups of near-identical photos (re-encoded, resized, cropped copies)."""
    await _run(update, context, "duplicates")


async def on_suspicious(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Photos whose nearest neighbours mostly carry another label, with the evidence."""
    await _run(update, context, "suspicious")
