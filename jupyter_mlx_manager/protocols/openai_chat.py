"""OpenAI chat completions and completions: bodies → `InferenceRequest`; events → replies."""

from __future__ import annotations

import codecs
import dataclasses
import json
import uuid
from typing import Any

from ..inference.request import (
    MAX_TOKEN_ID,
    ImagePart,
    InferenceRequest,
    InvalidParam,
    Message,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    openai_output_format,
)
from .common import common_fields
from .models import (
    MAX_PROMPTS,
    PROMPT_MESSAGE,
    ChatCompletionRequest,
    ChatToolChoiceFunction,
    CompletionRequest,
    OpenAISampling,
    read,
    stop_list,
    token_ids,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
NAMES = {"max_tokens": "max_tokens", "response_format": "response_format"}
CHAT_NAMES = {**NAMES, "logprobs": "top_logprobs"}


def _content_parts(content: Any, where: str) -> list[Any] | None:
    if content is None:
        return None
    if isinstance(content, str):
        return [TextPart(content)]
    if isinstance(content, list):
        parts: list[Any] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(TextPart(part["text"]))
            elif (
                kind == "image_url"
                and isinstance(part.get("image_url"), dict)
                and isinstance(part["image_url"].get("url"), str)
                and part["image_url"]["url"]
            ):
                parts.append(ImagePart(url=part["image_url"]["url"]))
            else:
                raise InvalidParam(f"{where}.content: only text (and image_url) parts are supported", where)
        return parts
    raise InvalidParam(f"{where}.content must be a string or a list of text parts", where)


def _tool_call_parts(tool_calls: Any, where: str) -> list[ToolCallPart]:
    if not isinstance(tool_calls, list):
        raise InvalidParam(f"{where}.tool_calls must be a list on an assistant message", f"{where}.tool_calls")
    out = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidParam(f"{where}.tool_calls: each needs function.name", f"{where}.tool_calls")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        out.append(ToolCallPart(str(call.get("id") or ""), function["name"], arguments))
    return out


def messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise InvalidParam("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidParam(f"{where} must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidParam(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        parts = _content_parts(message.get("content"), where)
        tool_calls = message.get("tool_calls")
        if parts is None and not (role == "assistant" and tool_calls):
            raise InvalidParam(f"{where}.content is required", f"{where}.content")
        parts = parts or []
        if tool_calls is not None:
            if role != "assistant":
                raise InvalidParam(f"{where}.tool_calls must be a list on an assistant message", f"{where}.tool_calls")
            parts += _tool_call_parts(tool_calls, where)
        if role == "tool":
            call_id = message.get("tool_call_id") if isinstance(message.get("tool_call_id"), str) else ""
            text = "".join(p.text for p in parts if isinstance(p, TextPart))
            out.append(Message("tool", [ToolResultPart(call_id, text)]))
            continue
        out.append(Message("system" if role == "developer" else role, parts))
    return out


def tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) and t["function"]["name"]
        and isinstance(t["function"].get("parameters") or {}, dict)
        for t in raw
    ):  # fmt: skip
        raise InvalidParam("tools must be a list of {type: 'function', function: {name, parameters}}", "tools")
    return [
        Tool(
            t["function"]["name"],
            t["function"].get("description") if isinstance(t["function"].get("description"), str) else None,
            t["function"].get("parameters"),
            bool(t["function"].get("strict")),
        )
        for t in raw
    ]


def tool_choice(choice: str | ChatToolChoiceFunction | None) -> Any:
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else {"name": choice.function.name}


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    """How many alternatives per token to report (None: no logprobs): `logprobs: true` with
    `top_logprobs` (which needs it)."""
    if not body.logprobs:
        if body.top_logprobs is not None:
            raise InvalidParam("top_logprobs needs logprobs: true", "top_logprobs")
        return None
    return body.top_logprobs or 0


def _prompt(value: Any) -> str | list[int] | None:
    """One prompt: a non-empty string, or non-empty non-negative token ids; None otherwise."""
    if isinstance(value, str):
        return value or None
    ids = token_ids(value)
    return ids if ids and min(ids) >= 0 else None


def prompts(prompt: Any) -> list[str | list[int]]:
    """Completions' `prompt`: a string, a list of token ids, or a list of either (lm-eval's
    `local-completions` sends `[[ids]]`): one prompt each, in order."""
    one = _prompt(prompt)
    if one is not None:
        return [one]
    if isinstance(prompt, list) and prompt and len(prompt) <= MAX_PROMPTS:
        each = [_prompt(p) for p in prompt]
        if all(p is not None for p in each):
            return each
    raise InvalidParam(PROMPT_MESSAGE, "prompt")


def parse_completions(body: dict[str, Any]) -> list[InferenceRequest]:
    """A completions body: one request per prompt (the same parameters each)."""
    fields = read(CompletionRequest, body)
    many = prompts(fields.prompt)
    request = _request(fields, "completion")
    request.echo = bool(fields.echo)
    request.logprobs = fields.logprobs
    request.prompt = many[0]
    request.validate(16)
    return [dataclasses.replace(request, prompt=p) for p in many]


def parse(body: dict[str, Any], kind: str) -> InferenceRequest:
    """`kind` is "chat" (chat/completions) or "completion" (completions, its first prompt)."""
    if kind != "chat":
        return parse_completions(body)[0]
    fields = read(ChatCompletionRequest, body)
    request = _request(fields, "chat")
    request.logprobs = chat_logprobs(fields)
    request.messages = messages(fields.messages)
    request.tools = tools(fields.tools)
    request.tool_choice = tool_choice(fields.tool_choice)
    request.output_format = openai_output_format(fields.response_format, "response_format", nested="json_schema")
    return request.validate()


def _request(fields: OpenAISampling, kind: str) -> InferenceRequest:
    """The fields chat and completions share (`max_tokens: 0` scores a prompt only with `echo`)."""
    max_tokens, max_name = fields.max_completion_tokens, "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_name = fields.max_tokens, "max_tokens"
    if max_tokens == 0 and not getattr(fields, "echo", False):
        raise InvalidParam(f"{max_name} must be an integer from 1 to {MAX_TOKEN_ID}", max_name)
    return InferenceRequest(
        **common_fields(fields),
        kind="chat" if kind == "chat" else "completion",
        max_tokens=max_tokens,
        min_p=fields.min_p,
        presence_penalty=fields.presence_penalty,
        frequency_penalty=fields.frequency_penalty,
        repetition_penalty=fields.repetition_penalty,
        stop=stop_list(fields.stop),
        include_usage=bool(fields.stream_options and fields.stream_options.include_usage),
        names={**(CHAT_NAMES if kind == "chat" else NAMES), "max_tokens": max_name},
    )


def tool_call(call: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": call["name"], "arguments": call["arguments"]},
    }


ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
    409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error",
}  # fmt: skip


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }


def sum_usage(usages: list[Any]) -> dict[str, Any]:
    """OpenAI's usage object over several runs (a completions request's prompts)."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(u.cached_tokens for u in usages)},
    }


class ChatRenderer:
    """The runner's events as a chat completion, or as its chunks."""

    keepalive = ": keepalive\n\n"
    done_marker = "data: [DONE]\n\n"

    def __init__(
        self, completion_id: str, created: int, model: str, include_usage: bool = False, logprobs: bool = False
    ):
        self.id, self.created, self.model = completion_id, created, model
        self.include_usage = include_usage
        self.logprobs: list[dict[str, Any]] | None = [] if logprobs else None  # the runner's entries
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.usage = None  # set by the handler

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> tuple:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        if self.logprobs is not None:
            choice["logprobs"] = logprobs
        return None, {**self._envelope(), "choices": [choice]}

    def opening(self) -> list:
        return [self._chunk({"role": "assistant", "content": ""})]

    def feed(self, event: dict[str, Any]) -> list:
        kind = event["ev"]
        if kind == "text":
            self.text.append(event["text"])
            if self.logprobs is None:
                return [self._chunk({"content": event["text"]})]
            entries = event.get("logprobs") or []
            self.logprobs.extend(entries)
            return [self._chunk({"content": event["text"]}, logprobs={"content": entries, "refusal": None})]
        if kind == "reasoning":
            self.reasoning.append(event["text"])
            return [self._chunk({"reasoning_content": event["text"]})]
        if kind == "tool_call":
            call = tool_call(event["call"])
            self.tool_calls.append(call)
            return [self._chunk({"tool_calls": [{"index": len(self.tool_calls) - 1, **call}]})]
        return []

    def closing(self) -> list:
        out = [self._chunk({}, self.usage.finish_reason)]
        if self.include_usage:
            out.append((None, {**self._envelope(), "choices": [], "usage": self.usage.as_openai()}))
        return out

    def error_events(self, status: int, message: str, code: str | None, param: str | None) -> list:
        return [(None, openai_error(status, message, code, param))]

    def body(self) -> dict[str, Any]:
        text = "".join(self.text)
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if self.tool_calls else "")}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": self.usage.finish_reason,
            "logprobs": None if self.logprobs is None else {"content": self.logprobs, "refusal": None},
        }
        return {**self._envelope(), "object": "chat.completion", "choices": [choice], "usage": self.usage.as_openai()}


@dataclasses.dataclass
class _Choice:
    """One prompt's text completion as it comes: its text and OpenAI's parallel logprob lists
    (`text_offset` in characters from the start of the echoed prompt, or of the output)."""

    text: list[str] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)
    token_logprobs: list[float | None] = dataclasses.field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = dataclasses.field(default_factory=list)
    text_offset: list[int] = dataclasses.field(default_factory=list)
    offset: int = 0
    utf8: Any = dataclasses.field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def add(self, entries: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """Record token entries (a prompt's first has `logprob: null`); (their text, the
        chunk's logprobs). Characters, not bytes: a token may hold part of a character."""
        start, text = len(self.tokens), []
        for entry in entries:
            piece = self.utf8.decode(bytes(entry["bytes"]))
            self.text_offset.append(self.offset)
            self.offset += len(piece)
            text.append(piece)
            self.tokens.append(entry["token"])
            self.token_logprobs.append(entry["logprob"])
            first = entry["logprob"] is None
            # OpenAI's top_logprobs also name the chosen token; none for the first prompt token.
            self.top_logprobs.append(
                None if first else {t["token"]: t["logprob"] for t in [*entry["top_logprobs"], entry]}
            )
        return "".join(text), self.logprobs(start)

    def logprobs(self, start: int = 0) -> dict[str, Any]:
        return {
            "tokens": self.tokens[start:],
            "token_logprobs": self.token_logprobs[start:],
            "top_logprobs": self.top_logprobs[start:],
            "text_offset": self.text_offset[start:],
        }


class CompletionRenderer:
    """The runner's events for each prompt of a completions request (tagged with its `index`
    when there are several) as one text completion, or as its chunks. With `echo` the prompt
    comes first (the runner's `prompt` event), with its logprobs when asked."""

    keepalive = ": keepalive\n\n"
    done_marker = "data: [DONE]\n\n"

    def __init__(self, completion_id: str, created: int, model: str, prompts: int, include_usage: bool, logprobs: bool):
        self.id, self.created, self.model = completion_id, created, model
        self.include_usage, self.with_logprobs = include_usage, logprobs
        self.choices = [_Choice() for _ in range(prompts)]
        self.usages: list[Any] = []  # set by the handler, one per prompt

    def _envelope(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def _chunk(self, index: int, text: str, logprobs: Any = None, finish_reason: str | None = None) -> tuple:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        return None, {**self._envelope(), "choices": [choice]}

    def opening(self) -> list:
        return [self._chunk(0, "")]

    def feed(self, event: dict[str, Any]) -> list:
        kind, index = event["ev"], event.get("index", 0)
        if kind not in ("prompt", "text"):
            return []
        choice = self.choices[index]
        text, logprobs = event["text"], None
        if self.with_logprobs and event.get("logprobs") is not None:
            decoded, logprobs = choice.add(event["logprobs"])
            if kind == "prompt":  # the echoed prompt is its tokens' text, as text_offset counts it
                text = decoded
        choice.text.append(text)
        return [self._chunk(index, text, logprobs)]

    def closing(self) -> list:
        out = [self._chunk(i, "", None, u.finish_reason) for i, u in enumerate(self.usages)]
        if self.include_usage:
            out.append((None, {**self._envelope(), "choices": [], "usage": sum_usage(self.usages)}))
        return out

    def error_events(self, status: int, message: str, code: str | None, param: str | None) -> list:
        return [(None, openai_error(status, message, code, param))]

    def body(self) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "text": "".join(c.text),
                "logprobs": c.logprobs() if self.with_logprobs else None,
                "finish_reason": u.finish_reason,
            }
            for i, (c, u) in enumerate(zip(self.choices, self.usages))
        ]
        return {**self._envelope(), "choices": choices, "usage": sum_usage(self.usages)}
