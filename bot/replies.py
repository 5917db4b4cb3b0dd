"""Small helpers every handler uses to answer: reply in HTML, quoting the user's message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from telegram import InlineKeyboardMarkup, Message, ReplyParameters, Update
from telegram.constants import ParseMode
from telegram.ext import ContextTypes

from bot.i18n import Lang, lang_of, t
from bot.paging import split_html
from bot.services import Services


async def reply(message: Message, text: str, markup: InlineKeyboardMarkup | None = None) -> Message:
    """Answer `message` as a reply (still sent if the user deleted it meanwhile).

    A text over Telegram's length limit is sent as several messages, cut on line boundaries, each
    well-formed HTML; the first one is returned, unless `markup` (inline buttons) is given: it goes
    under the last page, which is then returned.
    """
    sent: list[Message] = []
    pages = split_html(text)
    for i, page in enumerate(pages):
        sent.append(
            await message.reply_text(
                page,
                parse_mode=ParseMode.HTML,
                reply_parameters=ReplyParameters(
                    message.message_id, allow_sending_without_reply=True
                ),
                reply_markup=markup if i == len(pages) - 1 else None,
            )
        )
    return sent[-1] if markup is not None else sent[0]


Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def fixed_reply(key: str, doc: str) -> Handler:
    """A handler that answers with the i18n text `key` in the user's language."""

    async def handler(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.effective_message:
            await reply(update.effective_message, t(lang_of(update.effective_user), key))

    handler.__doc__ = doc
    return handler


def not_indexed_text(lang: Lang, services: Services, update: Update) -> str:
    """'Not indexed yet', plus how to fix it: admins are told to run /reindex."""
    user_id = update.effective_user.id if update.effective_user else None
    hint = "not_indexed_admin" if services.is_admin(user_id) else "not_indexed_user"
    return t(lang, "not_indexed") + "\n" + t(lang, hint)
