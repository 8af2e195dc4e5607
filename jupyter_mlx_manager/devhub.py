"""A local stand-in for huggingface.co: serves model repos to the real `huggingface_hub` client.

For tests and offline demos. Point any `huggingface_hub` 2.x client at it with
`HF_ENDPOINT=http://127.0.0.1:PORT` (nothing here ever reaches the internet):

    python -m jupyter_mlx_manager.devhub --port 8765 --demo demo/tiny-llama --repo org/name=/path/to/model

It answers the URLs the client uses (read from huggingface_hub 2.4's `hf_api.py`,
`file_download.py` and `_snapshot_download.py`):

- `GET /api/models?search=&author=&filter=&pipeline_tag=&sort=&limit=&full=&config=&expand=` — `list_models`
- `GET /api/models/{repo}[/revision/{rev}]?blobs=&expand=` — `model_info` / `repo_info`
  (`siblings` with sizes, git oids and LFS sha256 when `blobs`; `sha`; `tags`; `config`;
  `safetensors` parameter counts read from the weight files' headers)
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=` — `list_repo_tree`
- `HEAD|GET /{repo}/resolve/{rev}/{file}` — `hf_hub_download`: `ETag` (LFS sha256 or git
  blob sha1), `X-Repo-Commit`, `Content-Length`, `Accept-Ranges`, `Range` → 206.
- Hub-style errors: `X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound | GatedRepo`.

Switches for fault injection (attributes of `DevHub`, settable while it runs, or CLI flags):
`throttle_bps` (file bodies sent at most that fast), `drop_after_bytes` + `drop_count` (cut
that many file responses longer than N bytes after their first N body bytes), `fail_requests` (1-based request numbers
answered with HTTP 500) and `fail_next(n, path_contains)`. Counters: `bytes_sent` per
`repo/file`, and `log` (one entry per request: method, path, query, range start, status, bytes,
and when the response ended — `finished` is None while a body is still being sent).
`add_repo(..., files={"../evil": b"x"})` makes a repo whose listing holds a hostile name.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import hashlib
import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.model", "*.npz", "*.pt", "*.pth", "*.h5", "*.msgpack")
LFS_MIN_BYTES = 10 * 1024 * 1024  # larger files are LFS whatever their name
POINTER_SIZE = 134
CHUNK = 16 * 1024
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}  # fmt: skip


@dataclass
class HubFile:
    name: str
    size: int
    git_oid: str  # sha1 of the git blob ("blob <size>\0" + content)
    sha256: str
    lfs: bool
    data: bytes | None = None
    path: Path | None = None

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.path is not None
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    sha: str
    tags: list[str]
    downloads: int = 0
    likes: int = 0
    token: str | None = None  # gated: file and tree access need `Authorization: Bearer <token>`
    created_at: str = "2025-01-01T00:00:00.000Z"
    last_modified: str = "2025-01-01T00:00:00.000Z"
    config: dict[str, Any] | None = None
    safetensors: dict[str, Any] | None = None
    pipeline_tag: str | None = "text-generation"
    library_name: str | None = "mlx"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def author(self) -> str:
        return self.repo_id.split("/")[0]


def _file_entry(name: str, data: bytes | None = None, path: Path | None = None) -> HubFile:
    sha256, sha1 = hashlib.sha256(), None
    if data is not None:
        size = len(data)
        sha256.update(data)
        sha1 = hashlib.sha1(b"blob %d\0" % size + data)
    else:
        assert path is not None
        size = path.stat().st_size
        sha1 = hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                sha256.update(block)
                sha1.update(block)
    lfs = size >= LFS_MIN_BYTES or any(fnmatch.fnmatch(name.rsplit("/", 1)[-1], p) for p in LFS_PATTERNS)
    return HubFile(name, size, sha1.hexdigest(), sha256.hexdigest(), lfs, data=data, path=path)


def _safetensors_params(files: dict[str, HubFile]) -> dict[str, Any] | None:
    """The Hub's `safetensors` field: parameter counts per dtype, from the files' headers."""
    counts: collections.Counter[str] = collections.Counter()
    for hub_file in files.values():
        if not hub_file.name.endswith(".safetensors") or hub_file.size < 8:
            continue
        (length,) = struct.unpack("<Q", hub_file.read(0, 8))
        if length > 100 * 1024 * 1024 or 8 + length > hub_file.size:
            continue
        try:
            header = json.loads(hub_file.read(8, 8 + length))
        except ValueError:
            continue
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                n = 1
                for dim in info.get("shape", []):
                    n *= int(dim)
                counts[str(info.get("dtype"))] += n
    if not counts:
        return None
    return {"parameters": dict(counts), "total": sum(counts.values())}


class DevHub:
    """A threaded HTTP server in this process; `start()` returns its URL (use it as HF_ENDPOINT)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.repos: dict[str, HubRepo] = {}
        self.throttle_bps: int | None = None
        self.drop_after_bytes: int | None = None
        self.drop_count = 0  # how many more file responses to cut after `drop_after_bytes`
        self.fail_requests: set[int] = set()
        self._fail_rules: list[list[Any]] = []  # [remaining, path_contains]
        self.request_count = 0
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repos -----------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        folder: str | Path | None = None,
        files: dict[str, bytes] | None = None,
        tags: list[str] | tuple[str, ...] = (),
        downloads: int = 0,
        likes: int = 0,
        token: str | None = None,
        last_modified: str | None = None,
        pipeline_tag: str | None = "text-generation",
        library_name: str | None = "mlx",
        mlx: bool = True,
    ) -> HubRepo:
        """Serve the files of `folder` (recursively) plus `files` (name → bytes) as `repo_id`
        (`pipeline_tag` and `library_name` as the Hub reports them; the pipeline tag is a tag too;
        `mlx=False`: a plain Hugging Face repo, without the `mlx` tag)."""
        entries: dict[str, HubFile] = {}
        if folder is not None:
            root = Path(folder)
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    name = path.relative_to(root).as_posix()
                    entries[name] = _file_entry(name, path=path)
        for name, data in (files or {}).items():
            entries[name] = _file_entry(name, data=data)
        listing = "\n".join(f"{f.name} {f.git_oid}" for f in sorted(entries.values(), key=lambda f: f.name))
        sha = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
        config = None
        if "config.json" in entries:
            try:
                config = json.loads(entries["config.json"].read(0, entries["config.json"].size))
            except ValueError:
                config = None
        model_type = (config or {}).get("model_type")
        all_tags = [*(["mlx"] if mlx else []), "safetensors", *([pipeline_tag] if pipeline_tag else []),
                    *([model_type] if model_type else []), *tags]  # fmt: skip
        repo = HubRepo(
            repo_id,
            entries,
            sha,
            list(dict.fromkeys(all_tags)),
            downloads=downloads,
            likes=likes,
            token=token,
            config=config,
            safetensors=_safetensors_params(entries),
            pipeline_tag=pipeline_tag,
            library_name=library_name,
        )
        if last_modified:
            repo.last_modified = last_modified
        with self.lock:
            self.repos[repo_id] = repo
        return repo

    # -- switches and counters -------------------------------------------------------------------
    def fail_next(self, n: int = 1, path_contains: str = "") -> None:
        """Answer HTTP 500 to the next `n` requests whose path contains `path_contains`."""
        with self.lock:
            self._fail_rules.append([n, path_contains])

    def reset(self) -> None:
        """Switches off, counters to zero."""
        with self.lock:
            self.throttle_bps = self.drop_after_bytes = None
            self.drop_count = 0
            self.fail_requests = set()
            self._fail_rules = []
            self.request_count = 0
            self.bytes_sent.clear()
            self.log.clear()

    def file_requests(self, repo_id: str, name: str, method: str = "GET") -> list[dict[str, Any]]:
        path = f"/{repo_id}/resolve/"
        return [
            e
            for e in list(self.log)
            if e["method"] == method and e["path"].startswith(path) and e["path"].endswith("/" + name)
        ]

    # -- life cycle ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="devhub", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> DevHub:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- request bookkeeping (called by the handler) ----------------------------------------------
    def _next_request(self, path: str) -> tuple[int, bool]:
        with self.lock:
            self.request_count += 1
            number = self.request_count
            fail = number in self.fail_requests
            if not fail:
                for rule in self._fail_rules:
                    if rule[0] > 0 and rule[1] in path:
                        rule[0] -= 1
                        fail = True
                        break
            return number, fail

    def _take_drop(self, length: int) -> int | None:
        with self.lock:
            if self.drop_after_bytes is not None and self.drop_count > 0 and length > self.drop_after_bytes:
                self.drop_count -= 1
                return self.drop_after_bytes
            return None


class _ClientGone(Exception):
    pass


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("list", re.compile(r"/api/models/?")),
    ("tree", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")),
    ("info", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?/?")),
    ("resolve", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")),
]
_INFO_FIELDS = {
    "author", "downloads", "likes", "tags", "sha", "siblings", "config", "safetensors", "lastModified", "createdAt",
    "private", "gated", "disabled", "library_name", "pipeline_tag", "usedStorage", "trendingScore", "downloadsAllTime",
}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    hub: DevHub
    protocol_version = "HTTP/1.1"
    server_version = "devhub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- dispatch --------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        self.query = {k.rstrip("[]"): v for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self.entry = {
            "method": method,
            "path": path,
            "query": split.query,
            "range_start": None,
            "status": None,
            "bytes": 0,
            "time": time.time(),
            "finished": None,
        }
        with self.hub.lock:
            self.hub.log.append(self.entry)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        try:
            self._route(method, path)
        finally:
            self.entry["finished"] = time.time()

    def _route(self, method: str, path: str) -> None:
        _, fail = self.hub._next_request(path)
        if fail:
            return self._json({"error": "Internal Error - injected by devhub"}, 500)
        for name, pattern in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if name == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(method, **match.groupdict())
            if method == "GET" and name != "resolve":
                return getattr(self, f"_{name}")(**match.groupdict())
        return self._json({"error": "Sorry, we can't find the page you are looking for."}, 404)

    # -- helpers ---------------------------------------------------------------------------------
    def _arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def _flag(self, name: str) -> bool:
        return (self._arg(name, "") or "").lower() in ("1", "true", "yes")

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def _repo(self, repo_id: str, rev: str | None, need_access: bool = False) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if rev is not None and unquote(rev) not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", "Invalid rev id: " + unquote(rev), {"X-Repo-Commit": repo.sha})
            return None
        if need_access and repo.token is not None:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token != repo.token:
                self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it.",
                )
                return None
        return repo

    # -- /api/models -----------------------------------------------------------------------------
    def _list(self) -> None:
        search = (self._arg("search") or "").lower()
        author = (self._arg("author") or "").lower()
        filters = [f for value in self.query.get("filter", []) for f in value.split(",") if f]
        pipeline = self._arg("pipeline_tag")
        repos = []
        for repo in list(self.hub.repos.values()):
            if search and search not in repo.repo_id.lower():
                continue
            if author and repo.author.lower() != author:
                continue
            if any(f not in repo.tags for f in filters):
                continue
            if pipeline and repo.pipeline_tag != pipeline:
                continue
            repos.append(repo)
        sort = self._arg("sort")
        key = {"downloads": lambda r: r.downloads, "likes": lambda r: r.likes, "trendingScore": lambda r: r.likes,
               "lastModified": lambda r: r.last_modified, "createdAt": lambda r: r.created_at}.get(sort or "")  # fmt: skip
        if key is not None:
            repos.sort(key=key, reverse=True)
        limit = int(self._arg("limit") or 1000)
        expand = self.query.get("expand")
        items = [
            self._info_dict(r, expand=expand, full=self._flag("full"), config=self._flag("config"), listing=True)
            for r in repos[:limit]
        ]
        self._json(items)

    def _info(self, repo: str, rev: str | None = None) -> None:
        found = self._repo(repo, rev)
        if found is not None:
            self._json(
                self._info_dict(
                    found, expand=self.query.get("expand"), full=True, config=True, blobs=self._flag("blobs")
                )
            )

    def _info_dict(
        self,
        repo: HubRepo,
        expand: list[str] | None,
        full: bool = False,
        config: bool = False,
        blobs: bool = False,
        listing: bool = False,
    ) -> dict[str, Any]:
        siblings = []
        for f in repo.files.values():
            sibling: dict[str, Any] = {"rfilename": f.name}
            if blobs:
                sibling.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": POINTER_SIZE}
            siblings.append(sibling)
        every = {
            "author": repo.author, "downloads": repo.downloads, "likes": repo.likes, "tags": repo.tags, "sha": repo.sha,
            "siblings": siblings, "config": repo.config, "safetensors": repo.safetensors, "lastModified": repo.last_modified,
            "createdAt": repo.created_at, "private": False, "gated": "manual" if repo.token else False, "disabled": False,
            "library_name": repo.library_name, "pipeline_tag": repo.pipeline_tag, "usedStorage": sum(f.size for f in repo.files.values()),
            "trendingScore": repo.likes, "downloadsAllTime": repo.downloads,
        }  # fmt: skip
        base = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id}
        if expand:
            return {**base, **{k: every[k] for k in expand if k in _INFO_FIELDS}}
        keys = [
            "author",
            "downloads",
            "likes",
            "tags",
            "private",
            "gated",
            "library_name",
            "pipeline_tag",
            "createdAt",
            "trendingScore",
        ]
        if full or not listing:
            keys += ["sha", "siblings", "lastModified", "safetensors", "disabled", "usedStorage"]
        if config or not listing:
            keys.append("config")
        return {**base, "modelId": repo.repo_id, **{k: every[k] for k in keys}}

    def _tree(self, repo: str, rev: str, path: str | None = None) -> None:
        found = self._repo(repo, rev, need_access=True)
        if found is None:
            return
        prefix = (path or "").strip("/")
        recursive = self._flag("recursive")
        entries, folders = [], set()
        for f in found.files.values():
            name = f.name
            if prefix:
                if not name.startswith(prefix + "/"):
                    continue
                rel = name[len(prefix) + 1 :]
            else:
                rel = name
            parts = rel.split("/")
            # Folders on the way (a hostile "../evil" is listed as the file it claims to be).
            for depth in range(1, len(parts)):
                if parts[0] == "..":
                    break
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        }
                    )
            if len(parts) > 1 and parts[0] != ".." and not recursive:
                continue
            entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": name}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": POINTER_SIZE}
            entries.append(entry)
        self._json(entries)

    # -- /{repo}/resolve/{rev}/{file} ---------------------------------------------------------------
    def _resolve(self, method: str, repo: str, rev: str, path: str) -> None:
        found = self._repo(repo, rev, need_access=True)
        if found is None:
            return
        hub_file = found.files.get(path)
        if hub_file is None:
            return self._error(
                404, "EntryNotFound", f'{path} does not exist on "{unquote(rev)}"', {"X-Repo-Commit": found.sha}
            )
        start, end, status = 0, hub_file.size, 200
        wanted = self.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if match is None or int(match.group(1)) >= hub_file.size:
                self.entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{hub_file.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1, hub_file.size) if match.group(2) else hub_file.size
            status = 206
        self.entry.update(status=status, range_start=start if method == "GET" else None)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hub_file.etag}"')
        self.send_header("X-Repo-Commit", found.sha)
        if hub_file.lfs:
            self.send_header("X-Linked-Size", str(hub_file.size))
            self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{hub_file.size}")
        self.end_headers()
        if method == "HEAD":
            return
        drop_after = self.hub._take_drop(end - start)
        key = f"{found.repo_id}/{hub_file.name}"
        sent, began = 0, time.monotonic()
        try:
            position = start
            while position < end:
                step = min(CHUNK, end - position)
                if drop_after is not None and sent + step > drop_after:
                    step = max(drop_after - sent, 0)
                if step:
                    self.wfile.write(hub_file.read(position, position + step))
                    position += step
                    sent += step
                    with self.hub.lock:
                        self.hub.bytes_sent[key] += step
                    self.entry["bytes"] = sent
                if drop_after is not None and sent >= drop_after:
                    self.wfile.flush()
                    raise _ClientGone  # cut the connection mid-body
                rate = self.hub.throttle_bps
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_mlx_manager.devhub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--repo", action="append", default=[], metavar="ORG/NAME=DIR", help="serve DIR as repo ORG/NAME"
    )
    parser.add_argument(
        "--demo",
        action="append",
        default=[],
        metavar="ORG/NAME",
        help="generate a tiny random-weight model and serve it",
    )
    parser.add_argument(
        "--evil", metavar="ORG/NAME", help="also serve a repo whose listing holds a file named '../evil'"
    )
    parser.add_argument(
        "--throttle", type=int, metavar="BPS", help="send file bodies at most this many bytes per second"
    )
    parser.add_argument("--drop-after", type=int, metavar="N", help="cut the first file response after N bytes")
    parser.add_argument(
        "--fail-nth", type=int, action="append", default=[], metavar="N", help="answer HTTP 500 to request number N"
    )
    args = parser.parse_args(argv)

    hub = DevHub(args.host, args.port)
    for spec in args.repo:
        repo_id, _, folder = spec.partition("=")
        hub.add_repo(repo_id, Path(folder).expanduser())
    if args.demo:
        import tempfile

        from .models.demo import make_demo_model

        work = Path(tempfile.mkdtemp(prefix="devhub-"))
        for repo_id in args.demo:
            hub.add_repo(repo_id, make_demo_model(work / repo_id.replace("/", "--")), downloads=10, likes=1)
    if args.evil:
        hub.add_repo(args.evil, files={"config.json": b'{"model_type": "llama"}', "../evil": b"gotcha"})
    hub.throttle_bps = args.throttle
    if args.drop_after:
        hub.drop_after_bytes, hub.drop_count = args.drop_after, 1
    hub.fail_requests = set(args.fail_nth)
    url = hub.start()
    print(f"devhub serving {len(hub.repos)} repo(s) at {url}: {', '.join(sorted(hub.repos)) or '(none)'}", flush=True)
    print(f"  export HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
