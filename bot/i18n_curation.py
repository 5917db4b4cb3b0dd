"""User-facing strings of the curator's tools (/add, /remove, /undo, /review, feedback, browsing,
fair share), merged into `bot.i18n`'s tables. Same rules: Telegram HTML, values escaped by `t`."""

from __future__ import annotations

EN: dict[str, str] = {
    "cmd_add": "Add a photo to the collection (admins)",
    "cmd_remove": "Remove an album photo (admins)",
    "cmd_undo": "Undo your last change (admins)",
    "cmd_review": "Review users' corrections (admins)",
    "admin_only": "Sorry, only the bot's admins may change the collection.",
    "add_need_photo": (
        "Send /add <i>Scientific name</i> as the caption of a photo, or as a reply to a photo."
    ),
    "add_need_name": "Name the species: /add <i>Canis lupus</i>.",
    "bad_name": (
        "“{name}” is not a valid scientific name. Use a genus and species, e.g. /add "
        "<i>Canis lupus</i>."
    ),
    "added": "✅ Added to <i>{species}</i>: {count} photo(s) of it now. /undo takes it back.",
    "add_unknown": "There is no species <i>{name}</i> in the collection yet.",
    "add_as_new": "➕ Add as new: {name}",
    "add_did_you_mean": "Did you mean {name}?",
    "cancel": "✖️ Cancel",
    "cancelled": "Cancelled; nothing was added.",
    "busy": "A re-index is running; please try again when it has finished.",
    "add_failed": "❌ The photo was not added: {error}",
    "remove_need_reply": "Reply /remove to one of my album photos to take it out of the collection.",
    "photo_gone": "That photo is no longer in the collection.",
    "removed": (
        "🗑 Removed a photo of <i>{species}</i> ({count} left). It is kept in the trash: /undo "
        "within 10 minutes restores it."
    ),
    "remove_failed": "❌ The photo was not removed: {error}",
    "nothing_to_undo": "Nothing to undo: you made no change in the last 10 minutes.",
    "undone_remove": "↩️ Restored the photo of <i>{species}</i> ({count} now).",
    "undone_add": "↩️ Took back the photo added to <i>{species}</i> ({count} left).",
    "undo_failed": "❌ Could not undo: {error}",
    "audit_summary": "Curation: {added} added, {removed} removed, {undone} undone (last: {last})",
    "feedback_right": "✅ Right",
    "feedback_wrong": "❌ Wrong",
    "feedback_thanks": "Thank you!",
    "feedback_pick": "Which species is it? Pick one, or reply to this message with its name.",
    "feedback_already": "Your answer was already recorded, thank you.",
    "feedback_noted": "Thank you! An admin will review “{species}”.",
    "feedback_noted_text": "Thank you! An admin will review <i>{species}</i>.",
    "button_expired": "This button has expired.",
    "already_done": "Already done.",
    "not_yours": "Only the person who sent the photo can answer this.",
    "review_empty": "No corrections are waiting for review.",
    "review_header": "{count} correction(s) waiting; the oldest {shown}:",
    "review_item": "The bot said <i>{predicted}</i>; the user says <i>{correction}</i>.",
    "review_accept": "✅ Add as {species}",
    "review_reject": "🗑 Reject",
    "review_rejected": "Rejected.",
    "review_done": "Already reviewed.",
    "review_photo_gone": "Telegram no longer has this photo; the correction was rejected.",
    "browse_more": "➡️ More",
    "browse_species": "🐾 Only {species}",
    "browse_genus": "🧬 Same genus",
    "browse_none": "No more similar photos.",
    "browse_already": "Already shown.",
    "queued": "⏳ You have photos in progress; this one is in the queue.",
    "unknown_name_in_reply": "Reply with a scientific name, e.g. <i>Canis lupus</i>.",
}

RU: dict[str, str] = {
    "cmd_add": "Добавить фото в коллекцию (админы)",
    "cmd_remove": "Убрать фото из альбома (админы)",
    "cmd_undo": "Отменить последнее изменение (админы)",
    "cmd_review": "Проверить исправления (админы)",
    "admin_only": "Извините, менять коллекцию могут только администраторы бота.",
    "add_need_photo": (
        "Отправьте /add <i>Научное название</i> в подписи к фото или ответом на сообщение с фото."
    ),
    "add_need_name": "Укажите вид: /add <i>Canis lupus</i>.",
    "bad_name": (
        "«{name}» не похоже на научное название. Укажите род и вид, например /add "
        "<i>Canis lupus</i>."
    ),
    "added": "✅ Добавлено в <i>{species}</i>: теперь фото этого вида: {count}. /undo отменит.",
    "add_unknown": "Вида <i>{name}</i> в коллекции ещё нет.",
    "add_as_new": "➕ Добавить новый вид: {name}",
    "add_did_you_mean": "Может быть, {name}?",
    "cancel": "✖️ Отмена",
    "cancelled": "Отменено; ничего не добавлено.",
    "busy": "Идёт переиндексация; попробуйте, когда она закончится.",
    "add_failed": "❌ Фото не добавлено: {error}",
    "remove_need_reply": "Ответьте /remove на фото из моего альбома, чтобы убрать его.",
    "photo_gone": "Этого фото уже нет в коллекции.",
    "removed": (
        "🗑 Фото <i>{species}</i> убрано (осталось {count}). Оно в корзине: /undo в течение "
        "10 минут вернёт его."
    ),
    "remove_failed": "❌ Фото не убрано: {error}",
    "nothing_to_undo": "Отменять нечего: за последние 10 минут вы ничего не меняли.",
    "undone_remove": "↩️ Фото <i>{species}</i> возвращено (теперь {count}).",
    "undone_add": "↩️ Добавленное фото <i>{species}</i> убрано (осталось {count}).",
    "undo_failed": "❌ Не удалось отменить: {error}",
    "audit_summary": "Правки: добавлено {added}, убрано {removed}, отменено {undone} ({last})",
    "feedback_right": "✅ Верно",
    "feedback_wrong": "❌ Неверно",
    "feedback_thanks": "Спасибо!",
    "feedback_pick": "Какой это вид? Выберите или ответьте на это сообщение названием.",
    "feedback_already": "Ваш ответ уже учтён, спасибо.",
    "feedback_noted": "Спасибо! Администратор проверит «{species}».",
    "feedback_noted_text": "Спасибо! Администратор проверит <i>{species}</i>.",
    "button_expired": "Эта кнопка устарела.",
    "already_done": "Уже сделано.",
    "not_yours": "Ответить может только тот, кто прислал фото.",
    "review_empty": "Исправлений на проверку нет.",
    "review_header": "Ждут проверки: {count}; самые старые {shown}:",
    "review_item": "Бот сказал <i>{predicted}</i>; пользователь: <i>{correction}</i>.",
    "review_accept": "✅ Добавить как {species}",
    "review_reject": "🗑 Отклонить",
    "review_rejected": "Отклонено.",
    "review_done": "Уже проверено.",
    "review_photo_gone": "У Telegram больше нет этого фото; исправление отклонено.",
    "browse_more": "➡️ Ещё",
    "browse_species": "🐾 Только {species}",
    "browse_genus": "🧬 Тот же род",
    "browse_none": "Больше похожих фото нет.",
    "browse_already": "Уже показано.",
    "queued": "⏳ Ваши фото ещё обрабатываются; это фото в очереди.",
    "unknown_name_in_reply": "Ответьте научным названием, например <i>Canis lupus</i>.",
}
