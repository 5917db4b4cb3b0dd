"""The bot's settings: the engine's (`core.settings.Settings`) plus token, admins, Telegram URLs,
webhook and state folder, from the same `KONTROL_` environment. Only the bot and the `kontrol bot`
/ `kontrol run` commands read them, so the engine never holds the token.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from core.settings import Settings
from core.settings import load_settings as _load


class BotSettings(Settings):
    """Engine settings plus the Telegram bot's; every field maps to `KONTROL_<FIELD_NAME>`."""

    bot_token: SecretStr | None = Field(None, description="Telegram bot token from @BotFather.")
    admin_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Telegram user ids allowed to run /reindex: a JSON list `[1, 2]` or `1,2`.",
    )
    telegram_api_url: str = Field(
        "https://api.telegram.org/bot",
        description="Bot API base URL (python-telegram-bot base_url).",
    )
    telegram_file_url: str = Field(
        "https://api.telegram.org/file/bot",
        description="Bot API file base URL (python-telegram-bot base_file_url).",
    )
    bot_mode: Literal["polling", "webhook"] = Field("polling", description="How updates arrive.")
    webhook_url: str | None = Field(None, description="Public HTTPS URL Telegram posts updates to.")
    webhook_secret: SecretStr | None = Field(
        None,
        description="Secret token Telegram sends with each webhook call (required for webhook).",
    )
    webhook_listen: str = Field("0.0.0.0", description="Address the webhook server binds.")
    webhook_port: int = Field(8443, ge=1, le=65535, description="Port the webhook server binds.")
    bot_state_dir: Path = Field(
        Path("embeddings/bot_state"),
        description="Bot state (Telegram file_id cache, album thumbnails).",
    )

    @field_validator("bot_token", "webhook_secret", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """`KONTROL_BOT_TOKEN=` (e.g. from .env.example) means no token, not an empty one."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: object) -> object:
        """Accept the JSON list form `[123, 456]` as well as `123,456`."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("expected a JSON list of user ids, e.g. [123, 456]") from None
        return [part for part in re.split(r"[,\s]+", text) if part]


#: `load_settings(**overrides)` for the bot (a bad value raises `ConfigError`, not a trace).
load_settings = partial(_load, BotSettings)
