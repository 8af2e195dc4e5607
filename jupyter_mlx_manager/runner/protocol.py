"""Messages between the pool (server) and a runner, one JSON object per line, each declared once.

Commands (server → runner, the runner's stdin) are pydantic models: the server builds them
(`InferenceRequest.runner_command`, `RunnerProcess`), so a field renamed on one side fails at once,
and the runner validates each line once, on its command reader thread, as it arrives
(`parse_command`): a missing or ill-typed field ends that request with an `error` event (type
invalid_request_error, code "invalid_field" unless the field says otherwise, `param` naming
the field); what cannot be answered (not a JSON object, no string `id`, an unknown `op`, a bad
command without an id) is logged to stderr and skipped. Strict: a string is not a number, a
bool not an integer; unknown fields are refused, as a misspelt one would silently do nothing.
Measured: validating a `generate` command takes about 5 µs (a chat of four messages), once per request.

Events (runner → server, the runner's stdout on a private duplicate of fd 1; fd 1 itself points
at stderr, so library output cannot corrupt the stream) are TypedDicts: types for the code that
writes and reads them, nothing at run time (a `text` event goes out per token). Text events
are written as the tokens come; all the events of one scheduler step go out in one write.
`done` and `error` are terminal: exactly one per request.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

HEARTBEAT_SECONDS = 0.5
MAX_SCOPE_LENGTH = 512  # a `cache_scope` is a user id (or "" for shared), never more
MAX_TOP_LOGPROBS = 20


def encode(message: dict[str, Any] | Command) -> bytes:
    if isinstance(message, Command):
        message = message.wire()
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> Any:
    """The JSON value of one line (not necessarily an object: callers check)."""
    return json.loads(line)


# -- commands ----------------------------------------------------------------------------------
class InvalidCommand(Exception):
    """A request command the runner refuses: its `error` event names the field (`param`)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_field"):
        super().__init__(message)
        self.param, self.code = param, code


class Skipped(Exception):
    """A line that is no command the runner can answer: logged and skipped."""


class Command(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    op: str
    # Codes other than "invalid_field" for a field's errors (`item_codes`: for an item of it),
    # and the names the client knows a field by where they differ (the `param` of the error).
    codes: ClassVar[dict[str, str]] = {}
    item_codes: ClassVar[dict[str, str]] = {}
    params: ClassVar[dict[str, str]] = {}

    def wire(self) -> dict[str, Any]:
        """The command as sent: its op and the fields its builder set (unset defaults stay off the line)."""
        return {"op": self.op, **self.model_dump(exclude_unset=True)}


class GenerateCommand(Command):
    """Generate for one request: `started`, then `text` / `reasoning` / `tool_call`, then `done`
    or one `error` (a vision runner answers chat commands with the same events; a user message's
    content may then be a list of {"type": "text", "text"} and {"type": "image", "data": <base64,
    checked by the server>} parts).

    Beyond these types the runner checks what only the model knows: every prompt token id (given,
    or produced by the tokenizer or chat template) and logit_bias id must be in [0, vocab_size)
    ("invalid_token_id", "invalid_logit_bias"); the prompt must fit the context
    ("context_length_exceeded") and not be empty ("empty_prompt"); a chat needs the model's chat
    template ("no_chat_template") and one the template accepts ("invalid_messages")."""

    op: Literal["generate"] = "generate"
    id: str = ""  # set by the pool (`RunnerProcess.generate`)
    kind: Literal["chat", "completion"]
    messages: list[dict[str, Any]] | None = None  # chat
    prompt: str | list[int] | None = None  # completion: text or token ids
    tools: list[dict[str, Any]] | None = None  # chat: as the chat template takes them
    max_tokens: int = Field(ge=0)  # at least 1; 0 only to score an echoed prompt
    temperature: FiniteFloat = 0.0
    top_p: FiniteFloat = 1.0
    top_k: int | None = Field(None, ge=0)
    min_p: FiniteFloat | None = None
    seed: int | None = None
    logit_bias: dict[str, FiniteFloat] | None = None  # {token id: bias}
    repetition_penalty: FiniteFloat | None = None
    presence_penalty: FiniteFloat | None = None
    frequency_penalty: FiniteFloat | None = None
    stop: str | list[str] | None = None
    # Enforced by constrained decoding (runner/grammar.py, llguidance): null | {"type": "text"} |
    # {"type": "json_object"} | {"type": "json_schema", "schema": {...}}. Every sampled token is
    # masked to the JSON grammar (compact: ", " and ": " separators, no other whitespace), and the
    # request ends (`stop`) as soon as the JSON is complete. A schema that cannot be enforced ends
    # the request with code "unsupported_schema" (param "response_format", the message names the
    # feature); an ill-typed value with "invalid_field".
    response_format: dict[str, Any] | None = None
    # Chat on a thinking model only: false renders the prompt with `enable_thinking=False`, true
    # with True, null the template's default.
    reasoning: bool | None = None
    # Each answer token's log-probability and its k most likely alternatives on the `text` events.
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # "required" (the tools narrowed to one for a named choice) and `strict_tools` are a grammar in
    # the model's tool-call format (json_tools only; another format ends the request with code
    # "unsupported_tool_choice").
    tool_choice: Literal["auto", "required"] | None = None
    strict_tools: list[str] | None = None  # tool names
    # Completions only: a `prompt` event follows `started`; with `logprobs: k` the whole prompt is
    # computed (a chunk per scheduler step) to give each prompt token's log-probability (the
    # model's own log-softmax) and k alternatives; `max_tokens` may then be 0 (score only).
    echo: bool = False
    # The prompt-cache scope: a cached prefix is reused only by requests of the same scope (the
    # local backend sends "user:<id>" or, with `prompt_cache_scope` "shared", "").
    cache_scope: str = Field("", max_length=MAX_SCOPE_LENGTH)
    # This request's speculation (prompt lookup), whatever the runner was loaded with; null: the
    # runner's own (its `--speculative` or draft model, if any).
    speculative: Literal["prompt_lookup"] | None = None
    # A profile's: a context limit below the model's (the prompt must fit it, and the answer is
    # clamped to it), and one of mlx-lm's tool parsers (`mlx_lm.tool_parsers.<name>`) instead of
    # the one the chat template implies.
    context_length: int | None = Field(None, ge=2)
    tool_parser: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,63}$")

    codes: ClassVar[dict[str, str]] = {"logit_bias": "invalid_logit_bias"}
    item_codes: ClassVar[dict[str, str]] = {"prompt": "invalid_token_id"}

    @model_validator(mode="after")
    def _consistent(self) -> GenerateCommand:
        if self.echo and self.kind != "completion":
            raise InvalidCommand("echo must be true or false (completions only)", "echo")
        if self.max_tokens < 1 and not self.echo:
            raise InvalidCommand("max_tokens must be at least 1", "max_tokens")
        if self.kind == "chat" and self.messages is None:
            raise InvalidCommand("messages must be a list of objects", "messages")
        if self.kind == "completion" and self.prompt is None:
            raise InvalidCommand("prompt must be a string or a list of token ids", "prompt")
        if self.tool_choice == "required" and not self.tools:
            raise InvalidCommand("tool_choice 'required' needs tools", "tool_choice")
        return self

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CancelCommand(Command):
    """Stop a request (`done` with finish_reason "cancelled"); a cancel for a finished id is dropped."""

    op: Literal["cancel"] = "cancel"
    id: str


class TrimCacheCommand(Command):
    """The prompt cache may hold at most `bytes` from now on (never more than
    --prompt-cache-bytes): trimmed at once, least recently used entries first
    (`LRUPromptCache.trim_to`); answered with `trimmed`. The pool sends it to keep its memory
    budget, and to give a trimmed cache room back."""

    op: Literal["trim_cache"] = "trim_cache"
    bytes: int = Field(ge=0)


class LoadCommand(Command):
    """Only to a spare runner (started without MODEL_PATH): load this model folder, with these
    options instead of the command line's; then it is a runner like any other (`ready` or
    `failed`). Anything else a spare receives before it is logged and skipped."""

    op: Literal["load"] = "load"
    path: str = Field(min_length=1)
    prompt_cache_bytes: int | None = Field(None, ge=0)
    prefill_step_size: int | None = Field(None, ge=1)
    speculative: Literal["prompt_lookup"] | None = None
    draft_path: str | None = Field(None, min_length=1)  # speculation with this draft model's folder


class ShutdownCommand(Command):
    op: Literal["shutdown"] = "shutdown"


class EmbedCommand(Command):
    """Only to an embedding runner (`--kind embedding`, runner/embedding.py): strings are
    tokenized there; every token id must be in [0, vocab_size) and no input longer than
    context_length (else an `error`, type invalid_request_error, param "input"); answered with
    `embeddings` events and one `done` (`prompt_tokens`, `dimensions`)."""

    op: Literal["embed"] = "embed"
    id: str = ""  # set by the pool
    inputs: list[str | list[int]] = Field(min_length=1)
    dimensions: int | None = Field(None, ge=1)

    params: ClassVar[dict[str, str]] = {"inputs": "input"}


class TranscribeCommand(Command):
    """Only to a transcription runner (runner/audio.py): one `transcription` event, then `done`.
    `temperature` given: that one temperature; omitted: the model's own default."""

    op: Literal["transcribe"] = "transcribe"
    id: str = ""  # set by the pool
    audio: str = Field(min_length=1)  # base64 of little-endian int16 mono PCM at 16 kHz
    language: str | None = Field(None, min_length=1, max_length=32)
    temperature: FiniteFloat | None = Field(None, ge=0, le=1)

    params: ClassVar[dict[str, str]] = {"audio": "file"}


class SpeakCommand(Command):
    """Only to a speech runner (runner/audio.py): `audio` events, then `done`."""

    op: Literal["speak"] = "speak"
    id: str = ""  # set by the pool
    input: str
    voice: str | None = None

    codes: ClassVar[dict[str, str]] = {"input": "empty_input"}


COMMANDS: dict[str, type[Command]] = {
    c.model_fields["op"].default: c
    for c in (GenerateCommand, CancelCommand, TrimCacheCommand, LoadCommand, ShutdownCommand, EmbedCommand,
              TranscribeCommand, SpeakCommand)
}  # fmt: skip


def parse_command(raw: Any) -> Command:
    """The command on one decoded line, validated. Raises `Skipped` for what cannot be answered
    and `InvalidCommand` (with the request's `id`) for a request command that is refused."""
    if not isinstance(raw, dict):
        raise Skipped("a command that is not a JSON object")
    model = COMMANDS.get(raw.get("op")) if isinstance(raw.get("op"), str) else None
    if model is None:
        raise Skipped(f"a command with an unknown op {brief(raw.get('op'))}")
    request = "id" in model.model_fields
    if request and (not isinstance(raw.get("id"), str) or not raw["id"]):
        raise Skipped(f"a {model.model_fields['op'].default} command without a valid id")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problem = _invalid(model, exc)
    except InvalidCommand as exc:
        problem = exc
    if not request:
        raise Skipped(f"an invalid {model.model_fields['op'].default} command ({problem})")
    raise problem


def _invalid(model: type[Command], exc: ValidationError) -> InvalidCommand:
    """The first refused field, as the client knows it. Of a union's alternatives, the one that
    got furthest into the value (a list of floats as a token-id prompt, not as a string) speaks."""
    errors = exc.errors(include_url=False)
    first = errors[0]["loc"][:1]
    error = max((e for e in errors if e["loc"][:1] == first), key=lambda e: len(e["loc"]))
    field = str(error["loc"][0]) if error["loc"] else "command"
    if error["type"] == "missing":
        message = f"{field} is required"
    else:
        message = f"{field}: {error['msg'][0].lower()}{error['msg'][1:]}, not {brief(error['input'])}"
    item = any(isinstance(part, int) for part in error["loc"][1:])
    code = (model.item_codes.get(field) if item else None) or model.codes.get(field, "invalid_field")
    return InvalidCommand(message, model.params.get(field, field), code)


def brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- events ------------------------------------------------------------------------------------
class SpareEvent(TypedDict):
    """A spare runner has imported MLX and mlx-lm and waits for `load`."""

    ev: Literal["spare"]
    rss_bytes: int | None


class ReadyEvent(TypedDict):
    """The model is loaded. rss_bytes: the process's RSS with the model loaded (the pool's memory
    base); context_length: `models.inspection.context_length` of its config (what the catalog
    reports); vocab_size: rows of the token embedding."""

    ev: Literal["ready"]
    rss_bytes: int | None
    context_length: int | None
    vocab_size: int | None
    tool_calling: bool
    eos_token_ids: list[int]
    kind: NotRequired[str]  # the runners of other kinds (serial.py) name theirs
    dimensions: NotRequired[int]  # embedding
    matryoshka: NotRequired[bool]  # embedding: its vectors may be shortened
    sample_rate: NotRequired[int]  # audio
    voices: NotRequired[list[str]]  # speech


class FailedEvent(TypedDict):
    """The load failed; the runner exits."""

    ev: Literal["failed"]
    error: str


class StartedEvent(TypedDict):
    ev: Literal["started"]
    id: str
    prompt_tokens: int
    cached_tokens: int


class LogprobEntry(TypedDict):
    token: str
    logprob: float | None  # None: a prompt's first token
    bytes: list[int]
    top_logprobs: NotRequired[list[LogprobEntry]]


class PromptEvent(TypedDict):
    """An `echo` request's prompt, with its scores when it asked for logprobs (the first entry
    has "logprob": null and no alternatives)."""

    ev: Literal["prompt"]
    id: str
    text: str
    logprobs: NotRequired[list[LogprobEntry]]


class TextEvent(TypedDict):
    """Answer text, as the tokens come."""

    ev: Literal["text"]
    id: str
    text: str
    completion_tokens: int
    logprobs: NotRequired[list[LogprobEntry]]


class ReasoningEvent(TypedDict):
    """A thinking model's reasoning (chat requests on a model whose vocabulary has think markers,
    as mlx-lm detects them: the text between them, markers dropped; also when the prompt itself
    opened the block). Stop strings apply to the answer only; tool calls are parsed in the answer."""

    ev: Literal["reasoning"]
    id: str
    text: str
    completion_tokens: int


class ToolCall(TypedDict):
    name: str
    arguments: str


class ToolCallEvent(TypedDict):
    ev: Literal["tool_call"]
    id: str
    call: ToolCall


class DoneEvent(TypedDict):
    """A request's end. The runners of other kinds send what applies to them."""

    ev: Literal["done"]
    id: str
    finish_reason: Literal["stop", "length", "tool_calls", "cancelled"]
    prompt_tokens: int
    cached_tokens: NotRequired[int]
    completion_tokens: NotRequired[int]
    ttft_ms: NotRequired[float | None]
    reasoning_tokens: NotRequired[int]  # chat on a thinking model
    stop_sequence: NotRequired[str]  # the stop string that ended the output
    dimensions: NotRequired[int]  # embedding
    sample_rate: NotRequired[int]  # speech
    duration_ms: NotRequired[float]  # embedding, audio


class ErrorEvent(TypedDict):
    """A request's failure. Codes of invalid_request_error: "invalid_token_id" (prompt),
    "invalid_logit_bias", "invalid_field" (a missing or ill-typed field; `param` names it),
    "empty_prompt", "context_length_exceeded", "no_chat_template", "invalid_messages",
    "unsupported_schema" (param "response_format"), "unsupported_tool_choice", "wrong_kind"; the
    serial runners add their inputs' own ("empty_input", "invalid_image", …). The server's own
    handle adds "runner_stalled" (type server_error) when it kills a hung runner."""

    ev: Literal["error"]
    id: str
    message: str
    type: Literal["invalid_request_error", "server_error"]
    code: str | None
    param: NotRequired[str]


class EmbeddingsEvent(TypedDict):
    """An embedding runner's vectors for these inputs (one batch): base64 of little-endian
    float32, pooled and normalised."""

    ev: Literal["embeddings"]
    id: str
    index: list[int]
    data: list[str]


class TranscriptionEvent(TypedDict):
    ev: Literal["transcription"]
    id: str
    text: str
    language: str | None
    segments: list[dict[str, Any]]
    duration: float  # seconds of audio


class AudioEvent(TypedDict):
    """Speech: base64 of little-endian float32 samples."""

    ev: Literal["audio"]
    id: str
    data: str
    sample_rate: int


class TrimmedEvent(TypedDict):
    """The answer to `trim_cache`."""

    ev: Literal["trimmed"]
    prompt_cache_bytes: int
    limit_bytes: int


class HeartbeatEvent(TypedDict):
    """Sent every HEARTBEAT_SECONDS from its own thread. `progress` counts the generation
    thread's scheduler steps (each prefill chunk, decode step and admitted command); `busy` says
    whether it has work. Heartbeats that stop, or a `progress` that does not move while busy, mean
    a hung runner. `kv_bytes`: the running requests' KV caches (the direct request's cache plus
    the batch's); `prompt_cache_bytes`: the prompt cache, under `prompt_cache_limit_bytes`;
    `engine`: the text engine's scheduler counters ("direct_steps", "batch_steps",
    "prefill_chunks", "migrations", "demotions", "pending_cancels", "prompt_cache_bytes",
    "speculative_accepted", "speculative_rejected", "speculative"? for a runner started with
    speculation)."""

    ev: Literal["heartbeat"]
    rss_bytes: int
    progress: int
    busy: bool
    mlx_active_bytes: int
    mlx_peak_bytes: int
    kv_bytes: int
    prompt_cache_bytes: int
    prompt_cache_limit_bytes: NotRequired[int]
    engine: NotRequired[dict[str, Any]]


RequestEvent = (
    StartedEvent | PromptEvent | TextEvent | ReasoningEvent | ToolCallEvent | DoneEvent | ErrorEvent
    | EmbeddingsEvent | TranscriptionEvent | AudioEvent
)  # fmt: skip
Event = RequestEvent | SpareEvent | ReadyEvent | FailedEvent | TrimmedEvent | HeartbeatEvent
