"""Anthropic Messages (`POST mlx/v1/messages`, `…/count_tokens`): bodies → `InferenceRequest`;
the runner's events → a Message, or Anthropic's stream (`message_start`, `content_block_*`,
`message_delta`, `message_stop`, `ping`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..inference.request import (
    ImagePart,
    InferenceRequest,
    InvalidParam,
    Message,
    OutputFormat,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    json_schema_format,
    read_tools,
)
from .common import common_fields
from .models import (
    AnthropicNamedTool,
    AnthropicToolChoice,
    CountTokensRequest,
    MessagesRequest,
    Thinking,
    read,
    stop_list,
)

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    409: "invalid_request_error", 413: "request_too_large", 415: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
    503: "overloaded_error", 529: "overloaded_error",
}  # fmt: skip
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def _text_blocks(value: Any, where: str) -> str:
    """A string, or a list of text blocks (system, tool_result content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for block in value:
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise InvalidParam(f"{where}: only text blocks are supported here", where)
            texts.append(block["text"])
        return "\n".join(texts) if where.endswith("system") else "".join(texts)
    raise InvalidParam(f"{where} must be a string or a list of text blocks", where)


def _tool_result_text(value: Any, where: str) -> str:
    """A tool result's text; an image or document block in it (a screenshot, a PDF page) is
    named in the text instead: tool results reach the model as text."""
    if isinstance(value, list):
        value = [
            {"type": "text", "text": f"[{b['type']} omitted]"}
            if isinstance(b, dict) and b.get("type") in ("image", "document")
            else b
            for b in value
        ]
    return _text_blocks(value, where)


def _image(block: dict[str, Any], where: str) -> ImagePart:
    source = block.get("source")
    if (
        not isinstance(source, dict)
        or source.get("type") not in ("base64", "url")
        or not all(isinstance(source.get(k), (str, type(None))) for k in ("media_type", "data", "url"))
    ):
        raise InvalidParam(
            f"{where}.source must be {{type: 'base64', media_type, data}} or {{type: 'url', url}}", where
        )
    return ImagePart(media_type=source.get("media_type"), data=source.get("data"), url=source.get("url"))


def _blocks(role: str, content: Any, where: str) -> list[Any]:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise InvalidParam(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
    parts: list[Any] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(TextPart(block["text"]))
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                raise InvalidParam(f"{at}: tool_use needs id and name", at)
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise InvalidParam(f"{at}.input must be an object", at)
            parts.append(ToolCallPart(block["id"], block["name"], json.dumps(arguments)))
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidParam(f"{at}: tool_result needs tool_use_id", at)
            result = _tool_result_text(block.get("content", ""), f"{at}.content")
            parts.append(ToolResultPart(block["tool_use_id"], result, bool(block.get("is_error"))))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier reasoning is not fed back to the model
        else:
            raise InvalidParam(f"{at}: unsupported content block {kind!r} for role {role}", at)
    return parts


CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _tool_choice(choice: AnthropicToolChoice | AnthropicNamedTool | None) -> Any:
    if choice is None:
        return "auto"
    return {"name": choice.name} if isinstance(choice, AnthropicNamedTool) else CHOICES[choice.type]


def _thinking(thinking: Thinking | None) -> bool | None:
    """None: the chat template's default (a thinking model's reasoning still comes apart)."""
    return None if thinking is None else thinking.type != "disabled"


def _output_format(body: MessagesRequest) -> tuple[OutputFormat | None, str]:
    """Structured output: `output_config.format` (or the older `output_format`), a json_schema."""
    name, fmt = "output_config.format", body.output_config.format if body.output_config else None
    if fmt is None and body.output_format is not None:
        name, fmt = "output_format", body.output_format
    if fmt is None:
        return None, name
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise InvalidParam(f"{name} must be {{type: 'json_schema', schema}}", name)
    return json_schema_format(fmt.get("schema"), None, True, name), name


def parse(body: dict[str, Any], count_only: bool = False) -> InferenceRequest:
    """A Messages body (`count_only`: a count_tokens body, without max_tokens)."""
    fields = read(CountTokensRequest if count_only else MessagesRequest, body)
    if fields.max_tokens is None and not count_only:
        raise InvalidParam("max_tokens: Field required", "max_tokens")
    raw = fields.messages
    if not isinstance(raw, list) or not raw:
        raise InvalidParam("messages: a non-empty list is required", "messages")
    messages: list[Message] = []
    if fields.system is not None:
        messages.append(Message("system", [TextPart(_text_blocks(fields.system, "system"))]))
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant", "system"):
            raise InvalidParam(f"{where}: Unexpected role {role!r}: use 'user' or 'assistant'", f"{where}.role")
        if "content" not in message:
            raise InvalidParam(f"{where}.content: Field required", f"{where}.content")
        if role == "system":  # Claude Code's mid-conversation notes: system text at this place
            messages.append(Message("system", [TextPart(_text_blocks(message["content"], f"{where}.content"))]))
            continue
        messages.append(Message(role, _blocks(role, message["content"], where)))
    output_format, format_name = _output_format(fields)
    request = InferenceRequest(
        **common_fields(fields),  # seed, logit_bias, keep_alive: extensions (extra_body)
        kind="chat",
        messages=messages,
        output_format=output_format,
        max_tokens=fields.max_tokens,
        stop=stop_list(fields.stop_sequences),
        tools=read_tools(
            fields.tools,
            "input_schema",
            (None, "custom"),
            "custom tools {name, description, input_schema} (no server tools)",
        ),
        tool_choice=_tool_choice(fields.tool_choice),
        reasoning=_thinking(fields.thinking),
        names={"stop": "stop_sequences", "response_format": format_name},
    )
    return request.validate()


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"arguments": text}
    return value if isinstance(value, dict) else {"value": value}


class MessagesRenderer:
    """The runner's events as one Message, or as Anthropic's stream events."""

    keepalive = 'event: ping\ndata: {"type": "ping"}\n\n'
    done_marker = ""

    def __init__(self, message_id: str, model: str):
        self.id, self.model = message_id, model
        self.blocks: list[dict[str, Any]] = []  # the Message's content, built as events come
        self._open: str | None = None  # the type of the block being streamed
        self.usage = None  # set by the handler

    def _usage(self) -> dict[str, Any]:
        u = self.usage
        return {
            "input_tokens": u.prompt_tokens - u.cached_tokens,
            "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": u.cached_tokens,
            "cache_creation_input_tokens": 0,
        }

    def _stop(self) -> tuple[str, str | None]:
        u = self.usage
        if u.finish_reason == "stop" and u.stop_sequence:
            return "stop_sequence", u.stop_sequence
        return STOP_REASONS.get(u.finish_reason or "stop", "end_turn"), None

    def _close(self) -> list:
        if self._open is None:
            return []
        index = len(self.blocks) - 1
        events = []
        if self._open == "thinking":
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": ""},
                    },
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        self._open = None
        return events

    def opening(self) -> list:
        message = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {**self._usage(), "output_tokens": 0},
        }  # fmt: skip
        return [("message_start", {"type": "message_start", "message": message}), ("ping", {"type": "ping"})]

    def feed(self, event: dict[str, Any]) -> list:
        kind = event["ev"]
        if kind in ("text", "reasoning"):
            block_type, field, delta_type = (
                ("text", "text", "text_delta") if kind == "text" else ("thinking", "thinking", "thinking_delta")
            )
            events = []
            if self._open != block_type:
                events += self._close()
                block = (
                    {"type": "text", "text": ""}
                    if kind == "text"
                    else {"type": "thinking", "thinking": "", "signature": ""}
                )
                self.blocks.append(block)
                self._open = block_type
                events.append(
                    (
                        "content_block_start",
                        {"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": dict(block)},
                    )
                )
            self.blocks[-1][field] += event["text"]
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": len(self.blocks) - 1,
                        "delta": {"type": delta_type, field: event["text"]},
                    },
                )
            )
            return events
        if kind == "tool_call":
            events = self._close()
            call = event["call"]
            block = {
                "type": "tool_use",
                "id": "toolu_" + uuid.uuid4().hex[:24],
                "name": call["name"],
                "input": _arguments(call["arguments"]),
            }
            self.blocks.append(block)
            index = len(self.blocks) - 1
            events += [
                ("content_block_start", {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}),
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}}),
                ("content_block_stop", {"type": "content_block_stop", "index": index}),
            ]  # fmt: skip
            return events
        return []

    def closing(self) -> list:
        stop_reason, stop_sequence = self._stop()
        usage = self._usage()
        return self._close() + [
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]

    def error_events(self, status: int, message: str, code: str | None, param: str | None) -> list:
        return [("error", anthropic_error(status, message))]

    def body(self) -> dict[str, Any]:
        stop_reason, stop_sequence = self._stop()
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.blocks,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": self._usage(),
        }
