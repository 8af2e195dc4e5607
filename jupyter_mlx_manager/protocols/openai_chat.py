"""OpenAI chat completions and completions: bodies → `InferenceRequest`; events → replies."""

from __future__ import annotations

import codecs
import uuid
from typing import Any

from ..inference.request import (
    MAX_TOP_LOGPROBS,
    ImagePart,
    InferenceRequest,
    InvalidParam,
    Message,
    OutputFormat,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    boolean,
    integer,
    logit_bias,
    number,
    openai_output_format,
    positive_int,
    string_list,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 4
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
            elif kind == "image_url" and isinstance(part.get("image_url"), dict) and part["image_url"].get("url"):
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
            import json

            arguments = json.dumps(arguments)
        out.append(ToolCallPart(str(call.get("id") or ""), function["name"], arguments))
    return out


def messages(body: dict[str, Any]) -> list[Message]:
    raw = body.get("messages")
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


def tools(body: dict[str, Any]) -> list[Tool]:
    raw = body.get("tools")
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) and t["function"]["name"]
        and isinstance(t["function"].get("parameters", {}), dict)
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


def tool_choice(body: dict[str, Any]) -> Any:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        return choice
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        return {"name": choice["function"]["name"]}
    raise InvalidParam(
        "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}", "tool_choice"
    )


def response_format(body: dict[str, Any]) -> OutputFormat | None:
    return openai_output_format(body.get("response_format"), "response_format", nested="json_schema")


def logprobs(body: dict[str, Any], kind: str) -> int | None:
    """How many alternatives per token to report (None: no logprobs): chat's `logprobs: true`
    with `top_logprobs` (which needs it), completions' `logprobs: n`."""
    if kind != "chat":
        return integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    top = integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if not boolean(body, "logprobs"):
        if top is not None:
            raise InvalidParam("top_logprobs needs logprobs: true", "top_logprobs")
        return None
    return top or 0


def parse(body: dict[str, Any], kind: str, max_tokens_limit: int) -> InferenceRequest:
    """`kind` is "chat" (chat/completions) or "completion" (completions)."""
    if body.get("n", 1) != 1:
        raise InvalidParam("only n = 1 is supported", "n")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidParam("stream_options must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidParam("seed must be an integer", "seed")
    max_tokens, max_name = None, "max_tokens"
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            max_tokens, max_name = positive_int(body, name), name
            break
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParam("model is required", "model")
    request = InferenceRequest(
        model=model,
        kind="chat" if kind == "chat" else "completion",
        max_tokens=max_tokens,
        temperature=number(body, "temperature", 0, 2, 1.0),
        top_p=number(body, "top_p", 0, 1, 1.0),
        top_k=integer(body, "top_k", 0, 1_000_000),
        min_p=number(body, "min_p", 0, 1, None),
        presence_penalty=number(body, "presence_penalty", -2, 2, None),
        frequency_penalty=number(body, "frequency_penalty", -2, 2, None),
        repetition_penalty=number(body, "repetition_penalty", 0.01, 10, None),
        seed=seed,
        stop=string_list(body, "stop", MAX_STOP),
        logit_bias=logit_bias(body),
        logprobs=logprobs(body, kind),
        keep_alive=body.get("keep_alive"),
        stream=boolean(body, "stream"),
        include_usage=bool(stream_options.get("include_usage")),
        names={**(CHAT_NAMES if kind == "chat" else NAMES), "max_tokens": max_name},
    )
    if kind == "chat":
        request.messages = messages(body)
        request.tools = tools(body)
        request.tool_choice = tool_choice(body)
        request.output_format = response_format(body)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        valid_tokens = (
            isinstance(prompt, list)
            and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
        )
        if not (isinstance(prompt, str) and prompt) and not valid_tokens:
            raise InvalidParam("prompt must be a non-empty string or a list of token ids", "prompt")
        request.prompt = prompt
    return request.validate(max_tokens_limit, 16 if kind == "completion" else None)


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


class ChatRenderer:
    """The runner's events as chat completion (or text completion) replies and chunks."""

    keepalive = ": keepalive\n\n"
    done_marker = "data: [DONE]\n\n"

    def __init__(
        self,
        kind: str,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool = False,
        logprobs: bool = False,
    ):
        self.kind, self.id, self.created, self.model = kind, completion_id, created, model
        self.include_usage = include_usage
        self.logprobs: list[dict[str, Any]] | None = [] if logprobs else None  # the runner's entries
        self.offsets: list[int] = []  # completions' text_offset of each entry
        self._offset = 0  # characters of the tokens so far
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.usage = None  # set by the handler

    def _envelope(self) -> dict[str, Any]:
        chat = self.kind == "chat"
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
    ) -> tuple[None, dict[str, Any]]:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if self.logprobs is not None:
                choice["logprobs"] = logprobs
        else:
            choice = {"index": 0, "text": delta.get("text", ""), "logprobs": logprobs, "finish_reason": finish_reason}
        return None, {**self._envelope(), "choices": [choice]}

    def _add_logprobs(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """Record a text event's token entries; the chunk's `logprobs`."""
        start = len(self.logprobs)
        self.logprobs.extend(entries)
        for entry in entries:  # characters, not bytes: a token may hold part of a character
            self.offsets.append(self._offset)
            self._offset += len(self._utf8.decode(bytes(entry["bytes"])))
        return self._logprobs(entries, self.offsets[start:])

    def _logprobs(self, entries: list[dict[str, Any]], offsets: list[int]) -> dict[str, Any]:
        """Token entries in this route's shape: chat's `{content: [...]}` as the runner sends
        them, or completions' parallel lists (top_logprobs also name the chosen token, as
        OpenAI's do; text_offset counts characters from the start of the output)."""
        if self.kind == "chat":
            return {"content": entries, "refusal": None}
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in [*e["top_logprobs"], e]} for e in entries],
            "text_offset": offsets,
        }

    def opening(self) -> list:
        return [self._chunk({"role": "assistant", "content": ""} if self.kind == "chat" else {"text": ""})]

    def feed(self, event: dict[str, Any]) -> list:
        kind = event["ev"]
        if kind == "text":
            self.text.append(event["text"])
            delta = {"content": event["text"]} if self.kind == "chat" else {"text": event["text"]}
            if self.logprobs is None:
                return [self._chunk(delta)]
            return [self._chunk(delta, logprobs=self._add_logprobs(event.get("logprobs") or []))]
        if kind == "reasoning":
            self.reasoning.append(event["text"])
            return [self._chunk({"reasoning_content": event["text"]})] if self.kind == "chat" else []
        if kind == "tool_call":
            call = tool_call(event["call"])
            self.tool_calls.append(call)
            return [self._chunk({"tool_calls": [{"index": len(self.tool_calls) - 1, **call}]})]
        return []

    def closing(self) -> list:
        out = [self._chunk({} if self.kind == "chat" else {"text": ""}, self.usage.finish_reason)]
        if self.include_usage:
            out.append((None, {**self._envelope(), "choices": [], "usage": self.usage.as_openai()}))
        return out

    def error_events(self, status: int, message: str, code: str | None, param: str | None) -> list:
        return [(None, openai_error(status, message, code, param))]

    def body(self) -> dict[str, Any]:
        text, usage = "".join(self.text), self.usage
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text or (None if self.tool_calls else "")}
            if self.reasoning:
                message["reasoning_content"] = "".join(self.reasoning)
            if self.tool_calls:
                message["tool_calls"] = self.tool_calls
            choice = {"index": 0, "message": message}
            envelope = {**self._envelope(), "object": "chat.completion"}
        else:
            choice, envelope = {"index": 0, "text": text}, self._envelope()
        choice["finish_reason"] = usage.finish_reason
        choice["logprobs"] = None if self.logprobs is None else self._logprobs(self.logprobs, self.offsets)
        return {**envelope, "choices": [choice], "usage": usage.as_openai()}
