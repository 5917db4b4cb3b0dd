"""Turning engine results into reply texts (Telegram HTML) in the user's language.

Kept apart from the handlers so the wording of every answer can be read and tested in one place.
"""

from __future__ import annotations

import html
from datetime import datetime
from functools import lru_cache
from typing import Any

from bot.i18n import Lang, raw, t
from bot.paging import CAPTION_LIMIT, fit_html


@lru_cache(maxsize=8)
def _percent_patterns(lang: str) -> tuple[str, str]:
    """The language's own percent pattern (Babel/CLDR: '#,##0 %' in Russian, '#,##0%' in English),
    as (whole, one decimal)."""
    from babel import Locale

    whole = Locale.parse(lang).percent_formats[None].pattern.split(";")[0]
    return whole, whole.replace("#,##0", "#,##0.0", 1)


def percent(value: float, lang: Lang = "en") -> str:
    """0.873 -> '87%' ('87 %' in Russian); under 10% one decimal ('5.1%', '5,1 %') so small
    candidates stay distinct. Numbers follow the user's language (Babel)."""
    from babel.numbers import format_percent

    share = max(0.0, min(1.0, float(value)))
    whole, decimal = _percent_patterns(lang)
    return format_percent(share, decimal if share < 0.1 else whole, locale=lang)


#: Candidates less probable than this are not listed.
MIN_SHOWN_PROBABILITY = 0.05
#: A shown probability never reaches certainty.
MAX_SHOWN_PROBABILITY = 0.99


def probability_percent(value: float, lang: Lang = "en") -> str:
    """A probability for the species answer: like `percent`, capped at 99% (never "100%")."""
    return percent(min(float(value), MAX_SHOWN_PROBABILITY), lang)


def hedge(lang: Lang, probability: float) -> str:
    """Calibrated words: "almost certainly" >= 0.9, "probably" >= 0.7, "possibly" below."""
    key = "hedge_high" if probability >= 0.9 else "hedge_mid" if probability >= 0.7 else "hedge_low"
    return t(lang, key)


def _candidates(lang: Lang, probabilities: dict[str, float], skip: str | None) -> list[str]:
    return [
        t(lang, "candidate_line", species=name, probability=probability_percent(p, lang))
        for name, p in probabilities.items()
        if name != skip and p >= MIN_SHOWN_PROBABILITY
    ]


def _fallback_line(lang: Lang, fallback: dict[str, Any] | None) -> list[str]:
    if not fallback:
        return []
    common = fallback.get("common_name") or ""
    species = fallback.get("species") or ""
    both = common and species and common != species
    name = f"{common} ({species})" if both else common or species
    if not name:
        return []
    return [
        "",
        t(lang, "fallback", name=name, confidence=percent(fallback.get("confidence", 0), lang)),
    ]


def _headline(lang: Lang, result: dict[str, Any]) -> str | None:
    """The answer's first line, or None when it is "not sure"."""
    species = result.get("species")
    rank = result.get("rank")
    calibrated = bool(result.get("calibrated"))
    if species is not None and not calibrated:
        return t(
            lang,
            "species_result",
            species=species,
            confidence=probability_percent(result["confidence"], lang),
        )
    if species is not None:
        p = float(result["confidence"])
        return t(
            lang,
            "species_answer",
            hedge=hedge(lang, p),
            species=species,
            confidence=probability_percent(p, lang),
        )
    if rank and rank != "species" and result.get("taxon"):
        p = float(result.get("taxon_confidence") or 0.0)
        likely = result.get("likely_species") or ""
        probabilities = result.get("probabilities") or {}
        return t(
            lang,
            "rank_answer",
            hedge=hedge(lang, p),
            rank=t(lang, f"rank_{rank}"),
            taxon=str(result["taxon"]),
            confidence=probability_percent(p, lang),
            species=likely,
            species_confidence=probability_percent(float(probabilities.get(likely, 0.0)), lang),
        )
    return None


def classification_text(lang: Lang, result: dict[str, Any], *, all_probabilities: bool) -> str:
    """The species answer in calibrated words, or 'not sure' with the closest candidates.

    A species answer ("Probably <i>Felis catus</i> (78%)"); when the species is uncertain but its
    candidates share a genus, family or order, an answer at that rank; else "not sure". The
    words follow the calibrated probability (almost certainly >= 90%, probably >= 70%, possibly
    below); no probability is shown as 100% and candidates under 5% are not listed.
    `all_probabilities` (for /classify) lists the top-5 probabilities instead of "other
    candidates"; with a plain photo, the runner-ups are listed as "other candidates".
    """
    species = result.get("species")
    probabilities: dict[str, float] = dict(result.get("probabilities") or {})
    headline = _headline(lang, result)
    lines: list[str]
    if result.get("no_animal"):  # its nearest photos are animals whatever it shows: no names
        return t(lang, "no_animal")
    if headline is None:
        lines = [t(lang, "not_sure"), *_candidates(lang, probabilities, None)]
        lines += _fallback_line(lang, result.get("fallback"))
        return "\n".join(lines)
    lines = [headline]
    if all_probabilities:
        rest = _candidates(lang, probabilities, None)
        header = "probabilities"
    else:
        rest = _candidates(lang, probabilities, species or result.get("likely_species"))
        header = "candidates"
    if rest:
        lines += ["", t(lang, header), *rest]
    return "\n".join(lines)


#: Longest author credit shown in a caption (the caption limit is 1024 characters).
MAX_CREDIT = 200


def attribution(hit: dict[str, Any]) -> str | None:
    """'© Author · CC BY-SA 4.0' for a photo under CC BY or CC BY-SA (which require credit)."""
    licence = " ".join(str(hit.get("license") or "").split())
    words = licence.upper().replace("-", " ").split()
    if words[:2] != ["CC", "BY"] or "NC" in words or "ND" in words:
        return None
    author = " ".join(str(hit.get("author") or "").split()) or "unknown author"
    if len(author) > MAX_CREDIT:
        author = author[: MAX_CREDIT - 1] + "…"
    return f"© {author} · {licence[:40]}"


def album_caption(lang: Lang, hit: dict[str, Any]) -> str:
    """One album photo's caption: its species, how similar it is, and the credit a CC BY(-SA)
    licence asks for."""
    similarity = percent(float(hit.get("similarity", 0.0)), lang)
    text = t(lang, "album_caption", species=str(hit.get("class", "")), similarity=similarity)
    if hit.get("common"):
        text = f"{html.escape(str(hit['common']))} — {text}"
    credit = attribution(hit)
    if credit:
        text += "\n" + html.escape(credit)
    return fit_html(text, CAPTION_LIMIT)


def _when(created_at: object) -> str:
    if not created_at:
        return "—"
    try:
        moment = datetime.fromisoformat(str(created_at))
    except ValueError:
        return str(created_at)
    suffix = " UTC" if moment.utcoffset() is not None and not moment.utcoffset() else ""
    return moment.strftime("%Y-%m-%d %H:%M") + suffix


def stats_text(lang: Lang, stats: dict[str, Any]) -> str:
    return t(
        lang,
        "stats",
        total=int(stats.get("total_images", 0)),
        species=int(stats.get("species_count", 0)),
        model=str(stats.get("model", "?")),
        created=_when(stats.get("created_at")),
    )


def species_list_text(lang: Lang, names: list[str]) -> str:
    lines = "\n".join(f"• <i>{html.escape(name)}</i>" for name in names)
    return raw(lang, "species_list", count=len(names), names=lines)


def unknown_species_text(lang: Lang, query: str, suggestions: list[str]) -> str:
    hint = ""
    if suggestions:
        names = ", ".join(f"<i>{html.escape(name)}</i>" for name in suggestions)
        hint = raw(lang, "did_you_mean", names=names)
    return raw(lang, "unknown_species", query=html.escape(query), suggestions=hint)
