"""The one inference request every wire format translates into, validated once.

A protocol module (`protocols/…`) reads its own body shape (declared in protocols/models.py)
into an `InferenceRequest` (raising `InvalidParam` with its own field names), then `validate()` checks what is common to all of
them (model id, keep-alive, token budget, ranges, tools, output format, unsupported parts) and
`command()` turns it into the runner's `generate` command (runner/protocol.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BadRequest, InvalidParam
from ..models.ids import is_valid_model_id
from ..pool.pool import validate_keep_alive
from ..runner.protocol import MAX_TOP_LOGPROBS, GenerateCommand, InvalidCommand
from . import images

MAX_STOP = 16  # protocols may allow fewer (OpenAI: 4)
MAX_STOP_CHARS = 256  # a stop string is matched at every step: a long one costs every stream of the runner
MAX_TOOLS = 128
MAX_MESSAGES = 10_000
MAX_SCHEMA_BYTES = 256 * 1024  # a tool's parameters or a response format's schema, as JSON
TOOL_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_TOKEN_ID = 2**31 - 1
MAX_EMBEDDING_INPUTS = 2048  # inputs of one embeddings request
MAX_SPEECH_CHARS = 4096  # text of one speech request


# -- message parts --------------------------------------------------------------------------------
@dataclass
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass
class ImagePart:
    """An image (data URL / base64 or a URL); validated into base64 `data` (inference/images.py)."""

    media_type: str | None = None
    data: str | None = None  # base64
    url: str | None = None
    type: Literal["image"] = "image"


@dataclass
class ToolCallPart:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    type: Literal["tool_call"] = "tool_call"


@dataclass
class ToolResultPart:
    call_id: str
    content: str
    is_error: bool = False
    type: Literal["tool_result"] = "tool_result"


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart


@dataclass
class Message:
    role: Literal["system", "user", "assistant", "tool"]
    parts: list[Part] = field(default_factory=list)

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False

    def as_template(self) -> dict[str, Any]:
        """The OpenAI function form chat templates (and mlx-lm's tool parsers) expect."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters or {"type": "object"}}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass
class OutputFormat:
    """`json_object`, or `json_schema` with the schema to enforce (by the runner's grammar)."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False

    def as_command(self) -> dict[str, Any]:
        if self.type == "json_schema":
            return {"type": "json_schema", "schema": self.schema}
        return {"type": "json_object"}


ToolChoice = Literal["auto", "none", "required"] | dict[str, str]  # {"name": …} for one function


@dataclass
class InferenceRequest:
    model: str
    kind: Literal["chat", "completion"] = "chat"
    messages: list[Message] = field(default_factory=list)
    prompt: str | list[int] | None = None  # completions only
    echo: bool = False  # completions: the prompt (with its logprobs) comes back before the output
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    # OpenAI's presence / frequency penalties and mlx-lm's repetition penalty (None = off).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[str, float] = field(default_factory=dict)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    output_format: OutputFormat | None = None
    # A thinking model's reasoning comes apart from its answer either way; this says whether it
    # thinks: True / False (the template's enable_thinking), None: the template's default.
    reasoning: bool | None = None
    # Log-probabilities of the output tokens with this many alternatives each (None: none).
    logprobs: int | None = None
    keep_alive: float | None = None
    speculative: Literal["prompt_lookup"] | None = None  # this request's speculation (None: the model's own)
    # What only a profile sets (profiles.Applied): a context below the model's, and one of mlx-lm's
    # tool parsers instead of the one the chat template implies.
    context_length: int | None = None
    tool_parser: str | None = None
    stream: bool = False
    include_usage: bool = False
    # The protocol's spelling of common fields, for `param` in errors (runner errors included).
    names: dict[str, str] = field(default_factory=dict)

    def within(self, max_tokens_limit: int) -> None:
        """The server's policy: at most `max_tokens_limit` tokens, and that many when none are asked
        for. More is clamped, not refused (as the real APIs do for their models): agents ask for
        32,000 and expect the answer to end with a length stop. The runner clamps again to the room
        the context leaves."""
        self.max_tokens = max_tokens_limit if self.max_tokens is None else min(self.max_tokens, max_tokens_limit)

    def param(self, name: str | None) -> str | None:
        return self.names.get(name, name) if name else name

    # -- validation, once for every protocol -----------------------------------------------------
    def validate(self, default_max_tokens: int | None = None) -> InferenceRequest:
        """The request as the protocol reads it (`default_max_tokens`: the protocol's default,
        e.g. completions' 16); the server's own limits are applied by the service (`within`)."""
        if not isinstance(self.model, str) or not self.model:
            raise InvalidParam("model is required", self.param("model"))
        if not is_valid_model_id(self.model):  # before anything records or looks up the id
            raise InvalidParam(
                "model must be a model id such as 'org/name' or 'local/<folder name>' (see GET mlx/v1/models)",
                self.param("model"),
                "invalid_model_id",
            )
        try:
            validate_keep_alive(self.keep_alive)
        except BadRequest as exc:
            raise InvalidParam(exc.message, self.param("keep_alive")) from None
        if self.max_tokens is None:
            self.max_tokens = default_max_tokens
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidParam(
                f"{self.param('logprobs')} must be an integer from 0 to {MAX_TOP_LOGPROBS}", self.param("logprobs")
            )
        if len(self.stop) > MAX_STOP:
            raise InvalidParam(f"at most {MAX_STOP} stop sequences", self.param("stop"))
        if any(len(stop) > MAX_STOP_CHARS for stop in self.stop):
            raise InvalidParam(f"a stop sequence may have at most {MAX_STOP_CHARS} characters", self.param("stop"))
        if len(self.tools) > MAX_TOOLS:
            raise InvalidParam(f"at most {MAX_TOOLS} tools", self.param("tools"))
        if len(self.messages) > MAX_MESSAGES:
            raise InvalidParam(f"at most {MAX_MESSAGES} messages", self.param("messages"), "too_many_messages")
        for tool in self.tools:
            if not TOOL_NAME_RE.fullmatch(tool.name):
                raise InvalidParam(
                    f"tool name {tool.name[:80]!r} must be 1-64 letters, digits, '_' or '-'", self.param("tools")
                )
            if len(json.dumps(tool.parameters or {})) > MAX_SCHEMA_BYTES:
                raise InvalidParam(
                    f"tool {tool.name}'s schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", self.param("tools")
                )
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise InvalidParam("tool names must be unique", self.param("tools"))
        if isinstance(self.tool_choice, dict):
            if self.tool_choice.get("name") not in names:
                raise InvalidParam(
                    f"tool_choice names {self.tool_choice.get('name')!r}, which is not one of the tools",
                    self.param("tool_choice"),
                )
        elif self.tool_choice == "required" and not self.tools:
            raise InvalidParam("tool_choice 'required' needs tools", self.param("tool_choice"))
        if self.output_format is not None and self.output_format.type == "json_schema":
            if not isinstance(self.output_format.schema, dict):
                raise InvalidParam("the JSON schema must be an object", self.param("response_format"))
            if len(json.dumps(self.output_format.schema)) > MAX_SCHEMA_BYTES:
                raise InvalidParam(
                    f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", self.param("response_format")
                )
        if self.kind == "chat":
            if not self.messages:
                raise InvalidParam("at least one message is required", self.param("messages"))
        return self

    def has_images(self) -> bool:
        return any(isinstance(p, ImagePart) for m in self.messages for p in m.parts)

    def check_images(self, limits: images.ImageLimits) -> None:
        """Decode, bound and recognise every image (inference/images.py) before a runner sees
        one; only a vision model takes them (the service asks the pool for one)."""
        parts = [p for m in self.messages for p in m.parts if isinstance(p, ImagePart)]
        if len(parts) > limits.max_images:
            raise InvalidParam(
                f"at most {limits.max_images} images per request (c.MLXManager.max_images_per_request)",
                self.param("messages"),
                "too_many_images",
            )
        for part in parts:
            try:
                part.data, part.url = images.decode(part.url, part.data, part.media_type, limits.allow_urls), None
            except images.ImageRefused as exc:
                raise InvalidParam(str(exc), self.param("messages"), "invalid_image") from None

    # -- the runner's command --------------------------------------------------------------------
    def template_messages(self) -> list[dict[str, Any]]:
        """Messages in the shape chat templates take (OpenAI's): tool calls on assistant
        messages, each tool result a `tool` message (in order, before the rest of its turn)."""
        out: list[dict[str, Any]] = []
        for message in self.messages:
            text = message.text()
            if message.role == "assistant":
                calls = [
                    {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
                    for p in message.parts
                    if isinstance(p, ToolCallPart)
                ]
                entry: dict[str, Any] = {"role": "assistant", "content": text}
                if calls:
                    entry["tool_calls"] = calls
                out.append(entry)
                continue
            for part in message.parts:
                if isinstance(part, ToolResultPart):
                    out.append({"role": "tool", "tool_call_id": part.call_id, "content": part.content})
            if message.role == "tool":
                continue
            if any(isinstance(p, ImagePart) for p in message.parts):  # a vision model's parts, in order
                content = [
                    {"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image", "data": p.data}
                    for p in message.parts
                    if isinstance(p, (TextPart, ImagePart))
                ]
                out.append({"role": message.role, "content": content})
            elif text or not any(isinstance(p, ToolResultPart) for p in message.parts):
                out.append({"role": message.role, "content": text})
        return out

    def runner_command(self, cache_scope: str | None = None) -> GenerateCommand:
        """The runner's `generate` command for this request (runner/protocol.py; the pool sets its
        `id`). What the runner would refuse of a request validated here is refused here, naming
        the client's field; a field the command does not declare is a bug, and fails loudly."""
        command: dict[str, Any] = {
            "kind": self.kind,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": list(self.stop),
            "logit_bias": dict(self.logit_bias),
            "response_format": self.output_format.as_command() if self.output_format else None,
            "reasoning": self.reasoning,
        }
        for name in ("top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
                     "speculative", "context_length", "tool_parser"):  # fmt: skip
            if getattr(self, name) is not None:
                command[name] = getattr(self, name)
        if self.kind == "chat":
            command["messages"] = self.template_messages()
            tools = self.tools
            if self.tool_choice == "none":
                tools = []
            elif isinstance(self.tool_choice, dict):
                tools = [t for t in tools if t.name == self.tool_choice["name"]]
            command["tools"] = [t.as_template() for t in tools] or None
            if tools and self.tool_choice != "auto":
                command["tool_choice"] = "required"  # the runner forces a call (to the one tool left if named)
            elif any(t.strict for t in tools):
                command["strict_tools"] = [t.name for t in tools if t.strict]
        else:
            command["prompt"] = self.prompt
            if self.echo:
                command["echo"] = True
        if cache_scope is not None:
            command["cache_scope"] = cache_scope
        try:
            return GenerateCommand(**command)
        except InvalidCommand as exc:
            raise InvalidParam(str(exc), self.param(exc.param)) from None

    def command(self) -> dict[str, Any]:
        """`runner_command()` as the runner receives it, less the `id` the pool gives it."""
        return self.runner_command().wire()


# -- structured fields the protocols share (each names the field in its own spelling) -------------
def json_schema_format(schema: Any, name: Any, strict: Any, param: str) -> OutputFormat:
    if not isinstance(schema, dict):
        raise InvalidParam(f"{param}: schema must be a JSON schema object", param)
    if name is not None and not isinstance(name, str):
        raise InvalidParam(f"{param}: name must be a string", param)
    return OutputFormat("json_schema", schema, name, bool(strict))


def check_raw_message_count(raw: bytes) -> None:
    """A body whose bytes name more roles than MAX_MESSAGES is refused before it is parsed
    (counting takes ~1 ms per MB; a parse 12 and the GIL with it)."""
    if len(raw) > MAX_MESSAGES * 8 and raw.count(b'"role"') > MAX_MESSAGES:
        raise InvalidParam(f"at most {MAX_MESSAGES} messages", "messages", "too_many_messages")


def check_body_sizes(body: dict[str, Any]) -> None:
    """The lists of a body bounded before any protocol reads them item by item: a flood of
    bodies with huge lists costs their sender a 400, never the server a long parse."""
    for key in ("messages", "input"):
        items = body.get(key)
        if isinstance(items, list) and len(items) > MAX_MESSAGES:
            raise InvalidParam(f"at most {MAX_MESSAGES} messages", key, "too_many_messages")
    tools = body.get("tools")
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        raise InvalidParam(f"at most {MAX_TOOLS} tools", "tools")


def prompt_text_chars(request: InferenceRequest) -> int:
    """Characters of a request's text (its messages or its prompt string)."""
    if isinstance(request.prompt, str):
        return len(request.prompt)
    return sum(len(p.text) for m in request.messages for p in m.parts if isinstance(p, TextPart))


def check_token_ids(command: dict[str, Any], vocab_size: int | None) -> None:
    """Token ids from the client must index the model's embedding table: MLX does no bounds
    checks, so one id past the end reads foreign memory or crashes the shared runner."""
    if not vocab_size:
        return
    prompt = command.get("prompt")
    if isinstance(prompt, list) and prompt and not 0 <= min(prompt) <= max(prompt) < vocab_size:  # in C
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidParam(
                f"prompt token id {bad} is outside this model's vocabulary (0 to {vocab_size - 1})",
                "prompt",
                "invalid_token_id",
            )
    bad = next((k for k in command.get("logit_bias") or {} if not 0 <= int(k) < vocab_size), None)
    if bad is not None:
        raise InvalidParam(
            f"logit_bias token id {bad} is outside this model's vocabulary (0 to {vocab_size - 1})",
            "logit_bias",
            "invalid_token_id",
        )


def read_tools(raw: Any, schema_key: str, types: tuple[Any, ...], shape: str) -> list[Tool]:
    """A `tools` list as Tools, for protocols whose tools are flat objects: a `type` in `types`,
    a `name`, an optional `description` and a JSON schema under `schema_key`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidParam(f"tools must be a list of {shape}", "tools")
    tools = []
    for i, tool in enumerate(raw):
        if (
            not isinstance(tool, dict)
            or tool.get("type") not in types
            or not isinstance(tool.get("name"), str)
            or not tool["name"]
            or not isinstance(tool.get(schema_key) or {}, dict)
        ):
            raise InvalidParam(f"tools[{i}] must be one of the {shape}", f"tools[{i}]")
        description = tool.get("description") if isinstance(tool.get("description"), str) else None
        tools.append(Tool(tool["name"], description, tool.get(schema_key), bool(tool.get("strict"))))
    return tools


def openai_output_format(fmt: Any, param: str, nested: str | None = None) -> OutputFormat | None:
    """An OpenAI format object `{"type": "text" | "json_object" | "json_schema", …}` (chat's
    `response_format`, with the schema under `nested` = "json_schema"; Responses' `text.format`,
    with it flat)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind == "json_schema":
        spec = fmt.get(nested) if nested else fmt
        if not isinstance(spec, dict):
            raise InvalidParam(f"{param}.{nested} must be an object {{name, schema, strict}}", param)
        schema = spec.get("schema", {}) if nested else spec.get("schema")
        return json_schema_format(schema, spec.get("name"), spec.get("strict"), param)
    raise InvalidParam(f"{param}.type must be 'text', 'json_object' or 'json_schema'", param)
