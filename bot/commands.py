"""Text commands: /start, /help, /stats, /species and the admin-only /reindex."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from telegram import BotCommand, Update
from telegram.ext import ContextTypes

from bot.formatting import species_list_text, stats_text
from bot.i18n import TABLES, Lang, lang_of, t
from bot.replies import fixed_reply, not_indexed_text, reply
from bot.services import get_services
from core.errors import IndexMissingError

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)

#: Commands advertised in the client's menu (setMyCommands), in this order.
MENU = (
    "start",
    "help",
    "classify",
    "similar",
    "species",
    "stats",
    "reindex",
    "add",
    "remove",
    "undo",
    "review",
)


def menu(lang: Lang) -> list[BotCommand]:
    return [BotCommand(name, TABLES[lang][f"cmd_{name}"]) for name in MENU]


on_start = fixed_reply("start", "/start: what the bot does.")
on_help = fixed_reply("help", "/help: how to use the bot.")


async def _answer_from_index(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    query: Callable[[Engine], Any],
    render: Callable[[Lang, Any], str],
) -> None:
    """Reply with `render(query(engine))`, or explain that nothing is indexed yet."""
    message, svc = update.effective_message, get_services(context)
    if message is None:
        return
    lang = lang_of(update.effective_user)
    try:
        if not await asyncio.to_thread(svc.engine.is_indexed):
            raise IndexMissingError("not indexed")
        value = await asyncio.to_thread(query, svc.engine)
    except IndexMissingError:
        await reply(message, not_indexed_text(lang, svc, update))
        return
    await reply(message, render(lang, value))


async def on_stats(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Collection size, species count, model and build time; for admins, the curation log."""
    svc = get_services(context)
    user_id = update.effective_user.id if update.effective_user else None
    audit = ""
    if svc.is_admin(user_id):
        from bot.curate import audit_line

        audit = await asyncio.to_thread(audit_line, lang_of(update.effective_user), svc)

    def render(lang: Lang, stats: Any) -> str:
        return stats_text(lang, stats) + (f"\n{audit}" if audit else "")

    await _answer_from_index(update, context, lambda engine: engine.stats(), render)


async def on_species(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """The species of the collection."""
    await _answer_from_index(
        update,
        context,
        lambda engine: engine.species(),
        lambda lang, names: species_list_text(lang, list(names)),
    )


async def on_reindex(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Admins only; refused politely while one runs; the work itself runs as a background task."""
    message, svc = update.effective_message, get_services(context)
    if message is None:
        return
    lang = lang_of(update.effective_user)
    user_id = update.effective_user.id if update.effective_user else None
    if not svc.is_admin(user_id):
        log.info("Refused /reindex from non-admin user %s", user_id)
        await reply(message, t(lang, "reindex_denied"))
        return
    runner = svc.reindex
    if not runner.try_begin():
        await reply(message, t(lang, "reindex_busy"))
        return
    try:
        status = await reply(message, t(lang, "reindex_started"))
        context.application.create_task(runner.run(status, lang), update=update)
    except BaseException:
        runner.running = False
        raise
