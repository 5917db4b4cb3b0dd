"""Buttons under a species answer: feedback (right / wrong -> which species) and browsing
further (more photos, only this species, same genus).

Each answer with buttons is one row in the bot's SQLite state (`bot.state.Answer`): the user's
photo (its Telegram file_id), the prediction and its candidates, the verdict and correction, and
how many similar photos were shown. Callback data is `fb:<id>:<action>` or `br:<id>:<action>`
(well under Telegram's 64 bytes), so a button works the same after a restart: nothing is kept in
memory. Browsing re-embeds the user's photo (downloaded again by file_id) rather than storing
vectors. The keyboard is always rebuilt from the row, so it shows what is still to be done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest
from telegram.ext import ContextTypes

from bot import fallbacks
from bot.album import MAX_ALBUM, send_collection_album
from bot.curate import drop_buttons, in_private
from bot.i18n import Lang, lang_of, raw, t
from bot.inputs import ImageRef, InputProblem, decode, download
from bot.replies import reply
from bot.services import Services, get_services
from bot.state import Answer
from core.curation import clean_species_name
from core.errors import KontrolError

log = logging.getLogger(__name__)

#: Photos per "more" page, and how deep "more" may go.
PAGE = MAX_ALBUM
MAX_SHOWN = 100
#: Candidate buttons offered after "wrong".
MAX_CANDIDATES = 4


def _button(text: str, data: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(text, callback_data=data)


def browse_species(answer: Answer) -> str | None:
    return answer.predicted or (answer.candidates[0] if answer.candidates else None)


def keyboard(lang: Lang, answer: Answer, *, browse: bool = True) -> InlineKeyboardMarkup | None:
    """The buttons `answer` still needs, from its stored state."""
    rows: list[list[InlineKeyboardButton]] = []
    if answer.verdict is None:
        rows.append(
            [
                _button(raw(lang, "feedback_right"), f"fb:{answer.id}:y"),
                _button(raw(lang, "feedback_wrong"), f"fb:{answer.id}:n"),
            ]
        )
    elif answer.verdict == "wrong" and answer.correction is None:
        picks = [(i, name) for i, name in enumerate(answer.candidates) if name != answer.predicted][
            :MAX_CANDIDATES
        ]
        rows += [[_button(name, f"fb:{answer.id}:c{i}")] for i, name in picks]
    if browse and answer.message_id is not None and answer.shown >= 0:
        row = []
        if answer.shown < MAX_SHOWN:
            row.append(_button(raw(lang, "browse_more"), f"br:{answer.id}:m{answer.shown}"))
        species = browse_species(answer)
        if species:
            row.append(_button(raw(lang, "browse_species", species=species), f"br:{answer.id}:s"))
            row.append(_button(raw(lang, "browse_genus"), f"br:{answer.id}:g"))
        if row:
            rows.append(row)
    return InlineKeyboardMarkup(rows) if rows else None


async def send_species_answer(
    update: Update,
    svc: Services,
    message: Message,
    lang: Lang,
    text: str,
    file_id: str,
    classification: dict[str, Any],
    shown: int | None,
) -> Message:
    """Reply with the species answer and its buttons (`shown`: album size, None: no album)."""
    user = update.effective_user
    candidates = [str(name) for name in (classification.get("probabilities") or {})]
    answer_id = await asyncio.to_thread(
        svc.state.new_answer,
        chat_id=message.chat_id,
        user_id=user.id if user else None,
        username=user.username if user else None,
        file_id=file_id,
        predicted=classification.get("species"),
        candidates=candidates,
        shown=-1 if shown is None else shown,
    )
    answer = await asyncio.to_thread(svc.state.answer, answer_id)
    assert answer is not None
    # the browse row needs the message id; it is filled in once the answer is sent
    sent = await reply(message, text, keyboard(lang, answer, browse=False))
    await asyncio.to_thread(svc.state.set_answer_message, answer_id, sent.message_id)
    if shown is not None:
        answer = await asyncio.to_thread(svc.state.answer, answer_id)
        if answer is not None:
            try:
                await sent.edit_reply_markup(reply_markup=keyboard(lang, answer))
            except BadRequest as exc:
                log.info("Could not add the browse buttons: %s", exc)
    return sent


def _parse(data: str | None) -> tuple[int, str] | None:
    try:
        _, sid, action = (data or "").split(":")
        return int(sid), action
    except ValueError:
        return None


async def on_feedback_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """fb:<id>:y (right), fb:<id>:n (wrong: offer candidates), fb:<id>:c<i> (it is candidate i)."""
    query = update.callback_query
    if query is None:
        return
    svc, lang = get_services(context), lang_of(query.from_user)
    parsed = _parse(query.data)
    answer = await asyncio.to_thread(svc.state.answer, parsed[0]) if parsed else None
    if parsed is None or answer is None:
        await query.answer(t(lang, "button_expired"))
        return
    if answer.user_id is not None and answer.user_id != query.from_user.id:
        await query.answer(t(lang, "not_yours"))
        return
    answer_id, action = parsed
    state = svc.state
    if action in ("y", "n"):
        verdict = "right" if action == "y" else "wrong"
        if not await asyncio.to_thread(state.set_verdict, answer_id, verdict):
            await query.answer(t(lang, "feedback_already"))
            return
        await query.answer(t(lang, "feedback_thanks" if action == "y" else "feedback_pick"))
    elif action.startswith("c"):
        try:
            species = answer.candidates[int(action[1:])]
        except (ValueError, IndexError):
            await query.answer(t(lang, "button_expired"))
            return
        if not await asyncio.to_thread(state.set_correction, answer_id, species):
            await query.answer(t(lang, "feedback_already"))
            return
        await query.answer(t(lang, "feedback_noted", species=species))
    else:
        await query.answer(t(lang, "button_expired"))
        return
    fresh = await asyncio.to_thread(state.answer, answer_id)
    if fresh is not None:
        await drop_buttons(query, keyboard(lang, fresh))


async def on_reply_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A text reply to a species answer names the right species; any other text is a hint."""
    message, svc = update.effective_message, get_services(context)
    target = message.reply_to_message if message else None
    answer = None
    if message is not None and target is not None:
        answer = await asyncio.to_thread(
            svc.state.answer_for_message, message.chat_id, target.message_id
        )
    if (
        message is None
        or answer is None
        or (
            answer.user_id is not None
            and update.effective_user is not None
            and answer.user_id != update.effective_user.id
        )
    ):
        if in_private(update):
            await fallbacks.on_text(update, context)
        return
    lang = lang_of(update.effective_user)
    name = clean_species_name(message.text or "") if len(message.text or "") <= 200 else None
    if name is None:
        await reply(message, t(lang, "unknown_name_in_reply"))
        return
    with contextlib.suppress(KontrolError):  # a species the collection lacks: the admin decides
        name = await asyncio.to_thread(svc.engine.resolve_species, name)
    if not await asyncio.to_thread(svc.state.set_correction, answer.id, name):
        await reply(message, t(lang, "feedback_already"))
        return
    await reply(message, t(lang, "feedback_noted_text", species=name))
    fresh = await asyncio.to_thread(svc.state.answer, answer.id)
    if fresh is not None and answer.message_id is not None:
        try:
            await context.bot.edit_message_reply_markup(
                message.chat_id, answer.message_id, reply_markup=keyboard(lang, fresh)
            )
        except BadRequest as exc:
            log.info("Could not update the feedback buttons: %s", exc)


async def on_browse_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """br:<id>:m<shown> (next page), br:<id>:s (only this species), br:<id>:g (same genus)."""
    query = update.callback_query
    if query is None:
        return
    svc, lang = get_services(context), lang_of(query.from_user)
    parsed = _parse(query.data)
    answer = await asyncio.to_thread(svc.state.answer, parsed[0]) if parsed else None
    message = query.message if isinstance(query.message, Message) else None
    if parsed is None or answer is None or message is None:
        await query.answer(t(lang, "button_expired"))
        return
    answer_id, action = parsed
    where: dict[str, Any] | None = None
    offset, count = 0, PAGE
    species = browse_species(answer)
    if action.startswith("m"):
        try:
            offset = int(action[1:])
        except ValueError:
            await query.answer(t(lang, "button_expired"))
            return
        if offset >= MAX_SHOWN or not await asyncio.to_thread(
            svc.state.claim_page, answer_id, offset, PAGE
        ):
            await query.answer(t(lang, "browse_already"))
            return
    elif action in ("s", "g") and species:
        where = {"species": species} if action == "s" else {"genus": species.split()[0]}
    else:
        await query.answer(t(lang, "button_expired"))
        return
    await query.answer()
    try:
        data = await download(context.bot, ImageRef(answer.file_id, None))
        image = await asyncio.to_thread(decode, data, svc.engine)
        hits = await asyncio.to_thread(svc.engine.find_similar, image, offset + count, None, where)
    except BadRequest:
        await reply(message, t(lang, "photo_gone"))
        return
    except InputProblem as problem:
        await reply(message, t(lang, problem.key, **problem.values))
        return
    except KontrolError as exc:
        log.info("Browsing answer %s failed: %s", answer_id, exc)
        await reply(message, t(lang, "browse_none"))
        return
    if not await send_collection_album(context.bot, svc, message, lang, hits[offset:]):
        await reply(message, t(lang, "browse_none"))
    if action.startswith("m"):
        fresh = await asyncio.to_thread(svc.state.answer, answer_id)
        if fresh is not None:
            await drop_buttons(query, keyboard(lang, fresh))
