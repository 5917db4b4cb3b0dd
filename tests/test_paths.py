"""core.paths.safe_join: a stored relative path never leads outside its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import KontrolError
from core.paths import UnsafePathError, safe_join

ROOT = Path("/srv/collection")


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("Canis_lupus/w1.jpg", "Canis_lupus/w1.jpg"),
        ("Canis_lupus/./w1.jpg", "Canis_lupus/w1.jpg"),
        ("Canis_lupus/sub/../w1.jpg", "Canis_lupus/w1.jpg"),
        ("a/b/../../c.jpg", "c.jpg"),
        ("..hidden/x.jpg", "..hidden/x.jpg"),  # a name starting with dots is not `..`
        ("weird\\name.jpg", "weird\\name.jpg"),  # a backslash in a POSIX name is kept
        (Path("Ursus_arctos/b1.jpg"), "Ursus_arctos/b1.jpg"),
    ],
)
def test_inside_paths_are_joined(rel: str, expected: str) -> None:
    assert safe_join(ROOT, rel) == ROOT / expected
    assert safe_join(str(ROOT), rel) == ROOT / expected


@pytest.mark.parametrize(
    ("rel", "words"),
    [
        ("../secrets.env", "outside"),
        ("Canis_lupus/../../etc/passwd", "outside"),
        ("..", "outside"),
        ("a/../..", "outside"),
        ("..\\..\\etc\\passwd", "outside"),
        ("/etc/passwd", "absolute"),
        ("//server/share/x.jpg", "absolute"),
        ("C:\\Windows\\win.ini", "absolute"),
        ("C:relative.jpg", "absolute"),
        ("\\\\server\\share\\x.jpg", "absolute"),
        ("", "empty"),
        (".", "empty"),
        ("a/..", "outside"),
        ("ok.jpg\0.png", "NUL"),
    ],
)
def test_escaping_paths_are_refused(rel: str, words: str) -> None:
    with pytest.raises(UnsafePathError, match=words) as info:
        safe_join(ROOT, rel)
    assert isinstance(info.value, KontrolError)
    assert str(info.value).endswith(".")


def test_links_inside_the_root_are_not_resolved(tmp_path: Path) -> None:
    # The scan follows links to folders kept elsewhere; their files must stay reachable.
    elsewhere = tmp_path / "disk2" / "Ursus_arctos"
    elsewhere.mkdir(parents=True)
    (elsewhere / "b1.jpg").write_bytes(b"x")
    root = tmp_path / "coll"
    root.mkdir()
    (root / "Ursus_arctos").symlink_to(elsewhere)
    path = safe_join(root, "Ursus_arctos/b1.jpg")
    assert path == root / "Ursus_arctos" / "b1.jpg" and path.read_bytes() == b"x"
