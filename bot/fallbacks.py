"""Answers for everything that is not a usable photo, and the last-resort error handler.

A user should never be left without an answer nor see a traceback: unsupported input gets a hint,
and any unexpected failure is logged (token redacted) and answered with a short apology.
"""

from __future__ import annotations

import logging

from telegram import Update
from telegram.constants import ParseMode
from telegram.error import Forbidden, NetworkError, TelegramError
from telegram.ext import ContextTypes

from bot.i18n import lang_of, t
from bot.replies import fixed_reply

log = logging.getLogger(__name__)


on_text = fixed_reply(
    "text_hint", "Plain text (or an unknown command) in a private chat: say what the bot expects."
)
on_moving_media = fixed_reply(
    "animated", "Video, animation, video note or sticker: only still photos are supported."
)
on_other_document = fixed_reply("not_image", "A file that is not an image.")


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the failure and apologise to the user, if there is one to apologise to."""
    error = context.error
    if isinstance(error, NetworkError) and not isinstance(update, Update):
        log.warning("Telegram network problem: %s", error)
        return
    update_id = update.update_id if isinstance(update, Update) else None
    log.error("Error while handling update %s", update_id, exc_info=error)
    if not isinstance(update, Update) or update.effective_chat is None:
        return
    if isinstance(error, Forbidden):  # blocked by the user: nobody to talk to
        return
    try:
        await context.bot.send_message(
            update.effective_chat.id,
            t(lang_of(update.effective_user), "error"),
            parse_mode=ParseMode.HTML,
        )
    except TelegramError as exc:
        log.warning("Could not send the apology: %s", exc)
