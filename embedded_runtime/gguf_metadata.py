"""The metadata of a GGUF file (its key/value header), read for `/api/show`'s `model_info`.

A header-only reader rather than llama.cpp's `gguf` package: `gguf.GGUFReader` parses every
tokenizer entry and tensor descriptor into numpy objects, which takes 1.7 s for smollm2:135m and
6 to 8 s for qwen2.5-coder:0.5b and gemma3:270m (150,000 to 262,000 tokens) on these machines.
This reader maps the file and only steps over the big arrays, in milliseconds.

The format (GGUF v2 and v3, little-endian): magic "GGUF", uint32 version, uint64 tensor_count,
uint64 kv_count, then kv_count pairs of (string key, uint32 value type, value); a string is a
uint64 length and UTF-8 bytes; an array is a uint32 item type, a uint64 count and the items.
"""
from __future__ import annotations

import mmap
import struct
import threading
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
STRING, ARRAY = 8, 9
# value type -> struct format of the fixed-size types (GGUFValueType in gguf-py's constants.py)
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}
# Arrays up to this length are kept (per-layer head counts in some architectures, languages);
# longer ones (the tokenizer's vocabulary, merges, scores) are stepped over.
MAX_ARRAY_ITEMS = 1024


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands."""


class _Cursor:
    def __init__(self, data: mmap.mmap):
        self.data = data
        self.offset = 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.offset)
        except struct.error as exc:
            raise GGUFError("truncated GGUF header") from exc
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.offset + length > len(self.data):
            raise GGUFError("truncated GGUF header")
        text = self.data[self.offset:self.offset + length].decode("utf-8", errors="replace")
        self.offset += length
        return text

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        self.offset += length

    def value(self, kind: int) -> Any:
        """The value of type `kind` at the cursor; None for an array left out."""
        if kind == STRING:
            return self.string()
        if kind in SCALAR_FORMATS:
            return self.unpack(SCALAR_FORMATS[kind])
        if kind != ARRAY:
            raise GGUFError(f"unknown GGUF value type {kind}")
        item_kind, count = self.unpack("<I"), self.unpack("<Q")
        if count <= MAX_ARRAY_ITEMS and item_kind != ARRAY:
            return [self.value(item_kind) for _ in range(count)]
        if item_kind in SCALAR_FORMATS:
            self.offset += count * struct.calcsize(SCALAR_FORMATS[item_kind])
        elif item_kind == STRING:
            for _ in range(count):
                self.skip_string()
        else:                                        # arrays of arrays: walk them, keep nothing
            for _ in range(count):
                self.value(item_kind)
        return None


def read_metadata(path: Path) -> dict[str, Any]:
    """The file's metadata keys and values (numbers, booleans, strings and short arrays)."""
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:                    # an empty file cannot be mapped
            raise GGUFError(f"{path} is not a GGUF file") from exc
    with data:
        if data[:4] != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        cursor = _Cursor(data)
        cursor.offset = 4
        version = cursor.unpack("<I")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (big-endian file?)")
        cursor.unpack("<Q")                          # tensor_count
        metadata: dict[str, Any] = {}
        for _ in range(cursor.unpack("<Q")):
            key = cursor.string()
            value = cursor.value(cursor.unpack("<I"))
            if value is not None:
                metadata[key] = value
        return metadata


_cache: dict[tuple[str, int, int], dict[str, Any]] = {}
_cache_lock = threading.Lock()


def cached_metadata(path: Path) -> dict[str, Any]:
    """`read_metadata`, remembered per file (by path, size and mtime) for the life of the process."""
    stat = Path(path).stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = read_metadata(Path(path))
        return _cache[key]
