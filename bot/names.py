"""Names people know: an optional `names.csv` in the collection root gives each species its
common name per language (columns `scientific_name,en,ru`).

The species answer gets a line with the common name in the user's language and a link to
Wikipedia in that language; album captions show the common name beside the scientific one. The
file is re-read when it changes (mtime), so editing it needs no restart; a missing or broken file
simply means no common names.
"""

from __future__ import annotations

import csv
import html
import logging
import threading
from pathlib import Path
from urllib.parse import quote

from bot.i18n import Lang
from core.collection import normalize_species

log = logging.getLogger(__name__)

NAMES_FILE = "names.csv"
_MAX_BYTES = 5 * 1024 * 1024
_MAX_NAME = 100


class CommonNames:
    """`species -> {lang: common name}` from `<root>/names.csv`, cached by modification time."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / NAMES_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._names: dict[str, dict[str, str]] = {}

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._names = self._read() if stat.st_size <= _MAX_BYTES else {}
                self._stamp = stamp
            return self._names

    def _read(self) -> dict[str, dict[str, str]]:
        names: dict[str, dict[str, str]] = {}
        try:
            with self.path.open(encoding="utf-8-sig", newline="") as handle:
                for row in csv.DictReader(handle):
                    key = normalize_species(row.get("scientific_name") or "")
                    if not key:
                        continue
                    names[key] = {
                        lang: " ".join(str(value).split())[:_MAX_NAME]
                        for lang, value in row.items()
                        if lang in ("en", "ru") and value and value.strip()
                    }
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("Ignoring unreadable %s: %s", self.path, exc)
            return {}
        return names

    def get(self, species: str | None, lang: Lang) -> str | None:
        """The common name of `species` in `lang` (blocking: may read the file)."""
        if not species:
            return None
        return self._load().get(normalize_species(species), {}).get(lang)


def wikipedia_url(lang: Lang, title: str) -> str:
    return f"https://{lang}.wikipedia.org/wiki/{quote(title.replace(' ', '_'))}"


def name_line(lang: Lang, species: str | None, names: CommonNames) -> str:
    """'Red fox · Wikipedia' (HTML, linked) for the species answer, or '' without a name."""
    common = names.get(species, lang)
    if not common or not species:
        return ""
    url = wikipedia_url(lang, common)
    return f'{html.escape(common)} · <a href="{html.escape(url)}">Wikipedia</a>'


def with_common_names(hits: list[dict], lang: Lang, names: CommonNames | None) -> list[dict]:
    """The hits, each with its `common` name in `lang` where names.csv has one (blocking)."""
    if names is None:
        return hits
    return [{**hit, "common": names.get(hit.get("class"), lang)} for hit in hits]
