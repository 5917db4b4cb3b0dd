"""Finding, downloading and decoding the image a user sent.

Each refusal is an `InputProblem` carrying an i18n key, so a handler answers bad input with one
clear sentence in the user's language. Sizes are checked before anything is downloaded (Bot API
getFile refuses files over 20 MB, and there is no reason to fetch what we would refuse).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image
from telegram import Bot, Message

from core.errors import ImageError, ImageTooLargeError, ImageTooSmallError

if TYPE_CHECKING:
    from core.engine import Engine

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # Bot API getFile limit


class InputProblem(Exception):
    """The message holds no usable image; `key` names the i18n reply, `values` fill it in."""

    def __init__(self, key: str, **values: object) -> None:
        super().__init__(key)
        self.key = key
        self.values = values


@dataclass(frozen=True)
class ImageRef:
    """Where the image of a message lives on Telegram's side."""

    file_id: str
    file_size: int | None


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def has_media(message: Message) -> bool:
    """True if the message carries any attachment we can answer about (image or not)."""
    return bool(
        message.photo
        or message.document
        or message.animation
        or message.video
        or message.video_note
        or message.sticker
    )


def image_ref(message: Message) -> ImageRef:
    """The image attached to `message`; raises `InputProblem` if there is none or it is unusable."""
    if message.animation or message.video or message.video_note or message.sticker:
        raise InputProblem("animated")
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        ref = ImageRef(largest.file_id, largest.file_size)
    elif message.document:
        mime = (message.document.mime_type or "").lower()
        if not mime.startswith("image/"):
            raise InputProblem("not_image")
        ref = ImageRef(message.document.file_id, message.document.file_size)
    else:
        raise InputProblem("not_image")
    if ref.file_size is not None and ref.file_size > MAX_DOWNLOAD_BYTES:
        raise InputProblem("too_big", size=_megabytes(ref.file_size))
    return ref


async def download(bot: Bot, ref: ImageRef) -> bytes:
    """The file's bytes; the size Telegram reports in getFile is checked again before fetching."""
    tg_file = await bot.get_file(ref.file_id)
    if tg_file.file_size is not None and tg_file.file_size > MAX_DOWNLOAD_BYTES:
        raise InputProblem("too_big", size=_megabytes(tg_file.file_size))
    return bytes(await tg_file.download_as_bytearray())


def _is_animated(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return bool(getattr(probe, "is_animated", False))
    except Exception:  # not an image at all: let load_image say so properly
        return False


def decode(data: bytes, engine: Engine) -> Image.Image:
    """Bytes -> RGB image under the configured limits (blocking: run via `asyncio.to_thread`)."""
    if _is_animated(data):
        raise InputProblem("animated")
    try:
        return engine.read_image(data)
    except ImageTooSmallError:
        raise InputProblem("too_small") from None
    except ImageTooLargeError:
        raise InputProblem("image_too_large") from None
    except ImageError:
        raise InputProblem("broken_image") from None
