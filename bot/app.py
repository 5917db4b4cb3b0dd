"""Building and running the Telegram bot around a `core.engine.Engine`.

`build_application` wires handlers, flood control and concurrency into a python-telegram-bot
`Application` (no network I/O yet, so tests can point it at a local fake Bot API server);
`run_bot` checks the settings, loads the engine and serves updates by polling or webhook.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from telegram import Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from bot import answers, commands, curate, fallbacks, insight, photo
from bot.file_ids import FileIdStore
from bot.logsafe import protect_secret, quiet_http_loggers
from bot.names import CommonNames
from bot.reindex import ReindexRunner
from bot.request import BASE_DELAY, RetryingRequest
from bot.services import KEY, Services
from bot.settings import BotSettings
from bot.state import BotState
from bot.thumbs import ThumbnailCache
from core.errors import ConfigError

if TYPE_CHECKING:
    from core.engine import Engine

log = logging.getLogger(__name__)

#: Updates handled at the same time: a slow photo must not make other chats wait.
CONCURRENT_UPDATES = 8
#: Retries after a 429 (RetryAfter) before a request is given up.
FLOOD_RETRIES = 5
#: Seconds an upload may take to write (albums of ten photos on a slow link).
MEDIA_WRITE_TIMEOUT = 120

NO_TOKEN = (
    "No Telegram bot token is configured. Create a bot with @BotFather in Telegram "
    "(send /newbot, then copy the token it gives you), and put it in the environment as "
    "KONTROL_BOT_TOKEN=<token> or in a .env file next to where you run kontrol."
)


def bot_token(settings: BotSettings) -> str:
    """The configured token, or a `ConfigError` saying how to get one."""
    token = settings.bot_token.get_secret_value().strip() if settings.bot_token else ""
    if not token:
        raise ConfigError(NO_TOKEN)
    return token


def check_settings(settings: BotSettings) -> str:
    """Fail early, with a readable message, on settings the chosen mode cannot run with."""
    token = bot_token(settings)
    if settings.bot_mode == "webhook":
        missing = [
            name
            for name, value in (
                ("KONTROL_WEBHOOK_URL", settings.webhook_url),
                ("KONTROL_WEBHOOK_SECRET", settings.webhook_secret),
            )
            if not value or (hasattr(value, "get_secret_value") and not value.get_secret_value())
        ]
        if missing:
            raise ConfigError(
                "Webhook mode needs " + " and ".join(missing) + " (the public HTTPS URL Telegram "
                "posts to, and a secret token it sends back); or set KONTROL_BOT_MODE=polling."
            )
        if not str(settings.webhook_url).startswith("https://"):
            raise ConfigError("KONTROL_WEBHOOK_URL must be an https:// URL (Telegram requires it).")
    return token


def _add_handlers(app: Application) -> None:
    fresh = filters.UpdateType.MESSAGE  # edits of old messages are not answered again
    private = filters.ChatType.PRIVATE & fresh
    moving = filters.VIDEO | filters.ANIMATION | filters.VIDEO_NOTE | filters.Sticker.ALL
    app.add_handlers(
        [
            CommandHandler("start", commands.on_start, filters=fresh),
            CommandHandler("help", commands.on_help, filters=fresh),
            CommandHandler("stats", commands.on_stats, filters=fresh),
            CommandHandler("species", commands.on_species, filters=fresh),
            CommandHandler("reindex", commands.on_reindex, filters=fresh),
            CommandHandler("classify", photo.on_classify, filters=fresh),
            CommandHandler("similar", photo.on_similar, filters=fresh),
            CommandHandler("add", curate.on_add_command, filters=fresh),
            CommandHandler("remove", curate.on_remove, filters=fresh),
            CommandHandler("undo", curate.on_undo, filters=fresh),
            CommandHandler("review", curate.on_review, filters=fresh),
            CommandHandler("duplicates", insight.on_duplicates, filters=fresh),
            CommandHandler("suspicious", insight.on_suspicious, filters=fresh),
            MessageHandler(
                fresh & filters.CaptionRegex(photo.CAPTION_COMMAND), photo.on_caption_command
            ),
            MessageHandler(fresh & filters.CaptionRegex(curate.ADD_CAPTION), curate.on_add_caption),
            MessageHandler(private & moving, fallbacks.on_moving_media),
            MessageHandler(private & (filters.PHOTO | filters.Document.IMAGE), photo.on_photo),
            MessageHandler(private & filters.Document.ALL, fallbacks.on_other_document),
            MessageHandler(
                fresh & filters.TEXT & filters.REPLY & ~filters.COMMAND, answers.on_reply_text
            ),
            MessageHandler(private & filters.TEXT, fallbacks.on_text),
            CallbackQueryHandler(curate.on_add_button, pattern=r"^add:"),
            CallbackQueryHandler(curate.on_review_button, pattern=r"^rv:"),
            CallbackQueryHandler(answers.on_feedback_button, pattern=r"^fb:"),
            CallbackQueryHandler(answers.on_browse_button, pattern=r"^br:"),
        ]
    )
    app.add_error_handler(fallbacks.on_error)


async def _post_init(app: Application) -> None:
    """Publish the command menu (English default, Russian for Russian clients); never fatal."""
    for lang, code in (("en", None), ("ru", "ru")):
        try:
            await app.bot.set_my_commands(commands.menu(lang), language_code=code)
        except TelegramError as exc:
            log.warning("Could not register the bot commands (%s): %s", lang, exc)


def build_application(
    settings: BotSettings,
    engine: Engine,
    *,
    progress_interval: float = 2.5,
    chat_action_interval: float = 4.0,
    retry_delay: float = BASE_DELAY,
) -> Application:
    """A ready-to-start Application answering with `engine` (no network I/O happens here).

    Every Bot API call and file download retries transient failures (5xx, dropped connections,
    timeouts) with exponential backoff starting at `retry_delay` seconds; 429s wait as told.
    """
    token = bot_token(settings)
    protect_secret(token)
    quiet_http_loggers()
    state_dir = settings.bot_state_dir
    app = (
        Application.builder()
        .token(token)
        .base_url(settings.telegram_api_url)
        .base_file_url(settings.telegram_file_url)
        .concurrent_updates(CONCURRENT_UPDATES)
        .rate_limiter(AIORateLimiter(max_retries=FLOOD_RETRIES))
        .request(RetryingRequest(media_write_timeout=MEDIA_WRITE_TIMEOUT, base_delay=retry_delay))
        .post_init(_post_init)
        .build()
    )
    app.bot_data[KEY] = Services(
        settings=settings,
        engine=engine,
        thumbs=ThumbnailCache(
            state_dir, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes
        ),
        file_ids=FileIdStore(state_dir),
        reindex=ReindexRunner(engine, progress_interval),
        state=BotState(state_dir),
        names=CommonNames(settings.images_dir),
        chat_action_interval=chat_action_interval,
    )
    _add_handlers(app)
    return app


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging(settings: BotSettings) -> None:
    """Apply KONTROL_LOG_LEVEL to the root logger, adding a handler only if there is none.

    The `kontrol` CLI configures logging before any settings are read (WARNING, or DEBUG with
    --debug), so a `basicConfig` here would be a no-op: the level is set explicitly instead.
    A root logger already at DEBUG (--debug) stays there.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    if root.level != logging.DEBUG:
        root.setLevel(settings.log_level)
    quiet_http_loggers()


def run_bot(settings: BotSettings, engine: Engine | None = None) -> None:
    """Serve the bot until interrupted (blocking); `ConfigError` on unusable settings.

    `engine` lets a caller that already loaded one (e.g. `kontrol run`) share it.
    """
    token = check_settings(settings)
    protect_secret(token)
    _configure_logging(settings)
    log.info(
        "Starting the bot: %s mode, %d admin(s), API %s, log level %s",
        settings.bot_mode,
        len(settings.admin_ids),
        settings.telegram_api_url,
        settings.log_level,
    )
    if engine is None:
        from core.engine import Engine  # heavy (model runtime): only once settings are sound

        engine = Engine(settings)
    app = build_application(settings, engine)
    try:
        _serve(app, settings)
    except InvalidToken:
        raise ConfigError(
            "Telegram rejected KONTROL_BOT_TOKEN. Copy the token again from @BotFather "
            "(/mybots -> your bot -> API Token) and restart."
        ) from None
    except NetworkError as exc:
        raise ConfigError(
            f"Cannot reach the Telegram Bot API at {settings.telegram_api_url} ({exc.message}). "
            "Check the network, or KONTROL_TELEGRAM_API_URL if you use a local Bot API server."
        ) from None


def _serve(app: Application, settings: BotSettings) -> None:
    """Block serving updates by webhook or long polling.

    python-telegram-bot closes the current event loop when it stops, so each run gets a new one.
    """
    asyncio.set_event_loop(asyncio.new_event_loop())
    if settings.bot_mode == "webhook":
        options = webhook_options(settings)
        protect_secret(options["secret_token"])
        log.info("Serving via webhook on %s:%s", options["listen"], options["port"])
        app.run_webhook(**options, allowed_updates=Update.ALL_TYPES)
    else:
        log.info("Serving via long polling")
        app.run_polling(allowed_updates=Update.ALL_TYPES)


def webhook_options(settings: BotSettings) -> dict[str, Any]:
    """Arguments for python-telegram-bot's webhook server: where to listen, the public URL
    Telegram posts to (its path is served locally too) and the secret Telegram must send back."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    return {
        "listen": settings.webhook_listen,
        "port": settings.webhook_port,
        "url_path": urlparse(str(settings.webhook_url)).path.lstrip("/"),
        "webhook_url": settings.webhook_url,
        "secret_token": secret,
    }
