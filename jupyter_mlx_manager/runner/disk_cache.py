"""The prompt cache on disk: long KV prefixes that outlive an unload, an eviction, a killed
runner and a server restart.

One safetensors file per prefix (mlx-lm's `save_prompt_cache` / `load_prompt_cache`), named by
a hash of the model's weights identity, the scope and the tokens; the file's metadata repeats
all three, and a file is used only when they match this model, this scope and a prefix of the
prompt, so a foreign file (another model's, another user's) is never loaded into the wrong
place; a checksum of its arrays (CRC-32, in the metadata too) catches data that changed on disk
under an intact header; a file that cannot be read or fails its checksum is deleted. Files are
written by a writer thread (the generation thread only hands over the finished request's cache,
whose arrays are already evaluated and never change afterwards) to a temporary name, then
renamed: a killed runner leaves no half file under a real name. A file that extends a shorter
one of the same scope (the next turn of a conversation) replaces it: the longer one serves the
shorter prefix too, trimmed. Files are read by a reader thread too: loading and checking a long
prefix (GBs for an agent's 50k-token prompt) takes seconds, which would stall every stream of
the generation thread; the generation thread picks the file (from the headers it keeps in
memory) and starts the request once the reader has it (or has taken `READ_SECONDS`).
The folder is kept under its byte bound by deleting the least recently used files (a hit touches
its file).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import sys
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIX = ".safetensors"
HEADER_LIMIT = 64 << 20  # a safetensors header larger than this is not one of ours
MAX_PENDING_WRITES = 4  # prefixes waiting for the writer; more are dropped (the memory cache still has them)
HEADER_SLACK = 64 << 10  # a file's header and metadata beyond its arrays
# A read not finished by then is given up (a hung disk): its request is prefilled instead, and no
# new read queues behind it while it hangs.
READ_SECONDS = 120.0


def weights_identity(folders: list[Path]) -> str:
    """What makes this model's KV what it is: its config and its weight files (name, size,
    modification time) in each folder (a base model and its adapter)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            if path.name == "config.json":
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _checksum(mx: Any, cache: list[Any]) -> str:
    """CRC-32 of what a cache saves (its layers' `state`, in order: arrays, one made contiguous
    at a time, and the scalars mlx-lm stores as arrays, such as offsets): fast enough to check
    each file as it is loaded (a few GB/s), and it is corruption that this guards against, not an
    adversary (who could rewrite the metadata too)."""
    from mlx.utils import tree_flatten

    crc = 0
    for _, value in tree_flatten([c.state for c in cache]):
        if isinstance(value, str):
            crc = zlib.crc32(value.encode(), crc)
        elif value is not None:
            dense = mx.contiguous(value if isinstance(value, mx.array) else mx.array(value))
            mx.eval(dense)
            crc = zlib.crc32(memoryview(dense), crc)
    return f"{crc:08x}"


def folder_bytes(directory: Path) -> int:
    """Bytes of the prompt-cache files in `directory` (0 if there is none)."""
    try:
        return sum(e.stat().st_size for e in os.scandir(directory) if _is_entry(e))
    except OSError:
        return 0


@dataclass
class Entry:
    path: Path
    scope: str
    tokens: tuple[int, ...]


@dataclass
class Hit:
    """A file's KV cache as read (all of its `held` tokens; the generation thread trims it to
    the `common` prefix it shares with the prompt)."""

    cache: list[Any]
    held: int
    common: int


class DiskPromptCache:
    def __init__(self, mx: Any, directory: Path, max_bytes: int, min_tokens: int, identity: str):
        self.mx = mx
        self.directory = directory
        self.max_bytes = max_bytes
        self.min_tokens = max(1, min_tokens)
        self.identity = identity
        self.lock = threading.Lock()  # guards `entries` (the writer thread adds to it, the reader drops from it)
        self.entries: dict[Path, Entry] = {}
        self.writes: queue.Queue[tuple[Path, str, tuple[int, ...], list[Any]]] = queue.Queue(MAX_PENDING_WRITES)
        directory.mkdir(parents=True, exist_ok=True)
        for path in directory.glob(f"{identity[:32]}-*{SUFFIX}"):
            entry = self._read_entry(path)
            if entry is not None:
                self.entries[path] = entry
        threading.Thread(target=self._write_forever, name="prompt-cache-writer", daemon=True).start()
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompt-cache-reader")
        self.read_stream: Any = None  # made on the reader thread (MLX streams are per thread)
        self.reading_since: float | None = None  # monotonic start of the read in progress

    def _path(self, scope: str, tokens: tuple[int, ...]) -> Path:
        key = hashlib.sha256(f"{self.identity}\0{scope}\0{','.join(map(str, tokens))}".encode()).hexdigest()
        return self.directory / f"{self.identity[:32]}-{key[:32]}{SUFFIX}"

    def _read_entry(self, path: Path) -> Entry | None:
        """The entry a file holds, from its safetensors header alone; None (and the file
        deleted) when it is unreadable, or not this model's."""
        try:
            with open(path, "rb") as file:
                (length,) = struct.unpack("<Q", file.read(8))
                if length > HEADER_LIMIT:
                    raise ValueError("header too large")
                metadata = json.loads(file.read(length))["__metadata__"]
            identity, scope, tokens = metadata["0.identity"], metadata["0.scope"], metadata["0.tokens"]
            entry = Entry(path, scope, tuple(int(t) for t in tokens.split(",")))
        except Exception:
            _discard(path)
            return None
        if identity != self.identity:  # a name collision with another model's file: not ours to use
            return None
        return entry

    # -- the generation thread -------------------------------------------------------------------
    def fetch(self, scope: str, prompt: list[int], better_than: int) -> Future[Hit | None] | None:
        """The file sharing the longest prefix with `prompt` in this scope, if longer than
        `better_than` tokens, as it is being read by the reader thread (its result None if the
        file turns out unusable); None at once when no file is, or while a read hangs."""
        best, common = None, max(better_than, self.min_tokens - 1)
        with self.lock:
            candidates = [e for e in self.entries.values() if e.scope == scope]
        wanted = tuple(prompt)
        for entry in candidates:
            shared = _common_prefix(entry.tokens, wanted)
            if shared > common:
                best, common = entry, shared
        since = self.reading_since
        if best is None or (since is not None and time.monotonic() - since > READ_SECONDS):
            return None
        return self.reader.submit(self._read, best, common)

    def save(self, scope: str, tokens: list[int], cache: list[Any]) -> None:
        """Queue a finished request's KV cache (which holds `tokens`) for writing, unless it is
        short or the folder already has it (or a longer prefix of the same tokens)."""
        if len(tokens) < self.min_tokens:
            return
        key = tuple(tokens)
        with self.lock:
            if any(e.scope == scope and e.tokens[: len(key)] == key for e in self.entries.values()):
                return
        self.mx.eval([c.state for c in cache])
        try:
            self.writes.put_nowait((self._path(scope, key), scope, key, cache))
        except queue.Full:
            pass

    # -- the reader thread -----------------------------------------------------------------------
    def _read(self, entry: Entry, common: int) -> Hit | None:
        """The entry's KV cache, checked against its metadata and checksum (which reads every
        array here, not where the generation thread would first use it); None (and the file
        deleted) when it fails, or when it holds more than `common` tokens and cannot be trimmed."""
        from mlx_lm.models.cache import can_trim_prompt_cache, load_prompt_cache

        self.reading_since = time.monotonic()
        try:
            if self.read_stream is None:
                self.read_stream = self.mx.new_stream(self.mx.default_device())
            with self.mx.stream(self.read_stream):
                cache, metadata = load_prompt_cache(str(entry.path), return_metadata=True)
                if (metadata.get("identity"), metadata.get("scope")) != (self.identity, entry.scope):
                    raise ValueError("a file of another model or scope")
                if metadata.get("tokens") != ",".join(map(str, entry.tokens)):
                    raise ValueError("the file's tokens changed")
                if "checksum" not in metadata:
                    raise ValueError("a file without a checksum (written by an earlier version)")
                if metadata["checksum"] != _checksum(self.mx, cache):
                    raise ValueError("the file's data changed (checksum)")
            if common < len(entry.tokens) and not can_trim_prompt_cache(cache):
                return None
            os.utime(entry.path)  # recently used
        except Exception as exc:
            _log(f"ignored prompt-cache file {entry.path.name}: {type(exc).__name__}: {exc}")
            with self.lock:
                self.entries.pop(entry.path, None)
            _discard(entry.path)
            return None
        finally:
            self.reading_since = None
        return Hit(cache, len(entry.tokens), common)

    # -- the writer thread -----------------------------------------------------------------------
    def _write_forever(self) -> None:
        from mlx_lm.models.cache import can_trim_prompt_cache, save_prompt_cache

        stream = self.mx.new_stream(self.mx.default_device())  # MLX streams are per thread
        while True:
            path, scope, tokens, cache = self.writes.get()
            temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{SUFFIX}")  # MLX adds the suffix otherwise
            try:
                metadata = {"identity": self.identity, "scope": scope, "tokens": ",".join(map(str, tokens))}
                self._trim(incoming=_state_bytes(cache) + HEADER_SLACK)  # the file being written counts too
                with self.mx.stream(stream):
                    metadata["checksum"] = _checksum(self.mx, cache)
                    save_prompt_cache(str(temporary), cache, metadata)
                size = temporary.stat().st_size
                if size > self.max_bytes:
                    raise ValueError("larger than the whole disk budget")
                self._trim(incoming=size)  # room first: the folder never exceeds its bound
                os.replace(temporary, path)
                trimmable = can_trim_prompt_cache(cache)
            except Exception as exc:
                _log(f"not writing prompt-cache file {path.name}: {type(exc).__name__}: {exc}")
                _discard(temporary)
                continue
            finally:
                del cache
            with self.lock:
                # A shorter prefix of these tokens (the conversation's previous turn) is superseded:
                # the new file serves it too, trimmed.
                superseded = [e.path for e in self.entries.values() if trimmable and e.scope == scope
                              and len(e.tokens) < len(tokens) and tokens[: len(e.tokens)] == e.tokens]  # fmt: skip
                for old in superseded:
                    self.entries.pop(old, None)
                self.entries[path] = Entry(path, scope, tokens)
            for old in superseded:
                _discard(old)
            self._trim()

    def _trim(self, incoming: int = 0) -> None:
        """Delete the least recently used files (of any model) until the folder fits its bound
        with `incoming` more bytes."""
        try:
            files = [(e.stat().st_mtime_ns, e.stat().st_size, Path(e.path)) for e in os.scandir(self.directory)
                     if _is_entry(e)]  # fmt: skip
        except OSError:
            return
        total = sum(size for _, size, _ in files) + incoming
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            _discard(path)
            total -= size
            with self.lock:
                self.entries.pop(path, None)


def _state_bytes(cache: list[Any]) -> int:
    """Bytes of a KV cache's arrays: about the size of its file."""
    total = 0
    for layer in cache:
        state = layer.state if isinstance(layer.state, (list, tuple)) else [layer.state]
        total += sum(getattr(array, "nbytes", 0) for array in state)
    return total


def _is_entry(entry: os.DirEntry) -> bool:
    """A prompt-cache file (not a temporary one being written: those start with a dot)."""
    return entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and entry.is_file()


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """The length of the common prefix, by binary search over slice comparisons (done in C: a
    50k-token prompt is compared in milliseconds, on the generation thread)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _log(message: str) -> None:
    print(f"jupyter_mlx_manager.runner: {message}", file=sys.stderr, flush=True)
