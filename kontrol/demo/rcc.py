"""Read Qt binary resource files (`.rcc`, format versions 1-3) without Qt.

The demo collection's photos ship inside such files (Debian's `gcompris-qt-data`), so a small,
strict reader lets us extract them with the standard library only.

Layout (all integers big-endian):

* header: ``qres``, u32 version, u32 tree offset, u32 data offset, u32 names offset,
  and from version 3 a u32 of overall flags;
* tree: nodes of 14 bytes (22 from version 2, which adds a u64 modification time):
  u32 name offset, u16 flags, then for a directory u32 child count and u32 first child index,
  otherwise u16 country, u16 language and u32 data offset; node 0 is the root;
* names: u16 length, u32 hash, then `length` UTF-16-BE code units;
* data: u32 size then the bytes; flag 1 = zlib with a u32 uncompressed-length prefix,
  flag 4 = zstd (version 3).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import KontrolError

MAGIC = b"qres"
SUPPORTED_VERSIONS = (1, 2, 3)

FLAG_COMPRESSED = 0x01
FLAG_DIRECTORY = 0x02
FLAG_COMPRESSED_ZSTD = 0x04

# A resource larger than this after decompression is refused: the demo's biggest is ~1 MB.
MAX_ENTRY_BYTES = 512 * 1024 * 1024


class RccError(KontrolError, ValueError):
    """The file is not a readable Qt resource file (bad magic, version or offsets)."""


@dataclass(frozen=True)
class RccEntry:
    """One file inside the archive; `data_offset` is relative to the data section."""

    path: str
    flags: int
    country: int
    language: int
    data_offset: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & (FLAG_COMPRESSED | FLAG_COMPRESSED_ZSTD))


class RccArchive:
    """A parsed `.rcc` file: the tree is read eagerly, file contents lazily via `read()`."""

    def __init__(self, data: bytes, *, name: str = "resource file") -> None:
        self._data = data
        self._name = name
        self.version, self._tree, self._payload, self._names, self.overall_flags = self._header()
        self._node_size = 14 if self.version == 1 else 22
        self._entries = self._walk()
        self._by_path: dict[str, RccEntry] = {}
        for entry in self._entries:
            self._by_path.setdefault(entry.path, entry)  # first locale variant wins

    @classmethod
    def open(cls, path: Path | str) -> RccArchive:
        """Read and parse an `.rcc` file from disk."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RccError(f"Cannot read resource file {path}: {exc.strerror or exc}.") from None
        return cls(data, name=path.name)

    # --- public API ---------------------------------------------------------------------------

    @property
    def entries(self) -> list[RccEntry]:
        """All file entries in tree order (directories are implied by the paths)."""
        return list(self._entries)

    def paths(self) -> list[str]:
        """Distinct file paths, `/`-separated, without a leading slash."""
        return list(self._by_path)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path.lstrip("/") in self._by_path

    def __len__(self) -> int:
        return len(self._by_path)

    def read(self, path: str | RccEntry) -> bytes:
        """The (decompressed) contents of one file; `RccError` if absent or damaged."""
        if isinstance(path, RccEntry):
            entry = path
        else:
            entry = self._by_path.get(path.lstrip("/"))
            if entry is None:
                raise RccError(f"{self._name} has no file {path!r}.")
        return self._read_entry(entry)

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Yield `(path, bytes)` for every distinct file."""
        for path, entry in self._by_path.items():
            yield path, self._read_entry(entry)

    # --- parsing ------------------------------------------------------------------------------

    def _fail(self, problem: str) -> RccError:
        return RccError(f"{self._name} is not a valid Qt resource file: {problem}.")

    def _u16(self, pos: int) -> int:
        return struct.unpack_from(">H", self._data, pos)[0]

    def _u32(self, pos: int) -> int:
        return struct.unpack_from(">I", self._data, pos)[0]

    def _header(self) -> tuple[int, int, int, int, int]:
        data = self._data
        if data[:4] != MAGIC:
            raise self._fail("it does not start with 'qres'")
        if len(data) < 20:
            raise self._fail("the header is cut short")
        version, tree, payload, names = struct.unpack_from(">IIII", data, 4)
        if version not in SUPPORTED_VERSIONS:
            raise self._fail(f"format version {version} is not supported (only 1-3)")
        header_size = 24 if version >= 3 else 20
        if len(data) < header_size:
            raise self._fail("the header is cut short")
        flags = self._u32(20) if version >= 3 else 0
        for label, offset in (("tree", tree), ("data", payload), ("names", names)):
            if not header_size <= offset <= len(data):
                raise self._fail(f"the {label} offset {offset} lies outside the file")
        node_size = 14 if version == 1 else 22
        if tree + node_size > len(data):
            raise self._fail("the resource tree is cut short")
        return version, tree, payload, names, flags

    def _node(self, index: int) -> int:
        pos = self._tree + index * self._node_size
        if index < 0 or pos + self._node_size > len(self._data):
            raise self._fail(f"tree node {index} lies outside the file")
        return pos

    def _name_at(self, offset: int) -> str:
        pos = self._names + offset
        if pos + 6 > len(self._data):
            raise self._fail(f"name offset {offset} lies outside the file")
        length = self._u16(pos)
        end = pos + 6 + 2 * length
        if end > len(self._data):
            raise self._fail(f"name at offset {offset} is cut short")
        try:
            return self._data[pos + 6 : end].decode("utf-16-be")
        except UnicodeDecodeError:
            raise self._fail(f"name at offset {offset} is not valid UTF-16") from None

    def _walk(self) -> list[RccEntry]:
        """Depth-first walk from the root; refuses cycles and out-of-range children."""
        root = self._node(0)
        if not self._u16(root + 4) & FLAG_DIRECTORY:
            raise self._fail("the root node is not a directory")
        entries: list[RccEntry] = []
        seen = {0}
        stack: list[tuple[int, str]] = [(0, "")]
        while stack:
            index, prefix = stack.pop()
            pos = self._node(index)
            count, first = self._u32(pos + 6), self._u32(pos + 10)
            children = []
            for child in range(first, first + count):
                if child in seen:
                    raise self._fail("the resource tree contains a loop")
                seen.add(child)
                children.append(child)
            for child in children:
                cpos = self._node(child)
                name = self._name_at(self._u32(cpos))
                if not name or "/" in name or name in (".", ".."):
                    raise self._fail(f"invalid entry name {name!r}")
                path = f"{prefix}{name}"
                flags = self._u16(cpos + 4)
                if flags & FLAG_DIRECTORY:
                    stack.append((child, path + "/"))
                else:
                    entries.append(
                        RccEntry(
                            path=path,
                            flags=flags,
                            country=self._u16(cpos + 6),
                            language=self._u16(cpos + 8),
                            data_offset=self._u32(cpos + 10),
                        )
                    )
        entries.sort(key=lambda e: e.path)
        return entries

    def _read_entry(self, entry: RccEntry) -> bytes:
        pos = self._payload + entry.data_offset
        if pos + 4 > len(self._data):
            raise self._fail(f"data of {entry.path!r} lies outside the file")
        size = self._u32(pos)
        blob = self._data[pos + 4 : pos + 4 + size]
        if len(blob) != size:
            raise self._fail(f"data of {entry.path!r} is cut short")
        if entry.flags & FLAG_COMPRESSED:
            return self._inflate(entry, blob)
        if entry.flags & FLAG_COMPRESSED_ZSTD:
            return self._unzstd(entry, blob)
        return blob

    def _inflate(self, entry: RccEntry, blob: bytes) -> bytes:
        if len(blob) < 4:
            raise self._fail(f"compressed data of {entry.path!r} is cut short")
        expected = struct.unpack_from(">I", blob)[0]
        if expected > MAX_ENTRY_BYTES:
            raise self._fail(f"{entry.path!r} claims an implausible size of {expected} bytes")
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(blob[4:], expected + 1)
        except zlib.error:
            raise self._fail(f"compressed data of {entry.path!r} is damaged") from None
        if len(out) != expected or not inflater.eof:
            raise self._fail(f"compressed data of {entry.path!r} has the wrong length")
        return out

    def _unzstd(self, entry: RccEntry, blob: bytes) -> bytes:
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
        except ImportError:
            raise RccError(
                f"{entry.path!r} in {self._name} is zstd-compressed, which needs Python 3.14+."
            ) from None
        try:
            out: bytes = zstd.decompress(blob)
        except zstd.ZstdError:
            raise self._fail(f"compressed data of {entry.path!r} is damaged") from None
        return out


def iter_rcc(source: Path | str | bytes) -> Iterator[tuple[str, bytes]]:
    """Yield `(path, bytes)` for every file of an `.rcc` given as a path or its raw bytes."""
    archive = RccArchive(source) if isinstance(source, bytes) else RccArchive.open(source)
    yield from archive.items()
