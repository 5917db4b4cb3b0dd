"""kontrol.demo.rcc against synthetic Qt resource files written by a tiny writer below (v1-v3)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from core.errors import KontrolError
from kontrol.demo.rcc import RccArchive, RccError, iter_rcc

FILES = {
    "a.txt": b"plain text",
    "dir/b.bin": bytes(range(256)) * 40,
    "dir/sub/c.webp": b"RIFF" + b"\x00" * 1000,
    "dir/sub/empty": b"",
    "dir/ünï.txt": "ünï content".encode(),
}
COMPRESSED = {"dir/b.bin", "dir/sub/c.webp"}


def write_rcc(
    files: dict[str, bytes], *, version: int = 3, compressed: set[str] = frozenset()
) -> bytes:
    """Serialise `files` as a Qt rcc: header, data, names, tree (children contiguous, BFS)."""
    tree: dict = {}
    for path, data in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = data

    data_blob, names_blob, name_offsets = bytearray(), bytearray(), {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            encoded = name.encode("utf-16-be")
            name_offsets[name] = len(names_blob)
            names_blob.extend(struct.pack(">HI", len(encoded) // 2, 0) + encoded)
        return name_offsets[name]

    # BFS: nodes[i] = (name, content, path); directories get contiguous child ranges.
    nodes: list[tuple[str, object, str]] = [("", tree, "")]
    first_child: dict[int, int] = {}
    i = 0
    while i < len(nodes):
        _, content, path = nodes[i]
        if isinstance(content, dict):
            first_child[i] = len(nodes)
            for name in sorted(content):
                nodes.append(
                    (name, content[name], f"{path}{name}" if not path else f"{path}/{name}")
                )
        i += 1

    tree_blob = bytearray()
    for index, (name, content, path) in enumerate(nodes):
        name_off = name_offset(name) if index else 0
        if isinstance(content, dict):
            tree_blob += struct.pack(">IHII", name_off, 2, len(content), first_child[index])
        else:
            payload = content
            flags = 0
            if path in compressed:
                payload = struct.pack(">I", len(content)) + zlib.compress(content)
                flags = 1
            data_off = len(data_blob)
            data_blob += struct.pack(">I", len(payload)) + payload
            tree_blob += struct.pack(">IHHHI", name_off, flags, 0, 0, data_off)
        if version >= 2:
            tree_blob += struct.pack(">Q", 1_700_000_000_000)

    header_size = 24 if version >= 3 else 20
    data_off = header_size
    names_off = data_off + len(data_blob)
    tree_off = names_off + len(names_blob)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0)
    return bytes(header + data_blob + names_blob + tree_blob)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_roundtrip_all_versions(version: int) -> None:
    archive = RccArchive(write_rcc(FILES, version=version, compressed=COMPRESSED))
    assert archive.version == version
    assert sorted(archive.paths()) == sorted(FILES)
    assert dict(archive.items()) == FILES
    assert {e.path for e in archive.entries if e.compressed} == COMPRESSED


def test_read_by_path_and_contains() -> None:
    archive = RccArchive(write_rcc(FILES, compressed=COMPRESSED))
    assert archive.read("dir/sub/c.webp") == FILES["dir/sub/c.webp"]
    assert archive.read("/a.txt") == b"plain text"  # Qt-style leading slash accepted
    assert "dir/b.bin" in archive and "nope" not in archive
    assert len(archive) == len(FILES)
    with pytest.raises(RccError, match="no file"):
        archive.read("dir/missing.txt")


def test_iter_rcc_from_path_and_bytes(tmp_path: Path) -> None:
    raw = write_rcc(FILES, version=2, compressed=COMPRESSED)
    path = tmp_path / "x.rcc"
    path.write_bytes(raw)
    assert dict(iter_rcc(path)) == FILES
    assert dict(iter_rcc(str(path))) == FILES
    assert dict(iter_rcc(raw)) == FILES


def test_error_types() -> None:
    assert issubclass(RccError, KontrolError)
    assert issubclass(RccError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RccError, match="Cannot read"):
        RccArchive.open(tmp_path / "absent.rcc")


def _patch(raw: bytes, offset: int, fmt: str, *values: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


def _tree_offset(raw: bytes) -> int:
    return struct.unpack_from(">I", raw, 8)[0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "qres"),
        (b"PK\x03\x04" + b"\x00" * 40, "qres"),
        (b"qres" + struct.pack(">IIII", 9, 24, 24, 24) + b"\x00" * 8, "version 9"),
        (b"qres\x00\x00\x00\x03\x00\x00", "cut short"),
    ],
)
def test_bad_header(raw: bytes, message: str) -> None:
    with pytest.raises(RccError, match=message):
        RccArchive(raw)


def test_offsets_outside_file() -> None:
    raw = write_rcc(FILES)
    with pytest.raises(RccError, match="tree offset"):
        RccArchive(_patch(raw, 8, ">I", len(raw) + 10))
    with pytest.raises(RccError, match="names offset"):
        RccArchive(_patch(raw, 16, ">I", 3))


def test_truncated_file_is_refused() -> None:
    raw = write_rcc(FILES, compressed=COMPRESSED)
    with pytest.raises(RccError):
        RccArchive(raw[:-5])  # last tree node cut


def test_data_truncated() -> None:
    raw = write_rcc({"big.bin": b"x" * 5000}, version=1)
    archive_raw = bytearray(raw)
    struct.pack_into(">I", archive_raw, 20, 10**6)  # entry size now runs past the end
    archive = RccArchive(bytes(archive_raw))
    with pytest.raises(RccError, match="cut short"):
        archive.read("big.bin")


def test_damaged_zlib_stream() -> None:
    raw = bytearray(write_rcc({"z.bin": b"hello " * 500}, compressed={"z.bin"}))
    raw[24 + 4 + 4 + 2 : 24 + 4 + 4 + 10] = b"\xff" * 8  # scribble over the deflate data
    with pytest.raises(RccError, match=r"damaged|wrong length"):
        RccArchive(bytes(raw)).read("z.bin")


def test_wrong_uncompressed_length() -> None:
    raw = write_rcc({"z.bin": b"hello " * 500}, compressed={"z.bin"})
    raw = _patch(raw, 24 + 4, ">I", 7)  # claims 7 bytes
    with pytest.raises(RccError, match="wrong length"):
        RccArchive(raw).read("z.bin")


def test_zstd_entry_reports_unsupported() -> None:
    raw = write_rcc({"z.bin": b"data"})
    tree = _tree_offset(raw)
    raw = _patch(raw, tree + 22 + 4, ">H", 4)  # flag the only file as zstd
    with pytest.raises(RccError, match="zstd"):
        RccArchive(raw).read("z.bin")


def test_loop_in_tree() -> None:
    raw = write_rcc({"d/f": b"1"}, version=1)
    tree = _tree_offset(raw)
    raw = _patch(raw, tree + 14 + 10, ">I", 0)  # directory "d" lists the root as its child
    with pytest.raises(RccError, match="loop"):
        RccArchive(raw)


def test_child_index_out_of_range() -> None:
    raw = write_rcc({"f": b"1"}, version=2)
    tree = _tree_offset(raw)
    raw = _patch(raw, tree + 10, ">I", 10_000)
    with pytest.raises(RccError, match="outside"):
        RccArchive(raw)


def test_name_offset_out_of_range() -> None:
    raw = write_rcc({"f": b"1"}, version=3)
    tree = _tree_offset(raw)
    raw = _patch(raw, tree + 22, ">I", 10_000)
    with pytest.raises(RccError, match="name"):
        RccArchive(raw)


def test_root_must_be_directory() -> None:
    raw = write_rcc({"f": b"1"}, version=3)
    raw = _patch(raw, _tree_offset(raw) + 4, ">H", 0)
    with pytest.raises(RccError, match="root"):
        RccArchive(raw)


def test_messages_are_user_readable() -> None:
    with pytest.raises(RccError) as info:
        RccArchive(b"not a resource file at all", name="x.rcc")
    assert str(info.value).startswith("x.rcc is not a valid Qt resource file")
