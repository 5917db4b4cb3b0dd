"""The curator's commands (admins only): /add, /remove, /undo, /review, and their buttons.

/add <name> as a photo's caption or as a reply to a photo saves the photo into the collection and
indexes it at once (`core.curation`: one embedding, no scan). A name the collection does not know
yet is confirmed with buttons first. /remove, as a reply to one of the bot's album photos, moves
that photo to the trash; /undo reverts the admin's last change within ten minutes. Every change is
written to the audit log (`bot.state`), which /stats summarises for admins.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Any

from telegram import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
    User,
)
from telegram.constants import ChatType, ParseMode
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bot.i18n import Lang, lang_of, raw, t
from bot.inputs import ImageRef, InputProblem, download, has_media, image_ref
from bot.replies import reply
from bot.services import Services, get_services
from core.curation import (
    MAX_NAME,
    Added,
    PhotoGoneError,
    add_photo,
    clean_species_name,
    remove_photo,
    restore_photo,
)
from core.errors import IndexBusyError, IndexMissingError, KontrolError, UnknownSpeciesError
from core.imageio import load_image

log = logging.getLogger(__name__)

#: How long an admin's change can be undone.
UNDO_WINDOW_S = 600

ADD_CAPTION = re.compile(r"^/add(?:@(?P<bot>\w+))?(?:\s+(?P<args>.*))?$", re.IGNORECASE | re.DOTALL)


def _user(update: Update) -> tuple[int | None, str | None]:
    user = update.effective_user
    return (user.id, user.username) if user else (None, None)


async def _refused(svc: Services, message: Message, user: User | None, lang: Lang) -> bool:
    """Refuse a non-admin with one sentence; True when refused."""
    user_id = user.id if user else None
    if svc.is_admin(user_id):
        return False
    log.info("Refused a curation command from non-admin user %s", user_id)
    await reply(message, t(lang, "admin_only"))
    return True


def _shown_name(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


# --- /add -------------------------------------------------------------------------------------


async def on_add_caption(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/add <name> written as the caption of the photo itself."""
    message = update.effective_message
    match = ADD_CAPTION.match((message.caption or "").strip()) if message else None
    if message is None or match is None:
        return
    addressed = match.group("bot")
    if addressed and addressed.lower() != (context.bot.username or "").lower():
        return  # meant for another bot
    await _add(update, context, message, message, match.group("args") or "")


async def on_add_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/add <name> as a reply to a photo (or, wrongly, on its own)."""
    message = update.effective_message
    if message is None:
        return
    target = message.reply_to_message
    source = target if target is not None and has_media(target) else None
    await _add(update, context, message, source, " ".join(context.args or []))


async def _add(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    message: Message,
    source: Message | None,
    name_text: str,
) -> None:
    svc, lang = get_services(context), lang_of(update.effective_user)
    if await _refused(svc, message, update.effective_user, lang):
        return
    if source is None:
        await reply(message, t(lang, "add_need_photo"))
        return
    if not name_text.strip():
        await reply(message, t(lang, "add_need_name"))
        return
    name = clean_species_name(name_text) if len(name_text) <= 4 * MAX_NAME else None
    if name is None:
        await reply(message, t(lang, "bad_name", name=_shown_name(name_text)))
        return
    try:
        ref = image_ref(source)
    except InputProblem as problem:
        await reply(message, t(lang, problem.key, **problem.values))
        return
    user_id, username = _user(update)
    known, suggestions = await asyncio.to_thread(_known_species, svc, name)
    if known is not None:
        try:
            await add_and_report(context, svc, message, lang, ref.file_id, known, _who(update))
        except PhotoGone:
            await reply(message, t(lang, "photo_gone"))
        return
    token = await asyncio.to_thread(
        svc.state.put_pending,
        "add",
        {
            "file_id": ref.file_id,
            "name": name,
            "suggestions": suggestions,
            "user_id": user_id,
            "username": username,
            "chat_id": message.chat_id,
        },
    )
    rows = [
        [InlineKeyboardButton(raw(lang, "add_as_new", name=name), callback_data=f"add:{token}:n")]
    ]
    rows += [
        [
            InlineKeyboardButton(
                raw(lang, "add_did_you_mean", name=s), callback_data=f"add:{token}:{i}"
            )
        ]
        for i, s in enumerate(suggestions[:3])
    ]
    rows.append([InlineKeyboardButton(raw(lang, "cancel"), callback_data=f"add:{token}:x")])
    await reply(message, t(lang, "add_unknown", name=name), InlineKeyboardMarkup(rows))


def _known_species(svc: Services, name: str) -> tuple[str | None, list[str]]:
    """The collection's spelling of `name`, or None and the close names it does have."""
    try:
        return svc.engine.resolve_species(name), []
    except UnknownSpeciesError as exc:
        return None, list(exc.suggestions)
    except IndexMissingError:
        return None, []


def _who(update: Update) -> dict[str, Any]:
    user_id, username = _user(update)
    chat = update.effective_chat
    return {"user_id": user_id, "username": username, "chat_id": chat.id if chat else None}


def _sidecar(who: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "added_by": {"id": who.get("user_id"), "username": who.get("username")},
        "added_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "chat_id": who.get("chat_id"),
        "origin": "telegram",
        **(extra or {}),
    }


class _Gone(Exception):
    """Telegram no longer serves the photo's file_id."""


class PhotoGone(Exception):
    """The photo to add is no longer on Telegram (a file_id from long ago)."""


async def _add_file(
    context: ContextTypes.DEFAULT_TYPE, svc: Services, file_id: str, species: str, sidecar: dict
) -> Added:
    try:
        data = await download(context.bot, ImageRef(file_id, None))
    except BadRequest as exc:
        raise _Gone(str(exc)) from None
    s = svc.settings

    def work() -> Added:
        image = load_image(
            data,
            max_pixels=s.max_image_pixels,
            max_bytes=s.max_image_bytes,
            min_side=s.min_image_side,
        )
        return add_photo(svc.engine, image, species, sidecar)

    return await asyncio.to_thread(work)


async def add_and_report(
    context: ContextTypes.DEFAULT_TYPE,
    svc: Services,
    message: Message,
    lang: Lang,
    file_id: str,
    species: str,
    who: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
    detail: str | None = None,
) -> Added | None:
    """Add the photo, audit it and say so in reply to `message`; None (after a clear reply) when
    it could not be added. Also used when an admin accepts a user's correction.
    `PhotoGone` (nothing replied) when Telegram no longer has the photo."""
    try:
        added = await _add_file(context, svc, file_id, species, _sidecar(who, extra))
    except _Gone:
        raise PhotoGone() from None
    except InputProblem as problem:
        await reply(message, t(lang, problem.key, **problem.values))
        return None
    except IndexBusyError:
        await reply(message, t(lang, "busy"))
        return None
    except (KontrolError, OSError) as exc:
        log.warning("Adding a photo to %s failed: %s", species, exc)
        await reply(message, t(lang, "add_failed", error=str(exc)[:300]))
        return None
    await asyncio.to_thread(
        svc.state.audit,
        "add",
        user_id=who.get("user_id"),
        username=who.get("username"),
        chat_id=who.get("chat_id"),
        uuid=added.uuid,
        species=added.species,
        path=added.path,
        detail=detail,
    )
    log.info("User %s added %s as %s", who.get("user_id"), added.path, added.species)
    await reply(message, t(lang, "added", species=added.species, count=added.count))
    return added


async def _say(context: ContextTypes.DEFAULT_TYPE, query: CallbackQuery, text: str) -> None:
    """Answer a button's message with `text` (as a reply when the message is still there)."""
    message = query.message
    if isinstance(message, Message):
        await reply(message, text)
    elif message is not None:
        await context.bot.send_message(message.chat.id, text, parse_mode=ParseMode.HTML)


async def drop_buttons(query: CallbackQuery, markup: InlineKeyboardMarkup | None = None) -> None:
    """Replace the pressed message's buttons (by `markup`, or none); never fatal."""
    try:
        await query.edit_message_reply_markup(reply_markup=markup)
    except TelegramError as exc:
        if "not modified" not in str(exc).lower():
            log.info("Could not update the buttons: %s", exc)


async def _admin_button(
    update: Update, context: ContextTypes.DEFAULT_TYPE
) -> tuple[CallbackQuery, Services, Lang] | None:
    """The pressed button's query, services and language when an admin pressed it; a refusal
    toast (and None) for anyone else."""
    query = update.callback_query
    if query is None:
        return None
    svc, lang = get_services(context), lang_of(query.from_user)
    if not svc.is_admin(query.from_user.id):
        await query.answer(t(lang, "admin_only"), show_alert=True)
        return None
    return query, svc, lang


async def on_add_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """add:<token>:n (as new), add:<token>:<i> (suggestion i), add:<token>:x (cancel)."""
    admin = await _admin_button(update, context)
    if admin is None:
        return
    query, svc, lang = admin
    _, token, choice = (query.data or "::").split(":", 2)
    data = await asyncio.to_thread(svc.state.get_pending, token, "add")
    if data is None:
        await query.answer(t(lang, "button_expired"))
        return
    if not await asyncio.to_thread(svc.state.claim_pending, token):
        await query.answer(t(lang, "already_done"))
        return
    await query.answer()
    await drop_buttons(query)
    if choice == "x":
        await _say(context, query, t(lang, "cancelled"))
        return
    try:
        species = data["name"] if choice == "n" else data["suggestions"][int(choice)]
    except (ValueError, IndexError):
        await _say(context, query, t(lang, "button_expired"))
        return
    message = query.message if isinstance(query.message, Message) else None
    if message is None:
        return
    who = {"user_id": query.from_user.id, "username": query.from_user.username}
    who["chat_id"] = message.chat_id
    try:
        await add_and_report(context, svc, message, lang, data["file_id"], species, who)
    except PhotoGone:
        await _say(context, query, t(lang, "photo_gone"))


# --- /remove and /undo ------------------------------------------------------------------------


async def on_remove(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message, svc = update.effective_message, get_services(context)
    if message is None:
        return
    lang = lang_of(update.effective_user)
    if await _refused(svc, message, update.effective_user, lang):
        return
    target = message.reply_to_message
    photo_id = None
    if target is not None:
        photo_id = await asyncio.to_thread(
            svc.state.album_photo, message.chat_id, target.message_id
        )
    if photo_id is None:
        await reply(message, t(lang, "remove_need_reply"))
        return
    try:
        removed = await asyncio.to_thread(remove_photo, svc.engine, photo_id)
    except PhotoGoneError:
        await reply(message, t(lang, "photo_gone"))
        return
    except IndexBusyError:
        await reply(message, t(lang, "busy"))
        return
    except (KontrolError, OSError) as exc:
        log.warning("Removing %s failed: %s", photo_id, exc)
        await reply(message, t(lang, "remove_failed", error=str(exc)[:300]))
        return
    who = _who(update)
    await asyncio.to_thread(
        svc.state.audit,
        "remove",
        **who,
        uuid=removed.uuid,
        species=removed.species,
        path=removed.path,
        trash_path=removed.trash_path,
    )
    log.info("User %s removed %s (now %s)", who["user_id"], removed.path, removed.trash_path)
    await reply(message, t(lang, "removed", species=removed.species, count=removed.count))


async def on_undo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message, svc = update.effective_message, get_services(context)
    if message is None:
        return
    lang = lang_of(update.effective_user)
    if await _refused(svc, message, update.effective_user, lang):
        return
    who = _who(update)
    row = await asyncio.to_thread(svc.state.last_undoable, who["user_id"], UNDO_WINDOW_S)
    if row is None or not await asyncio.to_thread(svc.state.claim_undo, row.id):
        await reply(message, t(lang, "nothing_to_undo"))
        return
    try:
        if row.action == "remove":
            back = await asyncio.to_thread(
                restore_photo, svc.engine, row.trash_path or "", row.path or ""
            )
            text = t(lang, "undone_remove", species=back.species, count=back.count)
            done = {"uuid": back.uuid, "species": back.species, "path": back.path}
        else:
            gone = await asyncio.to_thread(remove_photo, svc.engine, row.uuid or "")
            text = t(lang, "undone_add", species=gone.species, count=gone.count)
            done = {"uuid": gone.uuid, "species": gone.species, "path": gone.path}
            done["trash_path"] = gone.trash_path
    except PhotoGoneError:
        await reply(message, t(lang, "photo_gone"))
        return
    except IndexBusyError:
        await asyncio.to_thread(svc.state.release_undo, row.id)
        await reply(message, t(lang, "busy"))
        return
    except (KontrolError, OSError) as exc:
        await asyncio.to_thread(svc.state.release_undo, row.id)
        log.warning("Undo of audit #%s failed: %s", row.id, exc)
        await reply(message, t(lang, "undo_failed", error=str(exc)[:300]))
        return
    await asyncio.to_thread(
        svc.state.audit, "undo", **who, **done, detail=f"{row.action} #{row.id}"
    )
    await reply(message, text)


def audit_line(lang: Lang, svc: Services) -> str:
    """One line for /stats: how many changes admins made (blocking: reads SQLite)."""
    summary = svc.state.audit_summary()
    counts = summary["counts"]
    if not counts:
        return ""
    last = datetime.fromtimestamp(summary["last"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    return t(
        lang,
        "audit_summary",
        added=counts.get("add", 0),
        removed=counts.get("remove", 0),
        undone=counts.get("undo", 0),
        last=last,
    )


# --- /review ----------------------------------------------------------------------------------


def review_keyboard(lang: Lang, answer_id: int, species: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    raw(lang, "review_accept", species=species), callback_data=f"rv:{answer_id}:a"
                ),
                InlineKeyboardButton(raw(lang, "review_reject"), callback_data=f"rv:{answer_id}:r"),
            ]
        ]
    )


async def on_review(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message, svc = update.effective_message, get_services(context)
    if message is None:
        return
    lang = lang_of(update.effective_user)
    if await _refused(svc, message, update.effective_user, lang):
        return
    items, total = await asyncio.to_thread(svc.state.review_queue)
    if not items:
        await reply(message, t(lang, "review_empty"))
        return
    await reply(message, t(lang, "review_header", count=total, shown=len(items)))
    for item in items:
        caption = t(
            lang, "review_item", predicted=item.predicted or "?", correction=item.correction or "?"
        )
        markup = review_keyboard(lang, item.id, item.correction or "?")
        try:
            await context.bot.send_photo(
                message.chat_id,
                item.file_id,
                caption=caption,
                parse_mode=ParseMode.HTML,
                reply_markup=markup,
            )
        except BadRequest as exc:
            log.info("Review photo %s not sendable: %s", item.id, exc)
            await context.bot.send_message(
                message.chat_id, caption, parse_mode=ParseMode.HTML, reply_markup=markup
            )


async def on_review_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """rv:<answer id>:a (accept: add the photo under the corrected species) or :r (reject)."""
    admin = await _admin_button(update, context)
    if admin is None:
        return
    query, svc, lang = admin
    try:
        _, sid, action = (query.data or "").split(":")
        answer_id = int(sid)
    except ValueError:
        await query.answer(t(lang, "button_expired"))
        return
    item = await asyncio.to_thread(svc.state.answer, answer_id)
    if item is None or not item.correction:
        await query.answer(t(lang, "button_expired"))
        return
    status = "accepted" if action == "a" else "rejected"
    if not await asyncio.to_thread(svc.state.claim_review, answer_id, status):
        await query.answer(t(lang, "review_done"))
        return
    await query.answer()
    await drop_buttons(query)
    message = query.message if isinstance(query.message, Message) else None
    if status == "rejected" or message is None:
        who = {"user_id": query.from_user.id, "username": query.from_user.username}
        await asyncio.to_thread(
            svc.state.audit, "reject", **who, chat_id=None, species=item.correction
        )
        await _say(context, query, t(lang, "review_rejected"))
        return
    who = {
        "user_id": query.from_user.id,
        "username": query.from_user.username,
        "chat_id": message.chat_id,
    }
    extra = {"reported_by": {"id": item.user_id, "username": item.username}}
    try:
        added = await add_and_report(
            context,
            svc,
            message,
            lang,
            item.file_id,
            item.correction,
            who,
            extra=extra,
            detail=f"review #{answer_id}",
        )
    except PhotoGone:
        await asyncio.to_thread(svc.state.mark_review, answer_id, "gone")
        await _say(context, query, t(lang, "review_photo_gone"))
        return
    if added is None:
        await asyncio.to_thread(svc.state.release_review, answer_id)
        await drop_buttons(query, review_keyboard(lang, answer_id, item.correction))


def in_private(update: Update) -> bool:
    chat = update.effective_chat
    return chat is not None and chat.type == ChatType.PRIVATE
