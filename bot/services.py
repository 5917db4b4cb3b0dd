"""What every handler needs (settings, engine, caches), stored once in `application.bot_data`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from telegram.ext import ContextTypes

from bot.fairshare import FairShare
from bot.file_ids import FileIdStore
from bot.names import CommonNames
from bot.reindex import ReindexRunner
from bot.settings import BotSettings
from bot.state import BotState
from bot.thumbs import ThumbnailCache

if TYPE_CHECKING:
    from core.engine import Engine

KEY = "kontrol.services"


@dataclass
class Services:
    settings: BotSettings
    engine: Engine
    thumbs: ThumbnailCache
    file_ids: FileIdStore
    reindex: ReindexRunner
    state: BotState
    chat_action_interval: float = 4.0
    fair: FairShare = field(default_factory=FairShare)
    names: CommonNames | None = None

    @property
    def top_k(self) -> int:
        return max(1, min(10, self.settings.top_k))

    def is_admin(self, user_id: int | None) -> bool:
        return user_id is not None and user_id in self.settings.admin_ids


def get_services(context: ContextTypes.DEFAULT_TYPE | Any) -> Services:
    """The services of the application this callback runs in."""
    return context.application.bot_data[KEY]
