"""What a person looks at after `kontrol clusters`: one HTML page and a PNG contact sheet per group.

Each sheet is a grid of thumbnails captioned with the photo's species and path (and its similarity
where one applies). Suspicious photos show the photo (blue border) followed by its nearest
neighbours, green when they carry the photo's own species and red otherwise. Only the first
`max_sheets` groups of each kind get a picture; the JSON lists everything.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from core.insight import Insight
from kontrol import sheets

THUMB = 150
BORDER = 5
GAP = 8
CAPTION_H = 50
TITLE_H = 28
COLUMNS = 6
QUERY = (40, 90, 200)
SAME = (34, 160, 60)
OTHER = (210, 40, 40)
NEUTRAL = (150, 150, 150)
TEXT = (20, 20, 20)
MAX_TILES = 36


@dataclass(frozen=True)
class Tile:
    """One thumbnail on a sheet."""

    path: Path
    species: str
    rel: str
    note: str = ""
    colour: tuple[int, int, int] = NEUTRAL


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text, font=font) > width:
        text = text[1:]  # keep the end: a path's file name matters most
    return "…" + text


def contact_sheet(path: Path, title: str, tiles: Sequence[Tile], columns: int = COLUMNS) -> Path:
    """PNG grid of captioned thumbnails (species, path, note) under a title line."""
    tiles = list(tiles)[:MAX_TILES]
    font, bold = sheets.font(12), sheets.font(14)
    cell_w, cell_h = THUMB + 2 * BORDER, THUMB + 2 * BORDER + CAPTION_H
    cols = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // cols))
    width = max(GAP + cols * (cell_w + GAP), 420)
    sheet = Image.new("RGB", (width, TITLE_H + rows * (cell_h + GAP)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((GAP, 6), _fit(draw, title, bold, width - 2 * GAP), fill=TEXT, font=bold)
    for n, tile in enumerate(tiles):
        x = GAP + (n % cols) * (cell_w + GAP)
        y = TITLE_H + (n // cols) * (cell_h + GAP)
        draw.rectangle((x, y, x + cell_w - 1, y + THUMB + 2 * BORDER - 1), fill=tile.colour)
        sheet.paste(sheets.thumbnail(tile.path, THUMB), (x + BORDER, y + BORDER))
        ty = y + THUMB + 2 * BORDER + 2
        draw.text((x, ty), _fit(draw, tile.species, font, cell_w), fill=TEXT, font=font)
        draw.text((x, ty + 15), _fit(draw, tile.rel, font, cell_w), fill=TEXT, font=font)
        if tile.note:
            draw.text(
                (x, ty + 30), _fit(draw, tile.note, font, cell_w), fill=tile.colour, font=font
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path


def _tile(root: Path, member: dict[str, Any], note: str = "", colour=NEUTRAL) -> Tile:
    rel = str(member.get("path") or "")
    return Tile(root / rel, str(member.get("species")), rel, note, colour)


def _table(members: Sequence[dict[str, Any]], extra: str | None = None) -> str:
    head = "<tr><th>species</th><th>path</th><th>id</th>" + (
        f"<th>{html.escape(extra)}</th>" if extra else ""
    )
    rows = [head + "</tr>"]
    for m in members:
        cells = [m.get("species"), m.get("path"), m.get("id")]
        if extra:
            cells.append(m.get(extra))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(insight: Insight, root: Path, out: Path, max_sheets: int = 100) -> Path:
    """`out/index.html` plus `out/sheets/*.png`; returns the page's path.

    `root` is the collection root the stored relative paths point into (thumbnails)."""
    out.mkdir(parents=True, exist_ok=True)
    sheets = out / "sheets"
    parts: list[str] = []
    j = insight.to_json()

    def section(title: str, items: list[dict[str, Any]], what: str) -> None:
        parts.append(f"<h2 id='{what}'>{html.escape(title)} ({len(items)})</h2>")
        if len(items) > max_sheets:
            parts.append(
                f"<p>Pictures for the first {max_sheets}; the JSON lists all {len(items)}.</p>"
            )

    # Suspicious photos first: they are what a curator acts on.
    section("Suspicious labels", j["suspicious"], "suspicious")
    for n, s in enumerate(j["suspicious"]):
        if n >= max_sheets:
            break
        tiles = [_tile(root, s, f"label ({s['rank']}): {s['label']}", QUERY)]
        for nb in s["neighbours"]:
            same = nb.get("species") == s.get("species")
            tiles.append(
                _tile(root, nb, f"similarity {nb['similarity']:.3f}", SAME if same else OTHER)
            )
        title = (
            f"{s['path']}: neighbours say {s['rank']} {s['likely']} "
            f"({s['likely_share']:.0%} vs own {s['own_share']:.0%})"
        )
        png = contact_sheet(sheets / f"suspicious_{n:04d}.png", title, tiles)
        parts.append(
            f"<h3>{html.escape(title)}</h3><img src='sheets/{png.name}' alt='suspicious {n}'>"
        )
        parts.append(_table([s, *s["neighbours"]], "similarity"))

    section("Species split into distant groups", j["split_species"], "split")
    for n, sp in enumerate(j["split_species"]):
        if n >= max_sheets:
            break
        tiles = []
        palette = [QUERY, OTHER, SAME, (200, 140, 0), (120, 60, 160)]
        for pi, part in enumerate(sp["parts"]):
            for m in part["members"][: max(1, MAX_TILES // len(sp["parts"]))]:
                tiles.append(_tile(root, m, f"group {pi + 1}", palette[pi % len(palette)]))
        title = (
            f"{sp['species']}: {sp['groups']} groups, mean similarity between groups "
            f"{sp['mean_cross_similarity']} (best pair {sp['max_cross_similarity']})"
        )
        png = contact_sheet(sheets / f"split_{n:04d}.png", title, tiles)
        parts.append(f"<h3>{html.escape(title)}</h3><img src='sheets/{png.name}' alt='split'>")

    section("Near-duplicate groups", j["duplicate_groups"], "duplicates")
    for n, g in enumerate(j["duplicate_groups"]):
        if n >= max_sheets:
            break
        colour = OTHER if g["conflicting_labels"] else NEUTRAL
        tiles = [_tile(root, m, colour=colour) for m in g["members"]]
        title = (
            f"{g['size']} photos, similarity {g['min_link_similarity']}-{g['max_similarity']}"
            + (" - CONFLICTING LABELS" if g["conflicting_labels"] else "")
        )
        png = contact_sheet(sheets / f"duplicates_{n:04d}.png", title, tiles)
        parts.append(f"<h3>{html.escape(title)}</h3><img src='sheets/{png.name}' alt='dup'>")
        parts.append(_table(g["members"]))

    section("Clusters", j["clusters"], "clusters")
    for n, c in enumerate(j["clusters"]):
        if n >= max_sheets:
            break
        tiles = [
            _tile(root, m, f"to centre {m['similarity']:.3f}") for m in c["members"][:MAX_TILES]
        ]
        top = ", ".join(f"{k} ({v})" for k, v in list(c["species"].items())[:5])
        title = f"cluster {c['cluster']}: {c['size']} photos; {top}"
        png = contact_sheet(sheets / f"cluster_{n:04d}.png", title, tiles)
        parts.append(f"<h3>{html.escape(title)}</h3><img src='sheets/{png.name}' alt='cluster'>")

    summary = (
        f"<p>{insight.count} photos; {len(j['duplicate_groups'])} near-duplicate groups, "
        f"{len(j['suspicious'])} suspicious labels, {len(j['split_species'])} split species, "
        f"{len(j['clusters'])} clusters. Parameters: "
        f"<code>{html.escape(json.dumps(j['params']))}</code></p>"
        "<p><a href='#suspicious'>suspicious</a> · <a href='#split'>split species</a> · "
        "<a href='#duplicates'>duplicates</a> · <a href='#clusters'>clusters</a></p>"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>kontrol: collection insight"
        "</title><style>body{font-family:sans-serif;margin:1.5em}img{max-width:100%;"
        "border:1px solid #ccc}table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}</style></head><body>"
        "<h1>Collection insight</h1>" + summary + "".join(parts) + "</body></html>"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
