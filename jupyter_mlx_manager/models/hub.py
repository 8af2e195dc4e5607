"""Hub search: `HfApi.list_models` (MLX library filter) plus what the Hub's metadata says
about each model — architecture, quantization, size and parameter estimates, its *kind*
(from the Hub's `pipeline_tag`, library and tags) — filtered and sorted here, since the Hub
cannot filter on most of these. A `kind=` filter is also sent to the Hub as `pipeline_tag`
(one listing per pipeline tag of that kind, merged).

The HTTP calls run on a worker thread, never on the event loop; a Hub that cannot be reached
(no network, DNS failure, refused) fails at once (`hub_network.py`). `HF_ENDPOINT` (read when
the server starts) is honoured. The server's `hf_token` (which may see private and gated
repos) is sent only for admins' searches, unless `hf_token_for_users`; other searches send
no token at all (not even one huggingface_hub would find by itself).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from ..auth.users import is_admin
from ..errors import BadRequest, MLXError
from .kinds import ENCODER_TYPES, KIND_REGISTRY, KINDS, SPEECH_TYPES, TRANSCRIPTION_TYPES

SORTS = {"downloads": "downloads", "likes": "likes", "trending": "trending_score", "updated": "last_modified",
         "created": "created_at", "size": None}  # fmt: skip
QUANT_BITS = (2, 3, 4, 5, 6, 8, 16)
EXPAND = ["author", "downloads", "likes", "tags", "safetensors", "config", "lastModified", "createdAt", "gated",
          "library_name", "pipeline_tag", "usedStorage", "trendingScore"]  # fmt: skip
# The Hub's pipeline tags and libraries → our model kinds (models/kinds.py); KIND_PIPELINES: what a
# `kind=` filter asks the Hub for.
PIPELINE_KINDS = {tag: kind.name for kind in KIND_REGISTRY.values() for tag in kind.hub_pipelines}
KIND_PIPELINES = {name: list(kind.hub_pipelines) for name, kind in KIND_REGISTRY.items()}
_LIBRARY_KINDS = {library: kind.name for kind in KIND_REGISTRY.values() for library in kind.hub_libraries}
_GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel")
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}  # fmt: skip
_ARCH_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TEXT_RE = re.compile(r"[\x20-\x7e]{0,100}")
_AUTHOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class KindError(BadRequest):
    """An unknown `kind=`: a 400 naming the `kind` argument."""

    reason = "invalid_kind"

    def __init__(self, message: str):
        super().__init__(message)
        self.param = "kind"


class HubUnavailable(MLXError):
    """The Hub could not be reached or answered with an error (not the client's fault)."""

    status_code = 502
    reason = "hub_unavailable"


@dataclass
class SearchQuery:
    q: str | None = None
    author: str | None = None
    arch: str | None = None
    quant: int | None = None
    max_size_bytes: int | None = None
    sort: str = "downloads"
    limit: int = 20
    kind: str | None = None
    any_format: bool = False  # `format=any`: every safetensors repo, not only MLX ones (to convert)

    @classmethod
    def parse(cls, args: dict[str, str | None]) -> SearchQuery:
        """Validate query arguments (→ 400 with the argument's name in `reason`)."""
        query = cls()
        q = args.get("q")
        if q:
            if not _TEXT_RE.fullmatch(q):
                raise BadRequest("q must be at most 100 printable ASCII characters", reason="invalid_q")
            query.q = q.strip() or None
        author = args.get("author")
        if author:
            if not _AUTHOR_RE.fullmatch(author):
                raise BadRequest("author must be a Hub user or organisation name", reason="invalid_author")
            query.author = author
        arch = args.get("arch")
        if arch:
            if not _ARCH_RE.fullmatch(arch):
                raise BadRequest("arch must be a model type such as 'llama' or 'qwen3'", reason="invalid_arch")
            query.arch = arch.lower()
        quant = args.get("quant")
        if quant:
            text = quant.strip().lower().removesuffix("bit").removesuffix("-")
            text = {"none": "16", "fp16": "16", "bf16": "16", "f16": "16"}.get(text, text)
            if not (text.isascii() and text.isdigit() and len(text) <= 2) or int(text) not in QUANT_BITS:
                raise BadRequest(
                    f"quant must be one of {', '.join(map(str, QUANT_BITS))} (bits; 16 = not quantized)",
                    reason="invalid_quant",
                )
            query.quant = int(text)
        size = args.get("max_size_gb")
        if size:
            try:
                value = float(size)
            except ValueError:
                value = -1.0
            if not 0 < value <= 100_000:
                raise BadRequest("max_size_gb must be a number of GiB greater than 0", reason="invalid_max_size_gb")
            query.max_size_bytes = int(value * 1024**3)
        sort = args.get("sort")
        if sort:
            if sort not in SORTS:
                raise BadRequest(f"sort must be one of {', '.join(SORTS)}", reason="invalid_sort")
            query.sort = sort
        kind = args.get("kind")
        if kind:
            if kind not in KINDS:
                raise KindError(f"kind must be one of {', '.join(KINDS)}")
            query.kind = kind
        fmt = args.get("format")
        if fmt:
            if fmt not in ("mlx", "any"):
                raise BadRequest("format must be mlx (the default) or any (models to convert)", reason="invalid_format")
            query.any_format = fmt == "any"
        limit = args.get("limit")
        if limit:
            if not (limit.isascii() and limit.isdigit() and len(limit) <= 3) or not 1 <= int(limit) <= 100:
                raise BadRequest("limit must be an integer from 1 to 100", reason="invalid_limit")
            query.limit = int(limit)
        return query

    @property
    def filters_here(self) -> bool:
        return self.arch is not None or self.quant is not None or self.max_size_bytes is not None or self.sort == "size"


def _bits_from(model: Any) -> tuple[int | None, int | None]:
    """(bits, group_size) from the config the Hub sends, else the tags, else the name."""
    config = model.config if isinstance(model.config, dict) else {}
    for key in ("quantization", "quantization_config"):
        quant = config.get(key)
        if isinstance(quant, dict) and isinstance(quant.get("bits"), int):
            return quant["bits"], quant.get("group_size")
    for tag in model.tags or []:
        match = re.fullmatch(r"(\d{1,2})-?bit", str(tag).lower())
        if match:
            return int(match.group(1)), None
    match = re.search(r"(?<![0-9])(\d{1,2})-?bit(?![a-z])", model.id.lower())
    if match:
        return int(match.group(1)), None
    return None, None


def hub_kind(model: Any) -> str | None:
    """The kind of a Hub model, from what the Hub says about it without downloading a file: its
    pipeline tag, else its library or tags, else its config; `text` for a repo that looks like an
    mlx-lm model, else None (unknown)."""
    kind = PIPELINE_KINDS.get(model.pipeline_tag or "")
    if kind is not None:
        return kind
    tags = [str(t).lower() for t in model.tags or []]
    library = str(getattr(model, "library_name", None) or "").lower()
    for name in (library, *tags):
        if name in _LIBRARY_KINDS:
            return _LIBRARY_KINDS[name]
    for tag in tags:
        if tag in PIPELINE_KINDS:
            return PIPELINE_KINDS[tag]
    config = model.config if isinstance(model.config, dict) else {}
    model_type = str(config.get("model_type") or "").lower().replace("-", "_")
    if model_type in TRANSCRIPTION_TYPES:
        return "transcription"
    if model_type in SPEECH_TYPES:
        return "speech"
    if model_type in ENCODER_TYPES:
        return "embedding"
    if isinstance(config.get("vision_config"), dict):
        return "vision"
    architectures = config.get("architectures") if isinstance(config.get("architectures"), list) else []
    if any(isinstance(a, str) and a.endswith(_GENERATIVE_HEADS) for a in architectures):
        return "text"
    return None


def summarize(model: Any, local_ids: set[str]) -> dict[str, Any]:
    """One search result from a `huggingface_hub.ModelInfo`."""
    config = model.config if isinstance(model.config, dict) else {}
    bits, group_size = _bits_from(model)
    size = parameters = None
    if model.safetensors is not None and isinstance(model.safetensors.parameters, dict):
        counts = model.safetensors.parameters
        size = sum(int(n) * _DTYPE_BYTES.get(str(dtype), 2) for dtype, n in counts.items())
        parameters = int(model.safetensors.total or sum(counts.values()))
        packed = int(counts.get("U32", 0))
        if packed and bits and bits < 16:
            # Quantized MLX weights: a U32 packs 32/bits weights; scales and biases (one
            # pair per group) are in the float counts and are not parameters.
            unpacked = packed * 32 // bits
            groups = unpacked // (group_size or 64)
            parameters = max(unpacked + parameters - packed - 2 * groups, unpacked)
    if size is None and isinstance(model.used_storage, int):
        size = model.used_storage
    architectures = config.get("architectures") if isinstance(config.get("architectures"), list) else []
    return {
        "id": model.id,
        "author": model.author or model.id.split("/")[0],
        "downloads": model.downloads or 0,
        "likes": model.likes or 0,
        "size_bytes": size,
        "model_type": config.get("model_type") or None,
        "architecture": (architectures[0] if architectures else None) or config.get("model_type") or None,
        "quantization": {"bits": bits, "group_size": group_size} if bits and bits < 16 else None,
        "parameters": parameters,
        "tags": list(model.tags or []),
        "pipeline_tag": model.pipeline_tag,
        "kind": hub_kind(model),
        "gated": bool(model.gated),
        "last_modified": model.last_modified.isoformat().replace("+00:00", "Z") if model.last_modified else None,
        "local": model.id in local_ids or model.id.lower() in local_ids,  # ids are case-insensitive
    }


def _matches(result: dict[str, Any], query: SearchQuery) -> bool:
    if query.kind is not None and result["kind"] != query.kind:
        return False
    if query.arch is not None:
        names = [result["model_type"] or "", result["architecture"] or ""]
        if not any(query.arch == n.lower() or (len(query.arch) > 2 and query.arch in n.lower()) for n in names):
            return False
    if query.quant is not None:
        bits = result["quantization"]["bits"] if result["quantization"] else 16
        if bits != query.quant:
            return False
    if query.max_size_bytes is not None and (
        result["size_bytes"] is None or result["size_bytes"] > query.max_size_bytes
    ):
        return False
    return True


def _sort_key(value: Any) -> tuple[bool, Any]:
    if value is None:
        return (False, 0)
    if hasattr(value, "timestamp"):
        return (True, value.timestamp())
    return (True, value)


class HubSearch:
    def __init__(
        self, endpoint: str, token: str | None = None, timeout: float = 20.0, hf_token_for_users: bool = False
    ):
        from .hub_network import fail_fast

        fail_fast()  # no network, DNS failure, refused: an answer at once, not 20 s of retries
        self.endpoint = endpoint.rstrip("/")
        self._token = token or None
        self.timeout = timeout
        self.hf_token_for_users = bool(hf_token_for_users)

    def token_for(self, user: dict[str, Any] | None) -> str | bool | None:
        """The token a search of `user` sends: the server's for admins (None: huggingface_hub's
        own), False (none) for other users unless `hf_token_for_users`."""
        return self._token if is_admin(user) or self.hf_token_for_users else False

    def _list(self, query: SearchQuery, fetch: int, token: str | bool | None = None) -> list[Any]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=token)
        sort = SORTS[query.sort] or "downloads"
        pipelines: list[str | None] = list(KIND_PIPELINES[query.kind]) if query.kind else [None]
        models: dict[str, Any] = {}
        for pipeline in pipelines:
            listed = api.list_models(
                search=query.q,
                author=query.author,
                filter="safetensors" if query.any_format else "mlx",
                pipeline_tag=pipeline,
                sort=sort,
                limit=fetch,
                expand=EXPAND,
            )
            for model in listed:
                models.setdefault(model.id, model)
        if len(pipelines) == 1:
            return list(models.values())
        # Listings merged: sorted again as the Hub sorted each one (descending, missing last).
        return sorted(models.values(), key=lambda m: _sort_key(getattr(m, sort, None)), reverse=True)

    async def search(
        self, query: SearchQuery, local_ids: set[str], user: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        from .hub_network import HubUnreachable

        # Filters the Hub cannot apply are applied to a larger first page (a `kind=` filter is
        # applied on the Hub's side, and again here on the kind derived from all it says).
        fetch = min(max(query.limit * 5, 100), 500) if query.filters_here else query.limit
        loop = asyncio.get_running_loop()
        try:
            models = await asyncio.wait_for(
                loop.run_in_executor(None, self._list, query, fetch, self.token_for(user)), self.timeout
            )
        except TimeoutError:
            raise HubUnavailable(f"the Hub at {self.endpoint} did not answer within {self.timeout:.0f} s") from None
        except HubUnreachable as exc:
            raise HubUnavailable(str(exc), reason="hub_unreachable") from None
        except OfflineModeIsEnabled:
            raise HubUnavailable("the Hub is disabled on this server (HF_HUB_OFFLINE)", reason="hub_offline") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "error"
            raise HubUnavailable(f"the Hub at {self.endpoint} answered HTTP {status}") from None
        except (httpx2.HTTPError, OSError) as exc:
            raise HubUnavailable(f"cannot reach the Hub at {self.endpoint}: {type(exc).__name__}") from None
        local_keys = {i.lower() for i in local_ids}
        results = [r for r in (summarize(m, local_keys) for m in models) if _matches(r, query)]
        if query.sort == "size":
            results.sort(key=lambda r: (r["size_bytes"] is None, r["size_bytes"] or 0))
        return results[: query.limit]
