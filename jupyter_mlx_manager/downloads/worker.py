"""`python -m jupyter_mlx_manager.downloads.worker`: download one model repo into the HF cache.

Runs in its own process so the server can stop a transfer at once (huggingface_hub has no
cancel API) and so nothing blocks the server's event loop. The server writes one JSON line
on stdin — `{repo_id, revision, cache_dir, endpoint, token}` (the token travels here, never
on the command line or in the environment of other processes; `false` means send none, not
even one huggingface_hub would find by itself) — and reads JSON events on
stdout:

    {"ev": "plan", "commit", "files": [{"name", "size"}], "total_bytes", "files_total",
     "downloaded_bytes", "files_done"}      then waits for {"cmd": "go"} (or "abort")
    {"ev": "progress", "downloaded_bytes", "files_done", "file"}   (at most ~10 per second)
    {"ev": "retry", "file", "attempt", "error"}
    {"ev": "done", "path"}  |  {"ev": "error", "kind", "message"}

Metadata comes from `HfApi.model_info(files_metadata=True)`; each file is fetched from
`/{repo}/resolve/{commit}/{file}` with huggingface_hub's HTTP session. Unlike
`hf_hub_download` (whose `.incomplete` files are unique per process and deleted on error),
partial files are `blobs/<etag>.incomplete`, so a transfer cut by a dropped connection, a
cancelled worker or a server restart resumes with an HTTP Range request. Every file is
checked against the Hub's hash (LFS sha256, or git blob sha1) before it becomes
`blobs/<etag>`; the snapshot links (`snapshots/<commit>/<file>`) and `refs/<revision>` are
written only once every file is complete, so a half-downloaded model never looks local.
Closing stdin (the server going away, even by SIGKILL) ends the worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..models.hub_network import HubUnreachable, fail_fast
from .files import repo_folder, unsafe_reason, wanted

CHUNK = 64 * 1024
MAX_ATTEMPTS = 6  # per file, counted from the last attempt that made progress
PROGRESS_INTERVAL = 0.1


class WorkerError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


_out_lock = threading.Lock()


def emit(event: dict[str, Any]) -> None:
    line = json.dumps(event) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class Commands:
    """Reads the server's commands; stdin closing means the server is gone: exit at once."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.abort = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            try:
                command = json.loads(line).get("cmd")
            except (ValueError, AttributeError):
                continue
            if command == "go":
                self.go.set()
            elif command == "abort":
                self.abort = True
                self.go.set()
        os._exit(3)


def _transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, (OfflineModeIsEnabled, HubUnreachable)):  # answers, not accidents: no retry
        return False
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in (408, 429) or exc.response.status_code >= 500
    return isinstance(exc, IncompleteTransfer)


class IncompleteTransfer(Exception):
    pass


def _describe(exc: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _with_retries(what: str, fn, attempts: int = MAX_ATTEMPTS):
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not _transient(exc) or attempt == attempts:
                raise
            emit({"ev": "retry", "file": what, "attempt": attempt, "error": _describe(exc)})
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8))


def plan(api, repo_id: str, revision: str) -> tuple[str, list[dict[str, Any]]]:
    """The commit and the files to fetch, after checking every listed name is safe."""
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = _with_retries("model_info", lambda: api.model_info(repo_id, revision=revision, files_metadata=True))
    except OfflineModeIsEnabled:
        raise WorkerError("offline", "downloads are disabled on this server (HF_HUB_OFFLINE is set)") from None
    except HubUnreachable as exc:
        raise WorkerError("unreachable", str(exc)) from None
    except GatedRepoError:
        raise WorkerError(
            "gated", f"{repo_id} is a gated repository: accept its terms on the Hub and set c.MLXManager.hf_token"
        ) from None
    except RevisionNotFoundError:
        raise WorkerError("revision_not_found", f"{repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise WorkerError(
            "not_found", f"{repo_id} was not found on the Hub (if it is private or gated, set c.MLXManager.hf_token)"
        ) from None
    if not isinstance(info.sha, str) or not re.fullmatch(r"[0-9a-f]{40}", info.sha) or info.siblings is None:
        raise WorkerError("bad_listing", f"the Hub sent no valid commit id or file list for {repo_id}")
    for sibling in info.siblings:
        reason = unsafe_reason(sibling.rfilename)
        if reason is not None:
            raise WorkerError(
                "unsafe_file_name",
                f"{repo_id} lists a file named {sibling.rfilename!r} ({reason}); refusing to download anything from it",
            )
    files = []
    for sibling in info.siblings:
        if not wanted(sibling.rfilename):
            continue
        if sibling.lfs is not None:
            digest, algorithm, size = sibling.lfs.sha256, "sha256", sibling.lfs.size
        else:
            digest, algorithm, size = sibling.blob_id, "git-sha1", sibling.size
        if (
            not isinstance(digest, str)
            or len(digest) not in (40, 64)
            or not all(c in "0123456789abcdef" for c in digest)
        ):
            raise WorkerError("bad_listing", f"the Hub sent no usable hash for {sibling.rfilename}")
        if not isinstance(size, int) or size < 0:
            raise WorkerError("bad_listing", f"the Hub sent no size for {sibling.rfilename}")
        files.append({"name": sibling.rfilename, "size": size, "etag": digest, "algorithm": algorithm})
    names = {f["name"] for f in files}
    if "config.json" not in names:
        raise WorkerError("not_mlx", f"{repo_id} has no config.json: it is not a model mlx-lm can load")
    if not any(n.endswith(".safetensors") for n in names):
        raise WorkerError("not_mlx", f"{repo_id} has no model*.safetensors weights: it is not a model mlx-lm can load")
    return info.sha, files


def _hasher(algorithm: str, size: int):
    if algorithm == "sha256":
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(b"blob %d\0" % size)
    return h


def fetch(url: str, headers: dict[str, str], partial: Path, entry: dict[str, Any], on_bytes) -> None:
    """Fetch one file into `partial`, resuming from what is there; verify its hash."""
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    size = entry["size"]
    partial.touch(exist_ok=True)
    with open(partial, "r+b", buffering=0) as f:
        # What an earlier attempt (or process) left is hashed once, then extended.
        hasher, have = _hasher(entry["algorithm"], size), 0
        while block := f.read(1 << 20):
            hasher.update(block)
            have += len(block)
        if have > size:
            f.seek(0)
            f.truncate()
            hasher, have = _hasher(entry["algorithm"], size), 0
        attempts = checksum_failures = 0
        while True:
            if have < size:
                before = have
                try:
                    request_headers = dict(headers)
                    if have:
                        request_headers["Range"] = f"bytes={have}-"
                    with http_stream_backoff(
                        "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, max_retries=0
                    ) as response:
                        hf_raise_for_status(response)
                        if have and response.status_code != 206:  # the server ignored Range: start over
                            hasher, have = _hasher(entry["algorithm"], size), 0
                        f.seek(have)
                        f.truncate()
                        for chunk in response.iter_bytes(CHUNK):
                            if have + len(chunk) > size:
                                raise IncompleteTransfer(f"the server sent more than {size} bytes")
                            f.write(chunk)
                            hasher.update(chunk)
                            have += len(chunk)
                            on_bytes(have)
                    if have != size:
                        raise IncompleteTransfer(f"got {have} of {size} bytes")
                except Exception as exc:
                    if have > before:
                        attempts = 0  # progress was made: a fresh series of retries
                    attempts += 1
                    if not _transient(exc) or attempts >= MAX_ATTEMPTS:
                        raise
                    emit({"ev": "retry", "file": entry["name"], "attempt": attempts, "error": _describe(exc)})
                    time.sleep(min(0.25 * 2 ** (attempts - 1), 4))
                    continue
            if hasher.hexdigest() == entry["etag"]:
                return
            checksum_failures += 1
            if checksum_failures >= 2:
                f.seek(0)
                f.truncate()
                raise WorkerError("checksum", f"{entry['name']} does not match the Hub's checksum (downloaded twice)")
            emit({"ev": "retry", "file": entry["name"], "attempt": checksum_failures, "error": "checksum mismatch"})
            f.seek(0)
            f.truncate()
            hasher, have = _hasher(entry["algorithm"], size), 0


def _link(target: Path, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(os.path.relpath(target, link.parent))
    except OSError:  # no symlinks here (some network file systems): copy instead
        import shutil

        shutil.copyfile(target, tmp)
    os.replace(tmp, link)


def run(config: dict[str, Any], commands: Commands) -> str:
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    repo_id, revision = config["repo_id"], config["revision"]
    cache_dir, endpoint = Path(config["cache_dir"]), config["endpoint"]
    # A string: that token; None: huggingface_hub's own (HF_TOKEN, a saved login); False: none.
    token = config.get("token")
    token = False if token is False else (token or None)
    api = HfApi(endpoint=endpoint, token=token)
    commit, files = plan(api, repo_id, revision)

    folder = repo_folder(cache_dir, repo_id)
    blobs = folder / "blobs"
    done_bytes, files_done = 0, 0
    for entry in files:
        entry["blob"] = blobs / entry["etag"]
        entry["partial"] = blobs / (entry["etag"] + ".incomplete")
        if entry["blob"].is_file() and entry["blob"].stat().st_size == entry["size"]:
            entry["complete"] = True
            done_bytes += entry["size"]
            files_done += 1
        elif entry["partial"].is_file():
            done_bytes += min(entry["partial"].stat().st_size, entry["size"])
    total = sum(f["size"] for f in files)
    emit({"ev": "plan", "commit": commit, "files": [{"name": f["name"], "size": f["size"]} for f in files],
          "total_bytes": total, "files_total": len(files), "downloaded_bytes": done_bytes, "files_done": files_done})  # fmt: skip
    commands.go.wait()
    if commands.abort:
        raise WorkerError("aborted", "aborted by the server")

    blobs.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers(token=token)
    completed = sum(f["size"] for f in files if f.get("complete"))
    last_emit = 0.0
    for entry in files:
        if entry.get("complete"):
            continue
        name = entry["name"]

        def on_bytes(have: int, name: str = name) -> None:
            nonlocal last_emit
            now = time.monotonic()
            if now - last_emit >= PROGRESS_INTERVAL:
                last_emit = now
                emit({"ev": "progress", "downloaded_bytes": completed + have, "files_done": files_done, "file": name})

        url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
        try:
            fetch(url, headers, entry["partial"], entry, on_bytes)
        except WorkerError:
            entry["partial"].unlink(missing_ok=True)  # a file that fails its checksum twice is not kept
            raise
        except HubUnreachable as exc:
            raise WorkerError("unreachable", f"downloading {name} stopped: {exc}") from None
        except Exception as exc:
            from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

            if isinstance(exc, GatedRepoError):
                raise WorkerError("gated", f"{repo_id} is a gated repository: set c.MLXManager.hf_token") from None
            if isinstance(exc, HfHubHTTPError):
                raise WorkerError("http", f"downloading {name} failed: {_describe(exc)}") from None
            if isinstance(exc, OSError) and not _transient(exc):
                raise WorkerError("io", f"writing {name} failed: {exc}") from None
            raise WorkerError("network", f"downloading {name} failed after retries: {_describe(exc)}") from None
        os.replace(entry["partial"], entry["blob"])
        os.chmod(entry["blob"], 0o644 & ~_umask())
        completed += entry["size"]
        files_done += 1
        emit({"ev": "progress", "downloaded_bytes": completed, "files_done": files_done, "file": name})

    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    # config.json last: a folder with a config.json is what the catalog calls a model.
    for entry in sorted(files, key=lambda f: f["name"] == "config.json"):
        _link(entry["blob"], snapshot / entry["name"])
    if revision != commit:
        ref = folder / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    return str(snapshot)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main() -> int:
    line = sys.stdin.readline()
    if not line:
        return 3
    config = json.loads(line)
    fail_fast()  # no network, DNS failure, refused: the reason at once, not after minutes of retries
    commands = Commands()
    try:
        path = run(config, commands)
    except WorkerError as exc:
        emit({"ev": "error", "kind": exc.kind, "message": exc.message})
        return 1
    except Exception as exc:  # anything unexpected: report it rather than a traceback only
        emit({"ev": "error", "kind": "internal", "message": f"{type(exc).__name__}: {str(exc)[:300]}"})
        raise
    emit({"ev": "done", "path": path})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
