"""Validate OpenAI request bodies into runner commands, with OpenAI-style 400 errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest
from ..models.catalog import is_valid_model_id
from ..pool.pool import validate_keep_alive

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 4
MAX_TOKEN_ID = 2**31 - 1  # no vocabulary is larger; the model's own size is checked once it is known


class InvalidParam(BadRequest):
    def __init__(self, message: str, param: str | None, code: str | None = None):
        super().__init__(message, reason="invalid_request_error")
        self.param = param
        self.code = code


@dataclass
class ParsedRequest:
    model: str
    stream: bool
    include_usage: bool
    keep_alive: float | None
    command: dict[str, Any]  # what the runner gets (see runner/protocol.py)


def _number(body, name, low, high, default):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidParam(f"{name} must be a number from {low} to {high}", name)
    return float(value)


def _max_tokens(body: dict[str, Any], limit: int, default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParam(f"{name} must be a positive integer", name)
        if value > limit:
            raise InvalidParam(f"{name} must be at most {limit} on this server (c.MLXManager.max_tokens_limit)", name)
        return value
    return min(default, limit)


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise InvalidParam(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return stop


def _logit_bias(body: dict[str, Any]) -> dict[str, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise InvalidParam("logit_bias must map token ids to numbers from -100 to 100", "logit_bias")
    out = {}
    for key, value in bias.items():
        if (
            not (str(key).isascii() and str(key).isdigit() and len(str(key)) <= 9)
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not -100 <= value <= 100
        ):
            raise InvalidParam("logit_bias must map token ids to numbers from -100 to 100", "logit_bias")
        out[str(int(key))] = float(value)
    return out


def _content_text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidParam(f"{where}.content: only text parts are supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidParam(f"{where}.content must be a string or a list of text parts", where)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidParam("messages must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidParam(f"{where} must be an object", where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidParam(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        content = _content_text(message.get("content"), where)
        tool_calls = message.get("tool_calls")
        if content is None and not (role == "assistant" and tool_calls):
            raise InvalidParam(f"{where}.content is required", f"{where}.content")
        clean = {"role": "system" if role == "developer" else role, "content": content or ""}
        if tool_calls is not None:
            if role != "assistant" or not isinstance(tool_calls, list):
                raise InvalidParam(f"{where}.tool_calls must be a list on an assistant message", f"{where}.tool_calls")
            clean["tool_calls"] = tool_calls
        if role == "tool" and isinstance(message.get("tool_call_id"), str):
            clean["tool_call_id"] = message["tool_call_id"]
        out.append(clean)
    return out


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None or body.get("tool_choice") == "none":
        return None
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str) and t["function"]["name"]
        for t in tools
    ):  # fmt: skip
        raise InvalidParam("tools must be a list of {type: 'function', function: {name, parameters}}", "tools")
    return tools or None


def parse(body: dict[str, Any], kind: str, max_tokens_limit: int) -> ParsedRequest:
    """`kind` is "chat" (chat/completions) or "completion" (completions)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParam("model is required", "model")
    if not is_valid_model_id(model):  # before anything records or looks up the id
        raise InvalidParam(
            "model must be a model id such as 'org/name' or 'local/<folder name>' (see GET mlx/v1/models)",
            "model",
            "invalid_model_id",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidParam("stream must be true or false", "stream")
    if body.get("n", 1) != 1:
        raise InvalidParam("only n = 1 is supported", "n")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise InvalidParam("stream_options must be an object", "stream_options")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidParam("seed must be an integer", "seed")
    keep_alive = body.get("keep_alive")
    try:
        validate_keep_alive(keep_alive)
    except BadRequest as exc:
        raise InvalidParam(exc.message, "keep_alive") from None
    command: dict[str, Any] = {
        "kind": kind,
        "max_tokens": _max_tokens(body, max_tokens_limit, 16 if kind == "completion" else max_tokens_limit),
        "temperature": _number(body, "temperature", 0, 2, 1.0),
        "top_p": _number(body, "top_p", 0, 1, 1.0),
        "seed": seed,
        "stop": _stop(body),
        "logit_bias": _logit_bias(body),
    }
    if kind == "chat":
        command["messages"] = _messages(body)
        command["tools"] = _tools(body)
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
        command["prompt"] = prompt
    return ParsedRequest(model, stream, bool(stream_options.get("include_usage")), keep_alive, command)


def check_token_ids(command: dict[str, Any], vocab_size: int | None) -> None:
    """Token ids from the client must index the model's embedding table: MLX does no bounds
    checks, so one id past the end reads foreign memory or crashes the shared runner."""
    if not vocab_size:
        return
    prompt = command.get("prompt")
    if isinstance(prompt, list):
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
