"""Answering a photo: species, similar photos, or both.

Three entry points share one pipeline: a plain photo in a private chat (both answers, from one
embedding via `engine.analyze`), and /classify or /similar given as a photo's caption or as a reply
to a photo (these also work in groups with privacy mode on). Download, decoding and the engine run
off the event loop, so one slow photo never holds up other chats.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Literal

from telegram import Message, Update
from telegram.constants import ChatAction, ChatType
from telegram.ext import ContextTypes

from bot.album import send_collection_album
from bot.answers import send_species_answer
from bot.chat_action import chat_action
from bot.formatting import classification_text, unknown_species_text
from bot.i18n import Lang, lang_of, t
from bot.inputs import InputProblem, decode, download, has_media, image_ref
from bot.names import name_line
from bot.replies import not_indexed_text, reply
from bot.services import Services, get_services
from core.errors import (
    ImageError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    ModelUnavailableError,
    UnknownSpeciesError,
)

log = logging.getLogger(__name__)

Mode = Literal["analyze", "classify", "similar"]

CAPTION_COMMAND = re.compile(
    r"^/(?P<command>classify|similar)(?:@(?P<bot>\w+))?(?:\s+(?P<args>.*))?$",
    re.IGNORECASE | re.DOTALL,
)


async def on_photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo or image file in a private chat: species and similar photos."""
    message = update.effective_message
    if message is not None:
        await answer(update, context, message, "analyze")


async def on_caption_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/classify or /similar [species] written as the caption of the photo itself.

    A command addressed to another bot (/classify@other_bot) is not ours: in a group it is left
    alone; in a private chat the photo was still sent to us, so it is answered as a plain photo.
    """
    message = update.effective_message
    match = CAPTION_COMMAND.match((message.caption or "").strip()) if message else None
    if message is None or match is None:
        return
    addressed = match.group("bot")
    if addressed and addressed.lower() != (context.bot.username or "").lower():
        if message.chat.type == ChatType.PRIVATE and has_media(message):
            await answer(update, context, message, "analyze")
        return
    mode: Mode = "classify" if match.group("command").lower() == "classify" else "similar"
    await answer(update, context, message, mode, (match.group("args") or "").strip() or None)


async def _command(update: Update, context: ContextTypes.DEFAULT_TYPE, mode: Mode) -> None:
    message = update.effective_message
    if message is None:
        return
    target = message.reply_to_message
    species = " ".join(context.args or []).strip() or None
    if target is None or not has_media(target):
        lang = lang_of(update.effective_user)
        await reply(message, t(lang, "need_photo", command=mode))
        return
    await answer(update, context, target, mode, species)


async def on_classify(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/classify as a reply to a photo message."""
    await _command(update, context, "classify")


async def on_similar(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/similar [species] as a reply to a photo message."""
    await _command(update, context, "similar")


async def answer(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    source: Message,
    mode: Mode,
    species: str | None = None,
) -> None:
    """Run the pipeline on the image of `source`; every expected failure becomes one clear reply."""
    svc = get_services(context)
    message = update.effective_message or source
    lang = lang_of(update.effective_user)
    try:
        ref = image_ref(source)
        if not await asyncio.to_thread(svc.engine.is_indexed):
            await reply(message, not_indexed_text(lang, svc, update))
            return
        action = ChatAction.TYPING if mode == "classify" else ChatAction.UPLOAD_PHOTO
        user_id = update.effective_user.id if update.effective_user else None
        async with (
            svc.fair.slot(user_id, lambda: reply(message, t(lang, "queued"))),
            chat_action(context.bot, message.chat_id, action, svc.chat_action_interval),
        ):
            data = await download(context.bot, ref)
            image = await asyncio.to_thread(decode, data, svc.engine)
            classification, hits = await _run_engine(svc, image, mode, species)
            if classification is not None:
                text = classification_text(
                    lang, classification, all_probabilities=mode == "classify"
                )
                if svc.names is not None:
                    common = await asyncio.to_thread(
                        name_line, lang, classification.get("species"), svc.names
                    )
                    text += f"\n{common}" if common else ""
                shown = len(hits) if hits else None
                await send_species_answer(
                    update, svc, message, lang, text, ref.file_id, classification, shown
                )
            if hits is not None:
                await _send_hits(context, svc, message, lang, hits)
    except InputProblem as problem:
        await reply(message, t(lang, problem.key, **problem.values))
    except UnknownSpeciesError as exc:
        await reply(message, unknown_species_text(lang, species or "", exc.suggestions))
    except IndexMissingError:
        await reply(message, not_indexed_text(lang, svc, update))
    except (IndexCorruptError, IndexMismatchError) as exc:
        log.error("Index unusable: %s", exc)
        await reply(message, t(lang, "index_broken"))
    except ModelUnavailableError as exc:
        log.error("Model unavailable: %s", exc)
        await reply(message, t(lang, "model_unavailable"))
    except ImageError:
        await reply(message, t(lang, "broken_image"))


async def _run_engine(
    svc: Services, image: Any, mode: Mode, species: str | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    engine, top_k = svc.engine, svc.top_k
    if mode == "analyze":
        classification, hits = await asyncio.to_thread(engine.analyze, image, top_k)
        return classification, hits
    if mode == "classify":
        return await asyncio.to_thread(engine.classify, image), None
    where = await asyncio.to_thread(engine.resolve_taxon, species) if species else None
    return None, await asyncio.to_thread(engine.find_similar, image, top_k, None, where)


async def _send_hits(
    context: ContextTypes.DEFAULT_TYPE,
    svc: Services,
    message: Message,
    lang: Lang,
    hits: list[dict[str, Any]],
) -> None:
    if not await send_collection_album(context.bot, svc, message, lang, hits):
        await reply(message, t(lang, "no_similar"))
