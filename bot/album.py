"""Sending similar collection photos as one album, uploading each photo at most once.

A photo Telegram has seen is sent by its `file_id` (no upload); a new one is sent as a cached
downscaled JPEG and the `file_id` Telegram returns is remembered. If Telegram rejects remembered
ids (e.g. the bot token changed), they are forgotten and the album is sent again with uploads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from telegram import Bot, InputMediaPhoto, Message, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest

from bot.file_ids import FileIdStore
from bot.formatting import album_caption
from bot.i18n import Lang
from bot.names import with_common_names
from bot.thumbs import PhotoKey, ThumbnailCache

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

MAX_ALBUM = 10  # Bot API: 2-10 items per media group


@dataclass
class _Item:
    key: PhotoKey
    caption: str
    file_id: str | None
    name: str
    uuid: str = ""


def _prepare(hits: list[dict[str, Any]], lang: Lang, file_ids: FileIdStore) -> list[_Item]:
    """Keys and known ids of the hits whose files still exist (blocking: stats files)."""
    items = []
    for hit in hits[:MAX_ALBUM]:
        try:
            key = PhotoKey.of(hit["image_path"])
        except OSError:
            log.warning("Collection photo vanished since indexing: %s", hit.get("path"))
            continue
        name = Path(hit["image_path"]).stem + ".jpg"
        caption = album_caption(lang, hit)
        items.append(_Item(key, caption, file_ids.get(key), name, str(hit.get("uuid") or "")))
    return items


def _sources(
    items: list[_Item], thumbs: ThumbnailCache, use_ids: bool
) -> tuple[list[_Item], list[str | bytes]]:
    """The items that can be sent, each with its known file_id or else its JPEG copy's bytes
    (blocking: may render). A collection photo that cannot be read or converted is left out and
    logged, so one damaged file never costs the whole album."""
    kept: list[_Item] = []
    sources: list[str | bytes] = []
    for item in items:
        if use_ids and item.file_id:
            source: str | bytes = item.file_id
        else:
            try:
                source = thumbs.get(item.key.path, item.key)
            except Exception as exc:  # damaged, unreadable or unsupported: skip just this one
                log.warning(
                    "Left a collection photo out of an album, it cannot be read: %s (%s: %s)",
                    item.key.path,
                    type(exc).__name__,
                    exc,
                )
                continue
        kept.append(item)
        sources.append(source)
    return kept, sources


async def _send(
    bot: Bot, chat_id: int, reply_to: int | None, items: list[_Item], sources: list[str | bytes]
) -> list[Message]:
    reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
    if len(items) == 1:  # an album needs at least two items
        message = await bot.send_photo(
            chat_id,
            sources[0],
            caption=items[0].caption,
            parse_mode=ParseMode.HTML,
            filename=items[0].name,
            reply_parameters=reply,
        )
        return [message]
    media = [
        InputMediaPhoto(source, caption=item.caption, parse_mode=ParseMode.HTML, filename=item.name)
        for item, source in zip(items, sources, strict=True)
    ]
    return list(await bot.send_media_group(chat_id, media, reply_parameters=reply))


async def send_album(
    bot: Bot,
    chat_id: int,
    hits: list[dict[str, Any]],
    lang: Lang,
    *,
    thumbs: ThumbnailCache,
    file_ids: FileIdStore,
    reply_to: int | None = None,
    on_sent: Callable[[list[tuple[int, str]]], None] | None = None,
) -> int:
    """Send `hits` as an album (or one photo); returns how many photos were sent.

    `on_sent` gets the (message_id, photo uuid) of each sent photo (blocking: run in a thread),
    so a later reply to one of them (/remove) can name the collection photo.
    """
    items = await asyncio.to_thread(_prepare, hits, lang, file_ids)
    use_ids = True
    items, sources = await asyncio.to_thread(_sources, items, thumbs, use_ids)
    if not items:
        return 0
    try:
        messages = await _send(bot, chat_id, reply_to, items, sources)
    except BadRequest as exc:
        stale = [item.key for item in items if item.file_id]
        if not stale:
            raise
        log.warning("Telegram rejected remembered file_ids (%s); uploading again", exc)
        await asyncio.to_thread(file_ids.forget, stale)
        use_ids = False
        items, sources = await asyncio.to_thread(_sources, items, thumbs, use_ids)
        if not items:
            return 0
        messages = await _send(bot, chat_id, reply_to, items, sources)
    learned = {
        item.key: message.photo[-1].file_id
        for item, message in zip(items, messages, strict=False)
        if message.photo and not (use_ids and item.file_id)
    }
    await asyncio.to_thread(file_ids.update, learned)
    if on_sent is not None:
        sent = [
            (message.message_id, item.uuid)
            for item, message in zip(items, messages, strict=False)
            if item.uuid
        ]
        await asyncio.to_thread(on_sent, sent)
    return len(messages)


async def send_collection_album(
    bot: Bot,
    svc: Services,
    message: Message,
    lang: Lang,
    hits: list[dict[str, Any]],
) -> int:
    """Collection photos as an album the way every answer sends them: common names in the
    captions, the cached thumbnails and file_ids, and each sent photo remembered so that /remove
    can be answered to it. Returns how many photos were sent."""
    if not hits:
        return 0
    named = await asyncio.to_thread(with_common_names, hits, lang, svc.names)
    return await send_album(
        bot,
        message.chat_id,
        named,
        lang,
        thumbs=svc.thumbs,
        file_ids=svc.file_ids,
        reply_to=message.message_id,
        on_sent=lambda pairs: svc.state.remember_album(message.chat_id, pairs),
    )
