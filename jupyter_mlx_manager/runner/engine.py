"""The generation thread: loads the model, then schedules every request on it.

All MLX work happens on this one thread (MLX streams are thread-local), except the disk prompt
cache's reads and writes, on its own threads and streams. Scheduling:

* **One active request** runs on mlx-lm's direct streaming path (`generate_step` with its
  own KV cache): no batch-of-one overhead, the single-stream speed of `stream_generate`.
* **Two or more** run in one `BatchGenerator` (continuous batching): one batched forward
  pass per decode step for all of them. A new request is admitted at the next step (its
  prompt is prefilled in the step after it arrives), not after a time slice.
* **Switching**: when a second request arrives, the direct request *migrates* into the
  batch with its KV cache (trimmed by one token, which the batch recomputes); when the
  batch is down to one decoding request and nothing waits, that request moves back to the
  direct path the same way. Greedy output does not depend on the path (tested), and
  sampling keys are derived from (seed, token index), so a seeded request samples the same
  tokens alone or batched. Models whose caches cannot be trimmed (e.g. recurrent layers)
  do not migrate: the direct request finishes on its own path, interleaved with the batch.
  Measured (tiny model, CPU): migrating beats letting the direct request finish alone by
  about 17% in wall time when 3 requests join a running one, and moving a lone survivor
  back to the direct path shortens a long tail by about 10%; the direct path itself
  decodes 7-16% faster than a batch of one (`--switch finish|batch` reproduce the others).
* **Prompt cache**: mlx-lm's `LRUPromptCache` (a token trie of KV caches, LRU by bytes).
  Each finished request stores its cache under its tokens; a new request starts from the
  longest cached prefix (a deep copy, trimmed to the common prefix), so a shared system
  prompt or a continuing conversation is not prefilled again. `cached_tokens` says how much.
  Entries are kept per scope (the command's `cache_scope`, the cache's model key): a prefix
  is reused only by requests of the same scope (one user, or everyone with "shared"). With a
  draft model, a request that speculated keeps the draft's KV cache in the same entry (in
  memory only: the disk's files are the model's), so a hit is prefilled by neither model.
  A longer prefix on disk (`disk_cache.py`) is read by the disk cache's reader thread: the
  request waits in `loading` meanwhile (at most `READ_SECONDS`; then it is prefilled instead)
  and the running streams keep their tokens.

* **Chunked, fair prefill**: a prompt longer than one chunk (or a lone one) is prefilled here,
  in its own KV cache, one `prefill_step_size` chunk per scheduler step (`_step_prefill`),
  never padded into one batch with another prompt; the chunk goes to the prompt with the fewest tokens left (every 4th to
  the one waiting longest, so a long prompt still advances). A request arriving during a long
  prefill starts decoding after its own prefill plus about one chunk, whatever the long
  prompt's length. A prefilled request joins the direct path (nothing else decoding) or the
  batch (`BatchGenerator` then feeds only its last token). A prompt of at most one chunk that
  arrives while others run goes straight to where it decodes (the batch prefills such short
  prompts together, in one padded chunk: a burst of chats costs one forward pass, as before,
  and never shares it with a long prompt). Admission, cancellation and the
  decode steps of the running requests come between chunks. Greedy output does not depend
  on the chunk size (tested).
* **Untrusted input**: every command is validated (protocol.py) before it gets here;
  every prompt token id (given or produced by the tokenizer) and every `logit_bias` id must
  be below the model's `vocab_size` (MLX does no bounds checks: an out-of-range id is
  undefined behaviour, measured as a SIGSEGV). Any failure while admitting a request ends
  that request with an `error` event; the generation thread never dies of one.
* **Memory**: `memory` (read by the heartbeat thread) carries `kv_bytes` (the live KV caches
  of the running requests: the direct request's cache plus the batch's caches, from the
  arrays' `nbytes`) and `prompt_cache_bytes`. `trim_cache` (`bytes`: N) sets the
  prompt cache's byte limit to N (at most the configured size) and trims it at once
  (`LRUPromptCache.trim_to`); the server sends it to keep the pool inside its memory budget.
* **Spare runner**: made without a model path, the thread imports MLX and mlx-lm, says
  `spare`, and waits for a `load` command; then it loads as usual.
* **Terminal events**: `done` and `error` go out through `_end` only, which records the id as
  finished first, so a cancel that arrives too late (or for an id never admitted) is dropped.

Text-level work (detokenizing, reasoning blocks, stop strings, tool-call blocks: `text.py`,
on mlx-lm's `TextStateMachine`) is per request and the same on both paths.

* **Structured output**: a `response_format` becomes a llguidance token mask
  (`grammar.py`), one more logits processor of the request: it travels with the request
  onto the direct path and into batch rows, and `_rewind_sampler` re-synchronises it (like
  the keyed sampler) when the request migrates or is demoted. A request whose JSON is
  complete ends at once (only EOS could follow).
* **Tool choice**: `tool_choice: "required"` (one tool left when the client named it) and
  `strict_tools` become a grammar too, in the model's own tool-call format (`tool_call_start`
  / `tool_call_end` around `{"name": …, "arguments": …}`, mlx-lm's `json_tools` parser): a
  forced request must emit one call whose arguments match the tool's schema, and ends when it
  closes. A model whose tool-call format is another one refuses such requests (400).
* **Echo scoring** (completions `echo` with `logprobs`, lm-eval's loglikelihood): the prompt's
  own log-probabilities are computed one `prefill_step_size` chunk per scheduler step, like a
  prefill (`_step_scoring`), so decoding streams keep going; then the request generates from
  that KV cache, or ends (`max_tokens: 0`).
* **Logprobs**: a request with `logprobs: k` (0 to 20) gets, on each `text` event, the
  log-probability of every token behind that text and its `k` most likely alternatives
  (`_logprob_entry`), read from the row the path already computed; others pay nothing.
"""

from __future__ import annotations

import importlib
import json
import queue
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol
from .disk_cache import READ_SECONDS
from .grammar import GrammarProcessor, Grammars, UnsupportedSchema, schema_of
from .protocol import GenerateCommand, LoadCommand, TrimCacheCommand, brief
from .templates import place_system_messages, renders_system_mid_conversation
from .text import TextFilter

Emit = Callable[[protocol.Event], None]
MODEL_KEY = "model"  # the prompt cache is per runner, hence per model
# Prefill scheduling: of every PREFILL_AGING_PERIOD chunks, one goes to the request that has
# waited longest (the others to the one with the fewest tokens left), so short prompts pass a
# long one while it still advances.
PREFILL_AGING_PERIOD = 4
# Prompt-lookup speculation: up to this many draft tokens per step, continuing the latest earlier
# occurrence of the last LOOKUP_NGRAM (down to 1) tokens in the prompt and the answer so far.
SPECULATIVE_TOKENS = 4
LOOKUP_NGRAM = 3
# Draft-model speculation: tokens the draft model proposes per step (mlx-lm's `num_draft_tokens`).
DRAFT_TOKENS = 3
SPECULATIVE_MODES = ("prompt_lookup", "draft_model")
JOIN_STEPS = 4  # batch steps in a row that start a request joining during a long prefill (`_start_joined`)
MEMORY_UPDATE_SECONDS = 0.2
DISK_READ_POLL_SECONDS = 0.02  # with nothing else to run, how long to wait for a disk read before looking at the inbox
# Entries kept besides the byte budget: mlx-lm's nearest-prefix lookup visits every entry that
# shares the chat template's prefix, on the generation thread at each admission (measured: 16 ms
# at 100 entries, 167 ms at 1,000), so every stream would stall longer as the cache fills.
PROMPT_CACHE_MAX_ENTRIES = 128
# Logits held at once while scoring a prompt (echo): rows × vocabulary, 128 MiB of float32.
SCORE_LOGITS = 1 << 25
LOGPROB_FLOOR = -9999.0  # what OpenAI reports for a token that cannot be sampled (-inf is not JSON)
JSON_CALL_PARSERS = ("mlx_lm.tool_parsers.json_tools",)  # tool parsers that read {"name", "arguments"}
# What a spare runner imports beyond mlx-lm's core, so that a load does not: the usual
# architectures and the tokenizer classes (transformers imports them lazily).
SPARE_PRELOADS = (
    ("mlx_lm.models.llama", None), ("mlx_lm.models.qwen2", None), ("mlx_lm.models.qwen3", None),
    ("transformers", "PreTrainedTokenizerFast"), ("transformers", "AutoTokenizer"),
)  # fmt: skip


EMBEDDING_NAMES = ("embed_tokens", "wte", "tok_embeddings", "word_embeddings", "embedding", "embeddings")


def vocab_size_of(model: Any) -> int | None:
    """Rows of the model's token embedding table: the bound for every input token id.

    Read from the embedding module (robust across model classes: `nn.Embedding` and
    `nn.QuantizedEmbedding` both keep one row per token in `weight.shape[0]`) and from
    `args.vocab_size` (or `args.text_config`); the smaller of the two when both are known."""
    known = []
    embeddings = []
    try:
        for name, module in model.named_modules():
            weight = module.get("weight") if isinstance(module, dict) else None
            if "Embedding" in type(module).__name__ and getattr(weight, "ndim", 0) == 2:
                embeddings.append((name.rsplit(".", 1)[-1] in EMBEDDING_NAMES, int(weight.shape[0])))
    except Exception:
        embeddings = []
    preferred = [rows for named, rows in embeddings if named]
    if preferred:
        known.append(min(preferred))
    elif len(embeddings) == 1:
        known.append(embeddings[0][1])
    args = getattr(model, "args", None)
    for source in (args, getattr(args, "text_config", None)):
        value = source.get("vocab_size") if isinstance(source, dict) else getattr(source, "vocab_size", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            known.append(value)
            break
    return min(known) if known else None


def _hidden_special_ids(tokenizer: Any, tool_markers: tuple[str | None, str | None] | None = None) -> set[int]:
    """The special tokens a reply's text never shows (as `skip_special_tokens` decodes): every
    added token the tokenizer marks special (`all_special_ids` often holds only eos and pad), but
    the markers the text filter reads (tool-call and thinking tags, which some models mark special).
    `tool_markers`: a profile's tool-call format's (default: the tokenizer's)."""
    if tool_markers is None:
        tool_markers = (getattr(tokenizer, "tool_call_start", None), getattr(tokenizer, "tool_call_end", None))
    markers = {*tool_markers, getattr(tokenizer, "think_start", None), getattr(tokenizer, "think_end", None)}
    added = getattr(getattr(tokenizer, "_tokenizer", None), "added_tokens_decoder", None) or {}
    shown = markers - {None}
    return {i for i, t in added.items() if getattr(t, "special", False) and getattr(t, "content", str(t)) not in shown}


class ModelRefused(Exception):
    """The model cannot be loaded safely or at all; the message says why."""


def check_model_dir(path: Path) -> dict[str, Any]:
    """Refuse what mlx-lm would load wrongly or unsafely, with a message a user can act on."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelRefused(f"{path} has no config.json: not a model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelRefused("config.json is not a JSON object")
    if "model_file" in config or "auto_map" in config:
        raise ModelRefused(
            "this model ships its own Python code (config.json names 'model_file' or 'auto_map'); "
            "running code from a model is not allowed (trust_remote_code stays off)"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelRefused(f"{path} has no .safetensors weights")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelRefused(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return config


class KeyedSampler:
    """Temperature (+ top-p) sampling whose random key depends only on (seed, token index).

    The same seed gives the same tokens whether the request decodes alone or in a batch,
    and after a switch between the two (the index is reset to the token being recomputed).
    """

    def __init__(self, mx: Any, temperature: float, top_p: float, seed: int, top_k: int = 0, min_p: float = 0.0):
        from mlx_lm import sample_utils

        self.mx = mx
        self.scale = 1.0 / temperature
        self.top_p = top_p if 0 < top_p < 1 else 0.0
        self.top_k = max(0, top_k)
        self.min_p = min_p if 0 < min_p < 1 else 0.0
        self.filters = sample_utils
        self.seed = seed & 0xFFFFFFFF
        self.index = 0

    def __call__(self, logprobs: Any) -> Any:
        key = self.mx.random.key((self.seed << 31) ^ self.index)
        self.index += 1
        if self.top_k and self.top_k < logprobs.shape[-1]:
            logprobs = self.filters.apply_top_k(logprobs, self.top_k)
        if self.min_p:
            logprobs = self.filters.apply_min_p(logprobs, self.min_p)
        if self.top_p:
            logprobs = self.filters.apply_top_p(logprobs, self.top_p)
        return self.mx.random.categorical(logprobs * self.scale, key=key)


@dataclass(frozen=True)
class ToolFormat:
    """A request's tool-call format: the one the chat template implies (the tokenizer's), or a
    profile's `tool_parser` (mlx-lm's module). Its markers and parse function, and the special
    tokens hidden from text (all but its markers, which the text filter reads)."""

    start: str | None
    end: str | None
    parse: Any
    hidden_ids: frozenset[int]


@dataclass
class Request:
    id: str
    prompt: list[int]
    max_tokens: int
    cached_tokens: int
    rest: list[int]  # the prompt tokens still to prefill (after the cached prefix)
    cache: Any  # KV cache for the direct path (None while batched)
    sampler: Any
    processors: list[Any]
    detokenizer: Any
    filter: TextFilter
    eos: set[int]
    tool_format: ToolFormat
    generated: list[int] = field(default_factory=list)  # every token sampled, EOS included
    steps: Any = None  # the generate_step generator on the direct path
    draft_cache: Any = None  # draft-model speculation: the draft model's KV cache (a prefix of prompt + generated)
    pending: list[int] = field(default_factory=list)  # direct path: tokens still to feed before generate_step
    fed: list[int] = field(default_factory=list)  # direct path: the tokens in `cache` while prefilling
    uid: int | None = None  # BatchGenerator uid while batched
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    tool_calls: int = 0
    grammar: GrammarProcessor | None = None  # structured output: the token mask (also in `processors`)
    thinking: bool = False  # a chat request on a thinking model: reasoning is parsed out
    reasoning_tokens: int = 0
    logprobs: int | None = None  # alternatives per token to report (None: no logprobs at all)
    token_logprobs: list[dict[str, Any]] = field(default_factory=list)  # entries not yet sent
    completion: bool = False  # a completions request (its logprobs include an end-of-text token)
    echo: str | None = None  # an echo request's prompt text
    scores: list[dict[str, Any]] | None = None  # an echo request's prompt logprob entries while it is scored
    cache_key: Any = MODEL_KEY  # its prompt-cache scope: prefixes are reused only under the same key
    speculative: str | None = None  # its speculation mode (SPECULATIVE_MODES; None: plain decoding)


@dataclass
class DiskRead:
    """A command waiting for its prompt's longer cached prefix to be read from disk (its prompt
    tokens kept: the chat template is not rendered twice)."""

    command: GenerateCommand
    prompt: list[int]
    hit: futures.Future[Any]  # of a disk_cache.Hit, or None when the file turned out unusable
    since: float = field(default_factory=time.perf_counter)

    @property
    def ready(self) -> bool:
        """Read, or given up (`READ_SECONDS`: the request is then prefilled instead)."""
        return self.hit.done() or time.perf_counter() - self.since > READ_SECONDS

    def result(self) -> Any:
        """The disk_cache.Hit, or None: the file was unusable, or the read was given up (raises
        what the read raised)."""
        if not self.hit.done():
            self.hit.cancel()  # if it has not started; a hung one is left to its thread
            return None
        return self.hit.result()


class Engine:
    def __init__(
        self,
        model_path: Path | None,
        emit: Emit,
        prompt_cache_bytes: int = 1 << 30,
        switch: str = "migrate",
        emit_many: Callable[[list[protocol.Event]], None] | None = None,
        prefill_step_size: int = 512,
        disk_cache: dict[str, Any] | None = None,
        speculative: str | None = None,
        draft_path: Path | None = None,
    ):
        self.model_path = model_path
        # Speculative decoding (greedy requests on the direct path): "prompt_lookup", or
        # "draft_model" with the draft model's folder (a model sharing this one's tokenizer).
        self.draft_path = draft_path
        self.draft_model: Any = None
        self.draft_layers = 0  # KV-cache layers of the draft model (`_split_draft`)
        # The prompt cache on disk (`disk_cache.py`): {"directory", "max_bytes", "min_tokens"}, or None.
        self.disk_cache_options = disk_cache if disk_cache and disk_cache.get("max_bytes") else None
        self.disk_cache: Any = None
        self.speculative = "draft_model" if draft_path is not None else speculative
        if self.speculative not in SPECULATIVE_MODES:
            self.speculative = None
        self.emit_one = emit
        self.emit_many = emit_many or (lambda messages: [emit(m) for m in messages])
        self.prompt_cache_bytes = max(0, int(prompt_cache_bytes))
        self.prompt_cache_limit = self.prompt_cache_bytes  # the server's share (trim_cache), at most the above
        # "migrate" (default), "finish" (a direct request finishes on its own path while the
        # others batch) or "batch" (no direct path at all): the latter two for benchmarks.
        self.switch = switch
        self.prefill_step_size = max(1, int(prefill_step_size))
        self.inbox: queue.Queue[protocol.Command] = queue.Queue()
        self.cancelled: set[str] = set()  # added to by the command reader; only ids still to come or running
        self.memory: dict[str, Any] = {
            "mlx_active_bytes": 0, "mlx_peak_bytes": 0, "kv_bytes": 0, "prompt_cache_bytes": 0,
        }  # fmt: skip
        self.direct: Request | None = None
        self.scoring: deque[Request] = deque()  # echo requests whose prompt is being scored, in order
        self.prefilling: list[Request] = []  # prompts being prefilled by `_step_prefill`, in arrival order
        self.loading: list[DiskRead] = []  # commands whose cached prefix the disk cache is reading
        self._prefill_turn = 0
        self.batched: dict[int, Request] = {}
        self.batch: Any = None
        self.prompt_cache: Any = None
        self.vocab_size: int | None = None
        # Tool-call formats by parser name (None: the tokenizer's own), made on first use (`_tool_format`).
        self.tool_formats: dict[str | None, ToolFormat] = {}
        self.stats = {
            "migrations": 0, "demotions": 0, "batch_steps": 0, "direct_steps": 0, "prefill_chunks": 0,
            "pending_cancels": 0, "speculative_accepted": 0, "speculative_rejected": 0,
        }  # fmt: skip
        # Liveness for the server's watchdog (read by the heartbeat thread): `progress` moves on
        # every scheduler step, prefill chunk and admitted command; `admitting` is set while a
        # command is being admitted.
        self.progress = 0
        self.admitting = False
        self._events: list[protocol.Event] = []
        self._finished_ids: set[str] = set()
        self._finished_order: deque[str] = deque()
        self._memory_at = 0.0
        self._token_infos: dict[int, dict[str, Any]] = {}  # logprobs: {token, bytes} by token id
        self._byte_tokenizer: Any = None  # llguidance's tokenizer for token bytes; False: none

    @property
    def active(self) -> list[Request]:
        direct = [self.direct] if self.direct is not None else []
        return direct + list(self.batched.values()) + list(self.scoring) + self.prefilling

    @property
    def _has_work(self) -> bool:
        return self.direct is not None or bool(self.batched) or bool(self.scoring) or bool(self.prefilling)

    @property
    def busy(self) -> bool:
        """Whether the generation thread has work (requests running or a command being admitted)."""
        return self.admitting or self._has_work

    def emit(self, message: protocol.Event) -> None:
        """Queue an event; `_flush` writes the step's events in one go."""
        self._events.append(message)

    def _flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self.emit_many(events)

    @staticmethod
    def _log(message: str) -> None:
        try:
            print(f"jupyter_mlx_manager.runner: {message}", file=sys.stderr, flush=True)
        except Exception:
            pass

    # -- life cycle (the generation thread) --------------------------------------------------
    def run(self) -> None:
        try:
            if self.model_path is None and not self._wait_for_model():  # a spare runner
                return
            config = check_model_dir(self.model_path)
            import mlx.core as mx
            from mlx_lm import load
            from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache
            from mlx_lm.utils import load_model

            from ..models.inspection import adapter_base, context_length, read_json

            self.mx = mx
            base = adapter_base(self.model_path)  # an adapter/<name>: its base model plus the adapter
            self.model, self.tokenizer = load(
                base["base_path"] if base else str(self.model_path),
                adapter_path=str(self.model_path) if base else None,
                trust_remote_code=False,
            )
            self.make_cache = lambda: make_prompt_cache(self.model)
            if self.draft_path is not None:  # refused like the model if it ships code; no tokenizer:
                check_model_dir(self.draft_path)  # the server checked that it shares the model's
                self.draft_model = load_model(self.draft_path, trust_remote_code=False)[0]
                self.draft_layers = len(make_prompt_cache(self.draft_model))
            if self.prompt_cache_bytes:
                self.prompt_cache = LRUPromptCache(max_size=PROMPT_CACHE_MAX_ENTRIES, max_bytes=self.prompt_cache_limit)
            if self.disk_cache_options is not None:
                from .disk_cache import DiskPromptCache, weights_identity

                folders = [Path(base["base_path"]), self.model_path] if base else [self.model_path]
                self.disk_cache = DiskPromptCache(mx, identity=weights_identity(folders), **self.disk_cache_options)
            self.vocab_size = vocab_size_of(self.model) or self._vocab_size_from_logits()
            # The catalog's rule (no MLX there): the server reports what the runner enforces.
            self.context_length = context_length(config, read_json(self.model_path / "tokenizer_config.json"))
        except Exception as exc:  # any load failure is reported, then the runner exits
            self.emit_one(
                {
                    "ev": "failed",
                    "error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, ModelRefused) else str(exc),
                }
            )
            return
        self.eos = set(self.tokenizer.eos_token_ids)
        tokenizer = self.tokenizer
        self.tool_formats[None] = ToolFormat(tokenizer.tool_call_start, tokenizer.tool_call_end,
                                             tokenizer.tool_parser, frozenset(_hidden_special_ids(tokenizer)))  # fmt: skip
        self._update_memory()
        self.emit_one(
            {
                "ev": "ready",
                "rss_bytes": _rss_bytes(),
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "tool_calling": self.tokenizer.tool_parser is not None,
                "eos_token_ids": sorted(self.tokenizer.eos_token_ids),
            }
        )
        try:
            while True:
                busy = self._has_work
                if not busy or not self.inbox.empty():
                    if not self._admit(block=not busy and not self.loading):
                        return
                try:
                    if self.cancelled:
                        self._cancel_requested()
                    if self.loading:
                        self._admit_read(wait=not self._has_work)
                    # Decoding first: a short prompt admitted while a long chunk ran starts (its
                    # first token) before the next long chunk, not after it.
                    if self.direct is not None:
                        self._step_direct()
                    if self.batched:
                        self._step_batch()
                        self._start_joined()
                        self._maybe_demote()
                    if self.prefilling:
                        self._flush()  # their tokens go out now, not after the chunk
                        self._step_prefill()
                    if self.scoring:
                        self._step_scoring()
                except Exception as exc:  # a bug or an MLX failure: fail what runs, keep serving
                    self._fail_all(exc)
                self.progress += 1
                self._flush()
                now = time.monotonic()
                if now - self._memory_at > MEMORY_UPDATE_SECONDS:
                    self._memory_at = now
                    self._update_memory()
        finally:
            self._flush()

    def _wait_for_model(self) -> bool:
        """A spare runner: import MLX and mlx-lm now (on this thread, which owns the MLX streams),
        say `spare`, then wait for a `load` command. False when told to shut down first."""
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
        import mlx_lm.generate  # noqa: F401
        import mlx_lm.models.cache  # noqa: F401
        import mlx_lm.sample_utils  # noqa: F401

        for name, attribute in SPARE_PRELOADS:  # optional: a module that is missing is no error
            try:
                module = importlib.import_module(name)
                if attribute:
                    getattr(module, attribute)
            except Exception:
                pass
        self.emit_one({"ev": "spare", "rss_bytes": _rss_bytes()})
        while True:
            command = self.inbox.get()
            if command.op == "shutdown":
                return False
            if self._handled_trim(command):
                continue
            if not isinstance(command, LoadCommand):
                self._log(f"spare runner: skipped a {command.op} command (waiting for a load command)")
                continue
            if command.prompt_cache_bytes is not None:
                self.prompt_cache_bytes = command.prompt_cache_bytes
            if command.prefill_step_size is not None:
                self.prefill_step_size = command.prefill_step_size
            self.prompt_cache_limit = self.prompt_cache_bytes
            if command.draft_path is not None:
                self.draft_path, self.speculative = Path(command.draft_path), "draft_model"
            elif command.speculative is not None:
                self.speculative = command.speculative
            self.model_path = Path(command.path)
            return True

    def _handled_trim(self, command: protocol.Command) -> bool:
        """Whether `command` was a `trim_cache` (answered at once, loading or serving)."""
        if not isinstance(command, TrimCacheCommand):
            return False
        self._trim_prompt_cache(command.bytes)
        self._flush()
        return True

    def _trim_prompt_cache(self, limit: int) -> None:
        """`trim_cache`: the prompt cache may hold at most `limit` bytes from now on (never more
        than the configured size); trimmed at once, least recently used entries first."""
        self.prompt_cache_limit = min(limit, self.prompt_cache_bytes)
        try:
            if self.prompt_cache is not None:
                self.prompt_cache.max_bytes = self.prompt_cache_limit
                self.prompt_cache.trim_to(n_bytes=self.prompt_cache_limit)
                self.mx.clear_cache()
            self._update_memory()
        except Exception as exc:  # never fatal to the generation thread; the answer says what is held
            self._log(f"trimming the prompt cache: {type(exc).__name__}: {exc}")
        self.emit(
            {
                "ev": "trimmed",
                "prompt_cache_bytes": self.memory.get("prompt_cache_bytes", 0),
                "limit_bytes": self.prompt_cache_limit,
            }
        )

    def _kv_bytes(self) -> int:
        """Bytes of the running requests' KV caches (direct path, scoring, prefilling, batch; draft
        models' included), from the arrays."""
        outside = [r for r in (self.direct, *self.scoring, *self.prefilling) if r is not None]
        total = sum(int(c.nbytes) for r in outside for c in [*(r.cache or ()), *(r.draft_cache or ())])
        if self.batch is not None and self.batched:
            total += int(self.batch.prompt_cache_nbytes)
        return total

    def _vocab_size_from_logits(self) -> int:
        """Last resort when neither the embedding nor the config says: the width of the logits."""
        logits = self.model(self.mx.array([[0]]))
        return int(logits.shape[-1])

    def _admit(self, block: bool) -> bool:
        """Start every queued request; False when told to shut down."""
        if block:  # going idle: publish the final figures first
            self._update_memory()
        while True:
            try:
                command = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                if block:
                    if self.cancelled:  # cancels of finished requests: drop them while idle too
                        self._cancel_requested()
                    self._update_memory()
                    continue
                return True
            if command.op == "shutdown":
                return False
            if self._handled_trim(command):
                continue
            self.admitting = True
            try:
                self._admit_one(command)
            finally:
                self.admitting = False
                self.progress += 1
            self._flush()
            block = False

    def _admit_read(self, wait: bool) -> None:
        """Admit the commands whose prefix the disk cache has read; with nothing else to run,
        wait a moment for one first (not a busy loop)."""
        if wait:
            futures.wait([d.hit for d in self.loading], DISK_READ_POLL_SECONDS, futures.FIRST_COMPLETED)
        for read in [d for d in self.loading if d.ready]:
            self.loading.remove(read)
            self.admitting = True
            try:
                self._admit_one(read.command, read)
            finally:
                self.admitting = False
                self.progress += 1
            self._flush()

    def _admit_one(self, command: protocol.Command, read: DiskRead | None = None) -> None:
        """Admit one command (`read`: again, its prefix read from disk); whatever goes wrong fails
        that request only (never this thread)."""
        if not isinstance(command, GenerateCommand):  # a `load` to a runner that has its model
            self._log(f"skipped a {command.op} command")
            return
        rid = command.id
        if any(r.id == rid for r in self.active) or any(d.command.id == rid for d in self.loading):
            self._log(f"skipped a second generate command for running request {brief(rid)}")
            return
        try:
            request = self._start(command, read)
            if request is not None:
                self._place(request)
        except _InvalidRequest as exc:
            self._error(rid, str(exc), "invalid_request_error", exc.code, exc.param)
        except Exception as exc:
            self._error(rid, f"{type(exc).__name__}: {exc}")

    # -- admission -----------------------------------------------------------------------------
    def _start(self, command: GenerateCommand, read: DiskRead | None = None) -> Request | None:
        """A Request for a command (raises _InvalidRequest where the model refuses it), or None
        if it was cancelled before it could start or waits for its prefix to be read from disk
        (then in `loading`; `read` when it is back)."""
        from mlx_lm.sample_utils import greedy_sampler, make_logits_processors

        rid = command.id
        if rid in self.cancelled:
            self._end_unstarted(rid)
            return None
        echo, logprobs, reasoning, tools = command.echo, command.logprobs, command.reasoning, command.tools
        bias = self._logit_bias(command.logit_bias)
        tool_format = self._tool_format(command.tool_parser)
        forced = command.tool_choice == "required"  # only with tools (the command's own check)
        strict = set(command.strict_tools or ()) if tools else set()
        try:
            schema = schema_of(command.response_format)
        except ValueError as exc:
            raise _InvalidRequest(str(exc), "invalid_field", "response_format") from None
        except UnsupportedSchema as exc:
            raise _InvalidRequest(str(exc), "unsupported_schema", "response_format") from None
        thinking = command.kind == "chat" and bool(getattr(self.tokenizer, "has_thinking", False))
        prompt = read.prompt if read else self._prompt_tokens(command, enable_thinking=reasoning if thinking else None)
        if not prompt:
            raise _InvalidRequest("the prompt is empty", "empty_prompt", "prompt")
        self._check_token_ids(prompt)
        context = min(self.context_length, command.context_length or self.context_length)  # a profile's may be lower
        budget = context - len(prompt)
        if budget <= 0:
            raise _InvalidRequest(too_long(len(prompt), context), "context_length_exceeded", "prompt")
        max_tokens = min(command.max_tokens, budget)
        cache_key = (MODEL_KEY, command.cache_scope)
        scoring = echo and logprobs is not None
        if scoring:  # the whole prompt is computed to score it (`_step_scoring`), then the last token fed
            cache, rest, cached = self.make_cache(), prompt[-1:], 0
        else:
            found = self._cached_prefix(cache_key, prompt, read)
            if isinstance(found, futures.Future):
                self.loading.append(DiskRead(command, prompt, found))  # before a grammar is compiled: once
                return None
            cache, rest = found
            cached = len(prompt) - len(rest)
        if command.temperature <= 0:
            sampler = greedy_sampler  # one shared object: the batch samples greedy rows in one call
        else:
            seed = secrets.randbits(32) if command.seed is None else command.seed
            sampler = KeyedSampler(
                self.mx, command.temperature, command.top_p, seed, command.top_k or 0, command.min_p or 0.0
            )
        processors = make_logits_processors(
            logit_bias=bias or None,
            repetition_penalty=command.repetition_penalty,
            presence_penalty=command.presence_penalty,
            frequency_penalty=command.frequency_penalty,
        )
        initial = "normal"
        if thinking:  # the template opened a think block the model is to close (as mlx_lm.server decides)
            start, end = self.tokenizer.rfind_think_start(prompt), self.tokenizer.rfind_think_end(prompt)
            if start >= 0 and start > end:
                initial = "reasoning"
        grammar = None
        mode = None if not thinking or reasoning is False else ("open" if initial == "reasoning" else "optional")
        if forced or strict:  # the mask goes last: nothing (logit_bias included) can unmask a token
            grammar = self._tool_grammar(tools, forced, strict, schema, mode, tool_format)
        elif schema is not None:
            try:
                grammar = self._grammars().processor(self.mx, schema, mode)
            except UnsupportedSchema as exc:
                raise _InvalidRequest(str(exc), "unsupported_schema", "response_format") from None
        if grammar is not None:
            processors = [*processors, grammar]
        parser = tool_format.parse if tools else None
        text_filter = TextFilter(
            stop=command.stops,
            tool_call_start=tool_format.start,
            tool_call_end=tool_format.end,
            parse_tool_call=(lambda text: parser(text, tools)) if parser else None,
            think_start=self.tokenizer.think_start if thinking else None,
            think_end=self.tokenizer.think_end if thinking else None,
            initial_state=initial,
        )
        cache, draft_cache = self._split_draft(cache)
        request = Request(
            rid, prompt, max_tokens, cached, rest, cache, sampler, processors,
            self.tokenizer.detokenizer, text_filter, self.eos, tool_format, grammar=grammar, thinking=thinking,
            logprobs=logprobs, completion=command.kind == "completion", cache_key=cache_key,
            speculative=command.speculative or self.speculative, started=read.since if read else time.perf_counter(),
        )  # fmt: skip
        if draft_cache is not None and request.speculative == "draft_model" and self._speculates(request):
            request.draft_cache = draft_cache  # others (sampled, structured, batched-only) never read it
        self.emit({"ev": "started", "id": rid, "prompt_tokens": len(prompt), "cached_tokens": cached})
        if echo:
            request.echo = command.prompt if isinstance(command.prompt, str) else self.tokenizer.decode(prompt)
        if scoring:
            request.scores = [{**self._token_info(prompt[0]), "logprob": None, "top_logprobs": []}]
            return request  # `_place` queues it for scoring
        if echo:
            self._echo(request)
            if max_tokens == 0:
                self._finish(request, "length", (cache, prompt[:cached]))
                return None
        return request

    def _echo(self, request: Request) -> None:
        """An echo request's `prompt` event (with the prompt's scores when it asked for logprobs)."""
        scores, request.scores = request.scores, None
        self.emit({"ev": "prompt", "id": request.id, "text": request.echo, **({"logprobs": scores} if scores else {})})

    def _step_scoring(self) -> None:
        """One chunk of the first scoring request's prompt: each token's log-probability given
        the tokens before it, with `logprobs` alternatives, as `logprobs` entries (the model's own
        log-softmax in float32, without logit_bias, penalties or mask: those shape sampling),
        fed `prefill_step_size` tokens at a time (fewer for a wide vocabulary, to bound the
        logits held at once), so other streams keep going between chunks. When all but the last
        token are in its KV cache it sends its `prompt` event and generates (or ends: max_tokens 0)."""
        request = self.scoring[0]
        prompt, fed = request.prompt, len(request.scores) - 1
        step = max(1, min(self.prefill_step_size, SCORE_LOGITS // max(1, self.vocab_size or 1)))
        chunk = prompt[fed : min(fed + step, len(prompt) - 1)]
        try:
            if chunk:
                self._score_chunk(request, chunk, prompt[fed + 1 : fed + 1 + len(chunk)])
        except Exception as exc:
            self.scoring.popleft()
            self._error(request.id, f"{type(exc).__name__}: {exc}")
            return
        if len(request.scores) < len(prompt):
            return
        self.scoring.popleft()
        self._echo(request)
        if request.max_tokens == 0:
            self._finish(request, "length", (request.cache, prompt[:-1]))
        else:
            self._place(request)

    def _score_chunk(self, request: Request, chunk: list[int], targets: list[int]) -> None:
        from mlx_lm.generate import generation_stream

        mx, top = self.mx, request.logprobs
        wanted = mx.array(targets)
        with mx.stream(generation_stream):
            logits = self.model(mx.array(chunk)[None], cache=request.cache)[0].astype(mx.float32)
            rows = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            chosen = mx.take_along_axis(rows, wanted[:, None], axis=-1)[:, 0]
            rows = rows[:, : self.vocab_size or rows.shape[-1]]  # alternatives are real tokens only
            width = min(top, rows.shape[-1])
            best = mx.argpartition(-rows, width - 1, axis=-1)[:, :width] if width else rows[:, :0].astype(mx.int32)
            picked = mx.take_along_axis(rows, best, axis=-1)
            mx.eval(chosen, best, picked, [c.state for c in request.cache])
        mx.clear_cache()
        self.stats["prefill_chunks"] += 1
        for token, value, ids, values in zip(targets, chosen.tolist(), best.tolist(), picked.tolist()):
            ranked = sorted(zip(values, ids), key=lambda pair: -pair[0])
            alternatives = [{**self._token_info(i), "logprob": max(v, LOGPROB_FLOOR)} for v, i in ranked]
            request.scores.append(
                {**self._token_info(token), "logprob": max(value, LOGPROB_FLOOR), "top_logprobs": alternatives}
            )

    def _tool_format(self, name: str | None) -> ToolFormat:
        """The tool-call format of mlx-lm's tool parser `name` (a profile's), or of the tokenizer
        (None). Only modules of mlx-lm's `tool_parsers` package are imported."""
        if name in self.tool_formats:
            return self.tool_formats[name]
        from ..models.inspection import tool_parser_names

        if name not in tool_parser_names():
            raise _InvalidRequest(f"mlx-lm has no tool parser {name!r}", "invalid_field", "tool_parser")
        module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
        markers = (module.tool_call_start, module.tool_call_end)
        hidden = frozenset(_hidden_special_ids(self.tokenizer, markers))
        made = self.tool_formats[name] = ToolFormat(*markers, module.parse_tool_call, hidden)
        return made

    def _tool_grammar(
        self,
        tools: list[Any],
        forced: bool,
        strict: set[str],
        schema: dict[str, Any] | None,
        mode: str | None,
        tool_format: ToolFormat,
    ) -> GrammarProcessor:
        """The mask that makes the model call a tool (`forced`) or keeps the arguments of
        `strict` tools to their schemas, in the request's tool-call format."""
        param = "tool_choice" if forced else "tools"
        start, end, parser = tool_format.start, tool_format.end, tool_format.parse
        if parser is None or getattr(parser, "__module__", None) not in JSON_CALL_PARSERS:
            reason = (
                "this model has no tool-call format (mlx-lm found no tool parser for it)"
                if parser is None
                else f"this model's tool-call format ({parser.__module__}) cannot be enforced yet"
            )
            raise _InvalidRequest(
                f"{reason}: use tool_choice 'auto' without strict tools", "unsupported_tool_choice", param
            )
        calls = []
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _InvalidRequest("each tool needs function.name", "invalid_field", "tools")
            exact = forced or function["name"] in strict
            parameters = function.get("parameters") if exact else None
            calls.append((function["name"], parameters if isinstance(parameters, dict) else {"type": "object"}))
        markers = (self._marker(start), self._marker(end), start)
        try:
            return self._grammars().tool_processor(self.mx, calls, markers, forced, schema, mode)
        except UnsupportedSchema as exc:
            raise _InvalidRequest(str(exc), "unsupported_schema", param) from None

    def _marker(self, text: str) -> str:
        """A tool-call marker in llguidance's lark: the token itself if it is one, else the text."""
        ids = _token_list(self.tokenizer.encode(text, add_special_tokens=False))
        return f"<[{ids[0]}]>" if len(ids) == 1 else json.dumps(text)

    def _grammars(self) -> Grammars:
        """The runner's grammar engine (llguidance), made on the first structured request."""
        grammars = getattr(self, "grammars", None)
        if grammars is None:
            try:
                think = (self.tokenizer.think_start_id, self.tokenizer.think_end_id)
            except (ValueError, AttributeError):  # multi-token markers: no think block before the JSON
                think = None
            if think is not None and None in think:
                think = None
            hf_tokenizer = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
            grammars = self.grammars = Grammars(hf_tokenizer, self.model_path, self.eos, self.vocab_size, think)
        return grammars

    def _check_token_ids(self, tokens: list[int]) -> None:
        """Every id must index the embedding table: MLX does not check (out of range = UB)."""
        limit = self.vocab_size
        if limit is None:
            return
        for token in tokens:
            if not 0 <= token < limit:
                raise _InvalidRequest(
                    f"prompt token id {token} is out of range: this model's token ids are 0 to {limit - 1}",
                    "invalid_token_id",
                    "prompt",
                )

    def _logit_bias(self, raw: dict[str, float] | None) -> dict[int, float]:
        """{token id: bias}, every id inside the vocabulary (the values' types are the command's)."""
        if raw is None:
            return {}
        limit = self.vocab_size
        bias = {}
        for key, value in raw.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                raise _InvalidRequest(
                    f"logit_bias key {brief(key)} is not a token id", "invalid_logit_bias", "logit_bias"
                ) from None
            if limit is not None and not 0 <= token < limit:
                raise _InvalidRequest(
                    f"logit_bias token id {token} is out of range: token ids must be in [0, {limit})",
                    "invalid_logit_bias",
                    "logit_bias",
                )
            bias[token] = float(value)
        return bias

    def _cached_prefix(
        self, cache_key: Any, prompt: list[int], read: DiskRead | None
    ) -> tuple[Any, list[int]] | futures.Future[Any]:
        """(KV cache, tokens still to prefill): the longest prefix cached under this request's
        scope (`cache_key`), in memory or on disk (`read`: the disk's, read for this request),
        else a fresh cache. A longer prefix on disk is first read off this thread: the reading's
        Future instead."""
        from mlx_lm.models.cache import trim_prompt_cache

        cache, rest = None, prompt
        if self.prompt_cache is not None:
            cache, rest = self.prompt_cache.fetch_nearest_cache(cache_key, prompt)
        hit = len(prompt) - len(rest)
        if read is not None:
            try:
                disk = read.result()
            except Exception as exc:  # a failed read costs only the cached prefix
                self._log(f"a prompt-cache read failed: {type(exc).__name__}: {exc}")
                disk = None
            if disk is not None and disk.common > hit:  # (memory may have caught up meanwhile)
                cache, rest = disk.cache, prompt[disk.common :]
                trim_prompt_cache(cache, disk.held - disk.common)
        elif self.disk_cache is not None and hit < len(prompt) - 1:
            # A longer prefix on disk (after an unload, a crash, a restart)? Not when memory has all
            # but the last token: that one is recomputed for its logits anyway (and the memory entry
            # may hold the draft model's cache too).
            reading = self.disk_cache.fetch(cache_key[1], prompt, better_than=hit)
            if reading is not None:
                return reading
        if cache is not None:
            if not rest:  # all of it is cached: recompute the last token for its logits
                if self._trim_last(cache):
                    return cache, prompt[-1:]
            else:
                return cache, rest
        return self.make_cache(), prompt

    def _split_draft(self, cache: Any) -> tuple[Any, Any]:
        """(the model's KV cache, the draft model's or None) of a prompt-cache entry: a request
        that speculated with the draft model stores both in one entry (`_with_draft`), so a
        prompt that shares its prefix is not prefilled again by the draft model either."""
        layers = len(getattr(self.model, "layers", ()))  # where mlx-lm's speculative_generate_step splits
        if self.draft_model is not None and len(cache) == layers + self.draft_layers:
            return cache[:layers], cache[layers:]
        return cache, None

    def _with_draft(self, cache: Any, tokens: list[int], draft: Any) -> Any:
        """The entry the in-memory prompt cache keeps for `cache` (which holds `tokens`): with
        the draft model's KV cache appended once it holds the same tokens. Speculation stops
        with the draft at most a token behind (mlx-lm rewinds both caches): it is fed what it
        lacks, a short forward pass of the small model. One further behind (a request cancelled
        while its draft caught up) is left out, as is one that holds more."""
        held = draft[0].offset if draft else None
        if held is None or held > len(tokens) or len(tokens) - held > DRAFT_TOKENS + 1:
            return cache
        self._feed_draft(draft, tokens[held:])
        return cache + draft

    def _prompt_tokens(self, command: GenerateCommand, enable_thinking: bool | None = None) -> list[int]:
        if command.kind == "chat":
            if not self.tokenizer.has_chat_template:
                raise _InvalidRequest(
                    "this model has no chat template: use the completions endpoint", "no_chat_template"
                )
            try:
                extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
                messages = place_system_messages(command.messages or [], self._renders_system_mid_conversation)
                tokens = self.tokenizer.apply_chat_template(
                    messages, tools=command.tools, add_generation_prompt=True, **extra
                )
            except Exception as exc:  # the model's Jinja template rejected the messages
                raise _InvalidRequest(f"the chat template rejected these messages: {exc}", "invalid_messages") from None
            return _token_list(tokens)
        if isinstance(command.prompt, list):
            return list(command.prompt)
        return _token_list(self.tokenizer.encode(command.prompt or ""))

    def _renders_system_mid_conversation(self) -> bool:
        """Asked of the chat template once (runner/templates.py)."""
        if getattr(self, "_mid_system", None) is None:
            self._mid_system = renders_system_mid_conversation(
                lambda messages: self.tokenizer.apply_chat_template(messages, tokenize=False)
            )
        return self._mid_system

    def _place(self, request: Request) -> None:
        """A prompt still to be scored waits in `scoring`; one still to be prefilled in
        `prefilling` (`_step_prefill`); one whose last token only is left starts decoding."""
        if request.scores is not None:
            self.scoring.append(request)
            return
        request.pending, request.fed = list(request.rest), request.prompt[: len(request.prompt) - len(request.rest)]
        alone = not self._has_work
        if len(request.pending) > 1 and (alone or len(request.pending) > self.prefill_step_size + 1):
            self.prefilling.append(request)
            return
        # One chunk or less while others run: prefilled where it decodes (the batch prefills the
        # short prompts that arrive together in one padded chunk, never with a long one).
        self._join(request)

    def _step_prefill(self) -> None:
        """One `prefill_step_size` chunk of one prefilling request, into its own KV cache.

        The scheduler's fairness: each request is prefilled on its own (never padded into one
        batch with a longer prompt), and the chunk goes to the request with the fewest tokens
        left, but every PREFILL_AGING_PERIOD-th chunk to the one waiting longest. A request that
        arrives during a long prefill thus starts decoding after its own prefill plus about one
        chunk, whatever the long prompt's length, and the long prompt still advances. Decode
        steps of the running requests come between chunks (`run`)."""
        self._prefill_turn += 1
        if self._prefill_turn % PREFILL_AGING_PERIOD == 0:
            request = self.prefilling[0]
        else:
            request = min(self.prefilling, key=lambda r: len(r.pending))
        try:
            self._prefill_chunk(request)
            if len(request.pending) > 1:
                return
            self.prefilling.remove(request)
            self._join(request)
        except Exception as exc:
            if request in self.prefilling:
                self.prefilling.remove(request)
            if request.uid is None and self.direct is not request:  # it never started decoding: end it here
                self._error(request.id, f"{type(exc).__name__}: {exc}")
            else:
                raise

    def _join(self, request: Request) -> None:
        """A prefilled request (its last prompt token, or a prompt of at most one chunk, still to
        feed) starts decoding: on the
        direct path if nothing else decodes; otherwise in the batch (migrating the direct one)."""
        if self.direct is None and not self.batched and self.switch != "batch":
            self._run_direct(request, request.pending, request.cache, request.fed)
            return
        if self.direct is not None and self.switch == "migrate":
            direct = self.direct
            try:
                self._migrate(direct)
            except Exception as exc:  # the direct request is neither direct nor batched now: end it
                if self.direct is not direct and self.batched.get(direct.uid) is not direct:
                    self._error(direct.id, f"{type(exc).__name__}: {exc}")
                raise
        self._insert(request, request.pending, request.cache, request.fed)

    # -- the direct path -----------------------------------------------------------------------
    def _run_direct(self, request: Request, tokens: list[int], cache: Any, cache_tokens: list[int]) -> None:
        """Put a request on the direct path: `tokens` (its last token: the prompt's, or the
        last one sampled) still to feed to `cache` (which holds `cache_tokens`); they start
        `generate_step`."""
        request.cache, request.uid, request.steps = cache, None, None
        request.pending, request.fed = list(tokens), list(cache_tokens)
        self.direct = request

    def _prefill_chunk(self, request: Request) -> None:
        """Feed one chunk of the pending prompt to the model (as generate_step's own prefill
        loop does: all but the last token, at most `prefill_step_size` at a time)."""
        from mlx_lm.generate import generation_stream

        mx = self.mx
        n = min(self.prefill_step_size, len(request.pending) - 1)
        chunk = request.pending[:n]
        with mx.stream(generation_stream):
            self.model(mx.array(chunk)[None], cache=request.cache)
            mx.eval([c.state for c in request.cache])
        mx.clear_cache()
        request.pending = request.pending[n:]
        request.fed.extend(chunk)
        self.stats["prefill_chunks"] += 1

    def _step_direct(self) -> None:
        from mlx_lm.generate import generate_step

        request = self.direct
        self.stats["direct_steps"] += 1
        try:
            if request.steps is None and self._speculates(request):
                drafting = request.speculative == "draft_model"
                if drafting and not self._draft_caught_up(request):
                    return  # one prefill chunk of the draft model this step
                request.steps = self._draft_steps(request) if drafting else self._lookup_steps(request)
            elif request.steps is None:
                request.steps = generate_step(
                    self.mx.array(request.pending),
                    self.model,
                    max_tokens=request.max_tokens - request.completion_tokens,
                    sampler=request.sampler,
                    logits_processors=request.processors,
                    prompt_cache=request.cache,
                    prefill_step_size=self.prefill_step_size,
                )
            token, logprobs = next(request.steps)
        except StopIteration:
            self._finish(request, "length", self._direct_cache_entry(request))
            return
        except Exception as exc:
            self.direct = None
            self._error(request.id, f"{type(exc).__name__}: {exc}")
            return
        reason = self._on_token(request, int(token), logprobs)
        if reason is not None:
            self._finish(request, reason, self._direct_cache_entry(request))

    def _speculates(self, request: Request) -> bool:
        """Speculation (prompt lookup or a draft model): greedy requests without a grammar, on
        the direct path only (a batch already fills the machine; drafts would only add rejected
        work to it). A draft model also needs a KV cache it can trim, one entry per layer."""
        from mlx_lm.models.cache import can_trim_prompt_cache
        from mlx_lm.sample_utils import greedy_sampler

        if request.speculative is None or request.sampler is not greedy_sampler or request.grammar is not None:
            return False
        return request.speculative != "draft_model" or (
            len(request.cache) == len(getattr(self.model, "layers", ())) and can_trim_prompt_cache(request.cache)
        )

    def _draft_caught_up(self, request: Request) -> bool:
        """Whether the draft model's KV cache holds what the model's holds (`request.fed`); if
        not, feed it one `prefill_step_size` chunk (the prompt after a prompt-cache hit, the
        tokens decoded in the batch: a request leaves its draft cache behind when it migrates),
        so no step is long."""
        from mlx_lm.models.cache import make_prompt_cache

        if request.draft_cache is None:
            request.draft_cache = make_prompt_cache(self.draft_model)
        held = request.draft_cache[0].offset
        if held == len(request.fed):
            return True
        self._feed_draft(request.draft_cache, request.fed[held : held + self.prefill_step_size])
        self.stats["prefill_chunks"] += 1
        return False

    def _feed_draft(self, draft: Any, tokens: list[int]) -> None:
        """Run the draft model over `tokens`, into its KV cache `draft`."""
        from mlx_lm.generate import generation_stream

        if tokens:
            with self.mx.stream(generation_stream):
                self.draft_model(self.mx.array(tokens)[None], cache=draft)
                self.mx.eval([c.state for c in draft])

    def _draft_steps(self, request: Request) -> Any:
        """mlx-lm's `speculative_generate_step` with the draft model: yields (token, logprobs)
        like `generate_step`, DRAFT_TOKENS drafted per step and verified in one forward pass of
        the model; the output is the model's own (greedy) decoding. Counts the drafts accepted
        and rejected. Between yields the model's cache holds unverified drafts: closing this
        generator trims them (mlx-lm's `finally`), so it is closed before the cache is read."""
        from mlx_lm.generate import speculative_generate_step

        max_tokens = request.max_tokens - request.completion_tokens
        steps = speculative_generate_step(
            self.mx.array(request.pending), self.model, self.draft_model,
            num_draft_tokens=DRAFT_TOKENS, max_tokens=max_tokens, sampler=request.sampler,
            logits_processors=request.processors, prompt_cache=request.cache + request.draft_cache,
            prefill_step_size=self.prefill_step_size,
        )  # fmt: skip
        produced = round_start = accepted = 0
        try:
            for token, logprobs, drafted in steps:
                produced += 1
                if drafted:
                    accepted += 1
                    self.stats["speculative_accepted"] += 1
                else:  # the model's own token ends a round of min(DRAFT_TOKENS, tokens left) drafts
                    self.stats["speculative_rejected"] += min(DRAFT_TOKENS, max_tokens - round_start) - accepted
                    round_start, accepted = produced, 0
                yield token, logprobs
        finally:
            steps.close()

    def _lookup_steps(self, request: Request) -> Any:
        """Like `generate_step`, yields (token, logprobs), but verifies up to SPECULATIVE_TOKENS
        drafted tokens per forward pass: the drafts continue an earlier occurrence of the
        latest n-gram of the prompt and answer (edits repeat their input), each position's
        logits go through the request's processors as plain decoding would, and the greedy
        tokens are kept up to the first that differs from the draft (then the KV cache is
        trimmed back). The output is plain greedy decoding's. Between yields, the cache holds a
        prefix of prompt + generated (`_held_tokens`)."""
        from mlx_lm.generate import generation_stream
        from mlx_lm.models.cache import trim_prompt_cache

        mx = self.mx
        history = NgramIndex(list(request.prompt) + list(request.generated))  # where drafts are looked up
        seen = list(request.pending)  # what generate_step's processors would see: its input and output
        fed = list(request.pending)
        while True:
            room = request.max_tokens - request.completion_tokens - 1
            draft = history.draft(min(SPECULATIVE_TOKENS, room)) if room > 0 else []
            with mx.stream(generation_stream):
                logits = self.model(mx.array(fed + draft)[None], cache=request.cache)[0, len(fed) - 1 :]
                rows = []
                for i in range(len(draft) + 1):
                    row = logits[i : i + 1]
                    for processor in request.processors:
                        row = processor(mx.array(seen + draft[:i]), row)
                    rows.append(row)
                rows = mx.concatenate(rows, axis=0)
                logprobs = rows - mx.logsumexp(rows, axis=-1, keepdims=True)
                chosen = mx.argmax(logprobs, axis=-1)
                mx.eval(chosen, logprobs)
            tokens = chosen.tolist()
            accepted = 0
            while accepted < len(draft) and tokens[accepted] == draft[accepted]:
                accepted += 1
            if len(draft) > accepted:
                trim_prompt_cache(request.cache, len(draft) - accepted)
            self.stats["speculative_accepted"] += accepted
            self.stats["speculative_rejected"] += len(draft) - accepted
            fed = tokens[accepted : accepted + 1]
            for i, token in enumerate(tokens[: accepted + 1]):
                history.append(token)
                seen.append(token)
                yield token, logprobs[i]

    @staticmethod
    def _held_tokens(request: Request) -> int:
        """How many tokens a decoding direct request's KV cache holds: a prefix of prompt +
        generated (all of it after `generate_step`, which feeds each token it yields; less
        while speculation yields the tokens of one verified draft)."""
        offsets = {getattr(c, "offset", None) for c in request.cache}
        (offset,) = offsets if len(offsets) == 1 else (len(request.prompt) + len(request.generated),)
        return offset if isinstance(offset, int) else len(request.prompt) + len(request.generated)

    def _direct_cache_entry(self, request: Request) -> tuple[Any, list[int]]:
        """(cache, the tokens it holds) of a direct request, for the prompt cache."""
        if request.steps is None:  # still prefilling
            return request.cache, list(request.fed)
        request.steps.close()  # draft-model speculation trims its unverified drafts as it closes
        return request.cache, (request.prompt + request.generated)[: self._held_tokens(request)]

    def _migrate(self, request: Request) -> None:
        """Move the direct request into the batch with its KV cache (if the cache can be
        trimmed; otherwise it finishes on its own path, interleaved with the batch)."""
        if request.steps is None:  # not stepped yet: it joins the batch with its last token
            self.direct = None
            self.stats["migrations"] += 1
            self._insert(request, request.pending, request.cache, request.fed)
            return
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if request.generated and not can_trim_prompt_cache(request.cache):
            return
        # Closed first: draft-model speculation trims its unverified drafts as it closes. The
        # cache then holds at least prompt + generated but the last token (every path feeds what
        # it yields, or all but the last verified token), which is trimmed here.
        request.steps.close()
        if request.generated:
            trim_prompt_cache(
                request.cache, self._held_tokens(request) - (len(request.prompt) + len(request.generated) - 1)
            )
        self.direct = None
        request.steps = None
        self.stats["migrations"] += 1
        # The cache held the last sampled token (now trimmed): the batch feeds it again and
        # samples the next token itself (the direct path's lookahead token is discarded).
        self._rewind_sampler(request)
        self._insert(request, request.generated[-1:], request.cache, request.prompt + request.generated[:-1])

    @staticmethod
    def _trim_last(cache: Any) -> bool:
        """Drop the last token from a KV cache; False (untouched) if this cache cannot."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        return bool(cache) and can_trim_prompt_cache(cache) and trim_prompt_cache(cache, 1) == 1

    # -- the batch -----------------------------------------------------------------------------
    def _insert(self, request: Request, tokens: list[int], cache: Any, cache_tokens: list[int]) -> None:
        """Hand a request to the BatchGenerator, which prefills `tokens` one chunk of
        `prefill_step_size` per `next()` (all its prefilling requests together), between the
        decode steps of the others."""
        if self.batch is None:
            from mlx_lm.generate import BatchGenerator

            self.batch = BatchGenerator(
                self.model,
                stop_tokens=[[t] for t in sorted(self.eos)],
                completion_batch_size=32,
                prefill_batch_size=8,
                prefill_step_size=self.prefill_step_size,
            )
        (uid,) = self.batch.insert(
            [tokens],
            max_tokens=[request.max_tokens - request.completion_tokens],
            caches=[cache],
            all_tokens=[list(cache_tokens)],
            samplers=[request.sampler],
            logits_processors=[request.processors],
        )
        request.uid, request.cache = uid, None
        request.draft_cache = None  # the batch does not speculate (a demoted request catches up)
        request.pending, request.fed = [], []
        self.batched[uid] = request

    def _step_batch(self) -> None:
        self.stats["batch_steps"] += 1
        try:
            _, responses = self.batch.next()
        except Exception as exc:  # the batch's state is unknown now: fail its requests, start afresh
            failed, self.batched, self.batch = list(self.batched.values()), {}, None
            for request in failed:
                self._error(request.id, f"{type(exc).__name__}: {exc}")
            return
        remove = []
        for response in responses:
            request = self.batched.get(response.uid)
            if request is None:
                continue
            reason = self._on_token(request, int(response.token), response.logprobs)
            if response.finish_reason is not None:  # the batch has let it go (EOS or max_tokens)
                del self.batched[response.uid]
                self._finish(request, reason or ("stop" if response.finish_reason == "stop" else "length"),
                             (response.prompt_cache, response.all_tokens))  # fmt: skip
            elif reason is not None:
                remove.append((request, reason))
        if remove:
            self._remove_from_batch(remove)

    def _start_joined(self) -> None:
        """While a long prompt prefills, a request that joined the batch gets its first token
        now, not a long chunk per step later: mlx-lm's BatchGenerator takes a few of its steps
        to start a prompt (prefill, then its last token, then the first sample), so they come
        back to back here (at most JOIN_STEPS; the decoding streams get a token from each)."""
        for _ in range(JOIN_STEPS):
            if not self.prefilling or not self.batched:
                return
            if all(request.first_token_at is not None for request in self.batched.values()):
                return
            self._step_batch()

    def _remove_from_batch(self, finished: list[tuple[Request, str]]) -> None:
        caches = self.batch.remove(
            [r.uid for r, _ in finished],
            return_prompt_caches=self.prompt_cache is not None or self.disk_cache is not None,
        )
        for request, reason in finished:
            del self.batched[request.uid]
            self._finish(request, reason, caches.get(request.uid))

    def _maybe_demote(self) -> None:
        """A lone decoding request leaves the batch for the faster direct path."""
        if self.direct is not None or len(self.batched) != 1 or self.switch == "batch":
            return
        if self.prefilling or not self.inbox.empty():  # another request is about to join
            return
        ((uid, request),) = self.batched.items()
        if not request.generated:  # still prefilling
            return
        cache, tokens = self.batch.extract_cache([uid])[uid]
        if not self._trim_last(cache):
            return
        self.batch.remove([uid])
        del self.batched[uid]
        self.stats["demotions"] += 1
        self._rewind_sampler(request)
        self._run_direct(request, tokens[-1:], cache, tokens[:-1])

    def _fail_all(self, exc: Exception) -> None:
        failed = self.active
        self.direct, self.batched, self.batch = None, {}, None
        self.scoring.clear()
        self.prefilling.clear()
        for request in failed:
            self._error(request.id, f"{type(exc).__name__}: {exc}")

    # -- per token (both paths) ----------------------------------------------------------------
    @staticmethod
    def _rewind_sampler(request: Request) -> None:
        """After a switch between paths the last token is fed again and the next one sampled
        anew: the keyed sampler and the grammar mask go back to that token."""
        if isinstance(request.sampler, KeyedSampler):
            request.sampler.index = len(request.generated)
        if request.grammar is not None:
            request.grammar.rewind(request.generated)

    def _on_token(self, request: Request, token: int, logprobs: Any = None) -> str | None:
        """Handle one sampled token (`logprobs`: the row it was sampled from); the finish
        reason if the request is done."""
        request.generated.append(token)
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in request.eos:
            if request.completion and request.logprobs is not None and logprobs is not None:
                # OpenAI's completions list the end-of-text token too (lm-eval drops the last entry)
                request.token_logprobs.append(self._logprob_entry(token, logprobs, request.logprobs))
            return "stop"
        request.completion_tokens += 1
        was_reasoning = request.filter.state == "reasoning"
        if request.logprobs is not None and logprobs is not None and not was_reasoning:  # content only
            request.token_logprobs.append(self._logprob_entry(token, logprobs, request.logprobs))
        hidden = token in request.tool_format.hidden_ids
        if not hidden:  # <|im_start|>, <|endoftext|>…: counted, never shown
            request.detokenizer.add_token(token)
        if self._send_text(request, "" if hidden else request.detokenizer.last_segment):
            return "stop"
        if was_reasoning or request.filter.state == "reasoning":
            request.reasoning_tokens += 1
        grammar = request.grammar
        if grammar is not None and len(grammar.consumed) == len(request.generated) and grammar.done:
            return "stop"  # the JSON is complete: only EOS could follow
        if request.completion_tokens >= request.max_tokens:
            return "length"
        return None

    def _send_text(self, request: Request, text: str, final: bool = False) -> bool:
        """Filter and emit new text; True if a stop string ended the request."""
        out = request.filter.feed(text)
        if final and not out.stopped:
            tail = request.filter.flush()
            out.text += tail.text
            out.reasoning += tail.reasoning
            out.tool_calls += tail.tool_calls
        if out.reasoning:
            count = request.completion_tokens
            self.emit({"ev": "reasoning", "id": request.id, "text": out.reasoning, "completion_tokens": count})
        if out.text:
            event: protocol.TextEvent = {
                "ev": "text", "id": request.id, "text": out.text, "completion_tokens": request.completion_tokens
            }  # fmt: skip
            if request.token_logprobs:  # the tokens behind this text (and any held back before it)
                event["logprobs"], request.token_logprobs = request.token_logprobs, []
            self.emit(event)
        elif out.reasoning or out.tool_calls:
            request.token_logprobs = []  # those tokens were reasoning or a tool call, not content
        for call in out.tool_calls:
            request.tool_calls += 1
            self.emit({"ev": "tool_call", "id": request.id, "call": call})
        return out.stopped

    def _logprob_entry(self, token: int, logprobs: Any, top: int) -> dict[str, Any]:
        """OpenAI's `{token, logprob, bytes, top_logprobs}` for a sampled token.

        `logprobs` is the log-softmax both paths sample from: after the request's logits
        processors (logit_bias, penalties, the grammar mask), before the sampler's temperature
        and top-k / top-p / min-p filters. Masked tokens (-inf) are reported as -9999."""
        mx = self.mx
        row = logprobs.reshape(-1).astype(mx.float32)
        top = min(top, row.shape[0])
        best = mx.argpartition(-row, top - 1)[:top] if top else mx.array([], dtype=mx.int32)
        chosen, picked = row[token], row[best]
        mx.eval(chosen, best, picked)  # one wait for the three
        ids, values = best.tolist(), picked.tolist()
        entry = {**self._token_info(token), "logprob": max(chosen.item(), LOGPROB_FLOOR)}
        ranked = sorted(zip(values, ids), key=lambda pair: -pair[0])
        entry["top_logprobs"] = [{**self._token_info(i), "logprob": max(value, LOGPROB_FLOOR)} for value, i in ranked]
        return entry

    def _token_info(self, token: int) -> dict[str, Any]:
        """`{token, bytes}` of one token as OpenAI reports it: its text, or `bytes:\\xNN…` for a
        token that is only part of a UTF-8 character (`bytes` holds the exact bytes either way)."""
        info = self._token_infos.get(token)
        if info is None:
            raw = self._token_bytes(token)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            info = self._token_infos[token] = {"token": text, "bytes": list(raw)}
        return info

    def _token_bytes(self, token: int) -> bytes:
        """A token's bytes from llguidance's tokenizer (exact, also for pieces of a character),
        else the model tokenizer's decoding of it alone."""
        if self._byte_tokenizer is None:
            try:
                self._byte_tokenizer = self._grammars().tokenizer()
            except Exception:  # no tokenizer.json: the decoded text is the best there is
                self._byte_tokenizer = False
        if self._byte_tokenizer is False:
            return self.tokenizer.decode([token]).encode("utf-8")
        return bytes(self._byte_tokenizer.decode_bytes([token]))

    def _cancel_requested(self) -> None:
        ids = set(self.cancelled)
        if self.direct is not None and self.direct.id in ids:
            request = self.direct
            self._finish(request, "cancelled", self._direct_cache_entry(request))
        doomed = [r for r in self.batched.values() if r.id in ids]
        if doomed:
            self._remove_from_batch([(r, "cancelled") for r in doomed])
        for request in [r for r in self.scoring if r.id in ids]:
            self.scoring.remove(request)
            self._finish(request, "cancelled")
        for request in [r for r in self.prefilling if r.id in ids]:  # what it has prefilled is kept
            self.prefilling.remove(request)
            self._finish(request, "cancelled", (request.cache, list(request.fed)))
        for read in [d for d in self.loading if d.command.id in ids]:
            self.loading.remove(read)
            read.hit.cancel()  # if it has not started (else it finishes unused)
            self._end_unstarted(read.command.id)
        # What is left is not running: keep only the ids whose generate command is still
        # queued (it is then answered "cancelled" at admission); drop the rest (finished,
        # failed, or never sent).
        stale = ids & set(self.cancelled)
        if stale:
            with self.inbox.mutex:
                queued = {getattr(c, "id", None) for c in self.inbox.queue}
            self.cancelled.difference_update(stale - queued)
        self.stats["pending_cancels"] = len(self.cancelled)

    # -- terminal events: every request ends here, once ------------------------------------------
    def _end_unstarted(self, rid: str) -> None:
        """A request cancelled before it started."""
        self._end({"ev": "done", "id": rid, "finish_reason": "cancelled", "prompt_tokens": 0, "cached_tokens": 0,
                   "completion_tokens": 0, "ttft_ms": None})  # fmt: skip

    def _end(self, event: protocol.DoneEvent | protocol.ErrorEvent) -> None:
        """Emit a request's terminal event (`done` or `error`), recording it as finished first
        so that no cancel for it is kept."""
        rid = event["id"]
        self._finished_ids.add(rid)
        self._finished_order.append(rid)
        if len(self._finished_order) > 1000:
            self._finished_ids.discard(self._finished_order.popleft())
        self.cancelled.discard(rid)
        self.emit(event)

    def _error(
        self,
        rid: str,
        message: str,
        type_: str = "server_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        event: protocol.ErrorEvent = {"ev": "error", "id": rid, "message": message[:1000], "type": type_, "code": code}
        if param is not None:
            event["param"] = param
        self._end(event)

    def _finish(self, request: Request, reason: str, cache_entry: tuple[Any, list[int]] | None = None) -> None:
        if self.direct is request:
            self.direct = None
        if request.steps is not None:
            request.steps.close()
            request.steps = None
        try:
            if reason != "cancelled" and not request.filter.stopped:
                request.detokenizer.finalize()
                self._send_text(request, request.detokenizer.last_segment, final=True)
        except Exception as exc:  # the request must still end (with what it has)
            self._log(f"finishing {request.id}: {type(exc).__name__}: {exc}")
        ended_on_eos = reason == "stop" and bool(request.generated) and request.generated[-1] in request.eos
        if request.token_logprobs and request.completion and ended_on_eos:  # the end-of-text token's entry
            event = {"ev": "text", "id": request.id, "text": "", "completion_tokens": request.completion_tokens}
            self.emit({**event, "logprobs": request.token_logprobs})
            request.token_logprobs = []
        if reason == "stop" and request.tool_calls:
            reason = "tool_calls"
        ttft = None if request.first_token_at is None else (request.first_token_at - request.started) * 1000
        self._end(
            {
                "ev": "done",
                "id": request.id,
                "finish_reason": reason,
                "prompt_tokens": len(request.prompt),
                "cached_tokens": request.cached_tokens,
                "completion_tokens": request.completion_tokens,
                "ttft_ms": ttft,
                **({"reasoning_tokens": request.reasoning_tokens} if request.thinking else {}),
                **({"stop_sequence": request.filter.matched_stop} if request.filter.matched_stop else {}),
            }
        )
        keeps = self.prompt_cache is not None or self.disk_cache is not None
        if keeps and cache_entry is not None and cache_entry[0] is not None:
            self._store(request.cache_key, *cache_entry, draft=request.draft_cache)  # a batched one has none
        request.cache = request.draft_cache = None

    def _store(self, cache_key: Any, cache: Any, tokens: list[int], draft: Any = None) -> None:
        """Keep a finished request's KV cache for requests that share its prefix: in memory with
        its draft model's (`_with_draft`), on disk the model's alone (a runner started later may
        have another draft model, or none)."""
        try:
            offsets = [getattr(c, "offset", len(tokens)) for c in cache]
            if not offsets or not all(isinstance(o, int) for o in offsets):
                return
            if min(offsets) != len(tokens) or not tokens:  # never store a cache under the wrong tokens
                return
            if self.disk_cache is not None:
                self.disk_cache.save(cache_key[1], list(tokens), cache)
            if self.prompt_cache is not None:
                try:
                    cache = self._with_draft(cache, tokens, draft)
                except Exception as exc:  # the model's cache is still kept
                    self._log(f"not keeping the draft model's cache: {type(exc).__name__}: {exc}")
                self.prompt_cache.insert_cache(cache_key, list(tokens), cache)
        except Exception as exc:  # a cache that cannot be measured or stored is simply not kept
            self._log(f"not keeping a prompt cache: {type(exc).__name__}: {exc}")

    def _update_memory(self) -> None:
        mx = getattr(self, "mx", None)
        if mx is not None:
            self.stats["pending_cancels"] = len(self.cancelled)
            prompt_cache = int(self.prompt_cache.nbytes) if self.prompt_cache is not None else 0
            try:
                kv = self._kv_bytes()
            except Exception:  # a cache type without nbytes: the last figure stands
                kv = int(self.memory.get("kv_bytes") or 0)
            engine = {**self.stats, "prompt_cache_bytes": prompt_cache}
            if self.speculative is not None:
                engine["speculative"] = self.speculative
            self.memory = {
                "mlx_active_bytes": int(mx.get_active_memory()),
                "mlx_peak_bytes": int(mx.get_peak_memory()),
                "kv_bytes": kv,
                "prompt_cache_bytes": prompt_cache,
                "prompt_cache_limit_bytes": self.prompt_cache_limit if self.prompt_cache is not None else 0,
                "engine": engine,
            }


def _rss_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def too_long(prompt_tokens: int, context_length: int) -> str:
    """Anthropic's words first (Claude Code compacts on `prompt is too long: N tokens > M
    maximum`, M the longest prompt that leaves room for one token), then OpenAI's phrase."""
    return (
        f"prompt is too long: {prompt_tokens} tokens > {context_length - 1} maximum "
        f"(this model's maximum context length is {context_length} tokens)"
    )


class _InvalidRequest(Exception):
    def __init__(self, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class NgramIndex:
    """Where each n-gram (n = 1 to LOOKUP_NGRAM) of a token sequence last occurred with a
    token after it: a draft continues the latest earlier occurrence of the sequence's tail.
    Built once per request, then kept up to date token by token (no rescans of a long prompt)."""

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram → the position just after it
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        tokens = self.tokens
        for n in range(1, min(LOOKUP_NGRAM, len(tokens)) + 1):  # the n-grams now followed by `token`
            self.latest[tuple(tokens[-n:])] = len(tokens)
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest tail."""
        for n in range(min(LOOKUP_NGRAM, len(self.tokens)), 0, -1):
            after = self.latest.get(tuple(self.tokens[-n:]))
            if after is not None:
                return self.tokens[after : after + limit]
        return []


def _token_list(tokens: Any) -> list[int]:
    """Token ids from a tokenizer (a list, or a dict-like with `input_ids`), as Python ints."""
    if hasattr(tokens, "get") and not isinstance(tokens, list):
        tokens = tokens.get("input_ids", tokens)
    return [int(t) for t in tokens]
