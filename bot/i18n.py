"""Every user-facing string of the bot, in English and Russian.

Handlers never build sentences themselves: they pick a key here, so a translation is a table edit
and no reply can leak an English (or internal) message to a Russian-speaking user by accident.
Texts are Telegram HTML; values passed in are escaped by `t`.
"""

from __future__ import annotations

import html
from typing import Literal

from telegram import User

from bot import i18n_curation as curation_strings

Lang = Literal["en", "ru"]

EN: dict[str, str] = {
    "start": (
        "👋 I recognise animal species in photos and find similar photos in my collection.\n\n"
        "Send me a photo (as a photo or as an image file) and I reply with the species, how sure "
        "I am, and an album of the most similar photos.\n\n"
        "Type /help to see all commands."
    ),
    "help": (
        "<b>How to use me</b>\n"
        "• Send a photo: species + similar photos.\n"
        "• /classify: species and top-5 probabilities only.\n"
        "• /similar: similar photos only.\n"
        "• /similar <i>Canis lupus</i>: similar photos of that species only "
        "(or a genus, family, order: /similar <i>Felidae</i>).\n"
        "• /species: species in the collection.\n"
        "• /stats: collection size, model, index date.\n"
        "• Admins: /reindex (rebuild the index), /add <i>Scientific name</i> (with a photo), "
        "/remove and /undo (as a reply to an album photo), /review (users' corrections), "
        "/duplicates, /suspicious.\n\n"
        "Use /classify or /similar as the caption of a photo, or as a reply to a photo "
        "(this also works in groups)."
    ),
    "cmd_start": "What this bot does",
    "cmd_help": "How to use the bot",
    "cmd_classify": "Species of a photo (caption or reply)",
    "cmd_similar": "Similar photos (caption or reply)",
    "cmd_species": "Species in the collection",
    "cmd_stats": "Collection statistics",
    "cmd_reindex": "Rebuild the index (admins)",
    "text_hint": (
        "Send me a photo of an animal and I will tell you the species. /help lists commands."
    ),
    "need_photo": (
        "Send /{command} as the caption of a photo, or reply with /{command} to a message "
        "that contains a photo."
    ),
    "species_result": "🐾 <b><i>{species}</i></b>: {confidence} sure",
    "not_sure": "🤔 I am not sure which species this is. Closest candidates:",
    "no_animal": "🤔 I do not see an animal in this photo, so I name none.",
    "candidates": "Other candidates:",
    "candidate_line": "• <i>{species}</i>: {probability}",
    "probabilities": "Top probabilities:",
    "hedge_high": "Almost certainly",
    "hedge_mid": "Probably",
    "hedge_low": "Possibly",
    "species_answer": "🐾 {hedge} <b><i>{species}</i></b> ({confidence})",
    "rank_answer": (
        "🐾 {hedge} an animal of the {rank} <b><i>{taxon}</i></b> ({confidence}), "
        "most likely <i>{species}</i> ({species_confidence})"
    ),
    "rank_genus": "genus",
    "rank_family": "family",
    "rank_order": "order",
    "rank_class": "class",
    "fallback": ("ImageNet guess (general model, not from this collection): {name}, {confidence}"),
    "album_caption": "<i>{species}</i>: {similarity} similar",
    "similar_header": "Most similar photos:",
    "no_similar": "I found no similar photos in the collection.",
    "unknown_species": (
        "There is no species “{query}” in the collection.{suggestions}\n"
        "Use /species to see all species, then /similar <i>Scientific name</i>."
    ),
    "did_you_mean": " Did you mean: {names}?",
    "species_list": "<b>{count} species in the collection:</b>\n{names}",
    "stats": (
        "<b>Collection</b>\n"
        "Photos: {total}\n"
        "Species: {species}\n"
        "Model: {model}\n"
        "Index built: {created}"
    ),
    "not_indexed": "The collection is not indexed yet, so I cannot search it.",
    "not_indexed_admin": "You are an admin: run /reindex to build the index.",
    "not_indexed_user": "Please ask the bot's admin to build the index.",
    "not_image": "This file is not an image. Please send a photo (JPEG, PNG, WebP, ...).",
    "broken_image": "I could not read this image: the file seems to be damaged or unsupported.",
    "too_big": "This file is too large ({size}); I can download files up to 20 MB.",
    "image_too_large": "This image is too large to process (too many pixels or bytes).",
    "too_small": "This image is too small to recognise anything; please send a larger photo.",
    "animated": (
        "Animated images, videos and stickers are not supported. Please send a still photo."
    ),
    "reindex_denied": "Sorry, only the bot's admins may rebuild the index.",
    "insight_denied": "Sorry, only the bot's admins may review the collection.",
    "insight_busy": "A collection review is already running; please wait for it.",
    "insight_started": "🔎 Looking through the whole collection…",
    "insight_failed": "The collection review failed; the details are in the bot's log.",
    "duplicates_found": "{count} group(s) of near-duplicates among {total} photos. The top ones:",
    "suspicious_found": (
        "{count} photo(s) whose neighbours mostly carry another label, among {total}. "
        "The top ones (the photo first, then its neighbours); reply /remove to an album photo "
        "to take it out:"
    ),
    "reindex_busy": "A re-index is already running; please wait until it finishes.",
    "reindex_started": "🔄 Re-indexing started…",
    "reindex_progress": "🔄 Re-indexing: {percent}% ({done}/{total} photos, {rate} photos/s)",
    "reindex_done": (
        "✅ Re-index finished in {seconds} s: {total} photos ({added} added, {removed} removed, "
        "{unchanged} unchanged, {skipped} skipped). The new index is now in use."
    ),
    "reindex_failed": ("❌ Re-index failed: {error}\nThe previous index is still in use."),
    "model_unavailable": "The recognition model is not available on the server right now.",
    "index_broken": "The index on the server is damaged or outdated; an admin should run /reindex.",
    "error": "Sorry, something went wrong while handling your message. Please try again later.",
}

RU: dict[str, str] = {
    "start": (
        "👋 Я определяю вид животного на фото и нахожу похожие фотографии в своей коллекции.\n\n"
        "Пришлите фото (как фотографию или как файл-изображение), и я отвечу, какой это вид, "
        "насколько я уверен, и пришлю альбом самых похожих фото.\n\n"
        "Все команды: /help."
    ),
    "help": (
        "<b>Как пользоваться</b>\n"
        "• Пришлите фото: вид + похожие фото.\n"
        "• /classify: только вид и топ-5 вероятностей.\n"
        "• /similar: только похожие фото.\n"
        "• /similar <i>Canis lupus</i>: похожие фото только этого вида "
        "(или рода, семейства, отряда: /similar <i>Felidae</i>).\n"
        "• /species: виды в коллекции.\n"
        "• /stats: размер коллекции, модель, дата индекса.\n"
        "• Администраторам: /reindex (перестроить индекс), /add <i>Научное название</i> "
        "(с фото), /remove и /undo (ответом на фото из альбома), /review (исправления "
        "пользователей), /duplicates, /suspicious.\n\n"
        "/classify и /similar можно написать в подписи к фото или ответом на сообщение с фото "
        "(так они работают и в группах)."
    ),
    "cmd_start": "Что умеет бот",
    "cmd_help": "Как пользоваться ботом",
    "cmd_classify": "Вид на фото (подпись или ответ)",
    "cmd_similar": "Похожие фото (подпись или ответ)",
    "cmd_species": "Виды в коллекции",
    "cmd_stats": "Статистика коллекции",
    "cmd_reindex": "Перестроить индекс (админы)",
    "text_hint": "Пришлите фото животного, и я скажу, какой это вид. Список команд: /help.",
    "need_photo": (
        "Отправьте /{command} в подписи к фото или ответом /{command} на сообщение с фото."
    ),
    "species_result": "🐾 <b><i>{species}</i></b>: уверенность {confidence}",
    "not_sure": "🤔 Я не уверен, какой это вид. Ближайшие варианты:",
    "no_animal": "🤔 Я не вижу на этом фото животного, поэтому никого не называю.",
    "candidates": "Другие варианты:",
    "candidate_line": "• <i>{species}</i>: {probability}",
    "probabilities": "Топ вероятностей:",
    "hedge_high": "Почти наверняка",
    "hedge_mid": "Вероятно,",
    "hedge_low": "Возможно,",
    "species_answer": "🐾 {hedge} <b><i>{species}</i></b> ({confidence})",
    "rank_answer": (
        "🐾 {hedge} животное из {rank} <b><i>{taxon}</i></b> ({confidence}), "
        "скорее всего <i>{species}</i> ({species_confidence})"
    ),
    "rank_genus": "рода",
    "rank_family": "семейства",
    "rank_order": "отряда",
    "rank_class": "класса",
    "fallback": "Догадка ImageNet (общая модель, не из этой коллекции): {name}, {confidence}",
    "album_caption": "<i>{species}</i>: сходство {similarity}",
    "similar_header": "Самые похожие фото:",
    "no_similar": "Похожих фото в коллекции не нашлось.",
    "unknown_species": (
        "Вида «{query}» нет в коллекции.{suggestions}\n"
        "Список видов: /species, затем /similar <i>Научное название</i>."
    ),
    "did_you_mean": " Возможно, вы имели в виду: {names}?",
    "species_list": "<b>Видов в коллекции: {count}</b>\n{names}",
    "stats": (
        "<b>Коллекция</b>\n"
        "Фото: {total}\n"
        "Видов: {species}\n"
        "Модель: {model}\n"
        "Индекс построен: {created}"
    ),
    "not_indexed": "Коллекция ещё не проиндексирована, поэтому искать пока негде.",
    "not_indexed_admin": "Вы администратор: выполните /reindex, чтобы построить индекс.",
    "not_indexed_user": "Попросите администратора бота построить индекс.",
    "not_image": "Этот файл не изображение. Пришлите фото (JPEG, PNG, WebP, ...).",
    "broken_image": "Не удалось прочитать изображение: файл повреждён или не поддерживается.",
    "too_big": "Файл слишком большой ({size}); я могу скачивать файлы до 20 МБ.",
    "image_too_large": (
        "Изображение слишком большое для обработки (слишком много пикселей или байт)."
    ),
    "too_small": "Изображение слишком маленькое, чтобы что-то распознать; пришлите фото крупнее.",
    "animated": "Анимации, видео и стикеры не поддерживаются. Пришлите обычное фото.",
    "reindex_denied": "Извините, перестраивать индекс могут только администраторы бота.",
    "insight_denied": "Извините, проверять коллекцию могут только администраторы бота.",
    "insight_busy": "Проверка коллекции уже идёт; дождитесь, пожалуйста, её окончания.",
    "insight_started": "🔎 Просматриваю всю коллекцию…",
    "insight_failed": "Проверка коллекции не удалась; подробности в журнале бота.",
    "duplicates_found": "Групп почти одинаковых фото: {count} (всего фото: {total}). Главные:",
    "suspicious_found": (
        "Фото, соседи которых в основном подписаны иначе: {count} (всего фото: {total}). "
        "Главные (сначала само фото, затем соседи); ответьте /remove на фото из альбома, "
        "чтобы убрать его:"
    ),
    "reindex_busy": "Переиндексация уже идёт; дождитесь, пожалуйста, её окончания.",
    "reindex_started": "🔄 Переиндексация началась…",
    "reindex_progress": "🔄 Переиндексация: {percent}% ({done}/{total} фото, {rate} фото/с)",
    "reindex_done": (
        "✅ Переиндексация завершена за {seconds} с: {total} фото (добавлено {added}, удалено "
        "{removed}, без изменений {unchanged}, пропущено {skipped}). Новый индекс уже работает."
    ),
    "reindex_failed": "❌ Переиндексация не удалась: {error}\nПрежний индекс продолжает работать.",
    "model_unavailable": "Модель распознавания сейчас недоступна на сервере.",
    "index_broken": (
        "Индекс на сервере повреждён или устарел; администратору нужно выполнить /reindex."
    ),
    "error": "Извините, при обработке сообщения что-то пошло не так. Попробуйте позже.",
}

EN.update(curation_strings.EN)
RU.update(curation_strings.RU)

TABLES: dict[Lang, dict[str, str]] = {"en": EN, "ru": RU}


def lang_of(user: User | None) -> Lang:
    """Russian for users whose Telegram client is set to Russian, English for everyone else."""
    code = (user.language_code or "") if user else ""
    return "ru" if code.lower().startswith("ru") else "en"


def t(lang: Lang, key: str, **values: object) -> str:
    """The `key` message in `lang`, with `values` HTML-escaped (strings) and substituted."""
    template = TABLES[lang].get(key) or EN[key]
    safe = {k: html.escape(v) if isinstance(v, str) else v for k, v in values.items()}
    return template.format(**safe)


def raw(lang: Lang, key: str, **values: object) -> str:
    """Like `t` but without escaping, for values that are already HTML (e.g. joined lines)."""
    template = TABLES[lang].get(key) or EN[key]
    return template.format(**values)
