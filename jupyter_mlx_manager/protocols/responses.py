"""OpenAI Responses (`POST mlx/v1/responses`): bodies (+ the stored conversation of a
`previous_response_id`) → `InferenceRequest`; the runner's events → a Response object, or the
`response.*` stream (created, in_progress, output_item.added, content_part.added,
output_text.delta, … done, completed / incomplete)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..inference.request import (
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
from .models import ResponsesRequest, read

NAMES = {"max_tokens": "max_output_tokens", "response_format": "text.format", "messages": "input"}
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _hex() -> str:
    return uuid.uuid4().hex


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`input` as a list of items (a string is one user message)."""
    return items_of(body.get("input"))


def items_of(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
        raise InvalidParam("input must be a string or a list of items", "input")
    return raw


def _content(content: Any, where: str) -> list[Any]:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise InvalidParam(f"{where}.content must be a string or a list of content parts", where)
    parts: list[Any] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append(TextPart(part["text"]))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(TextPart(part["refusal"]))
        elif kind == "input_image" and isinstance(part.get("image_url"), (str, type(None))):
            parts.append(ImagePart(url=part.get("image_url")))
        else:
            raise InvalidParam(f"{where}.content: unsupported part {kind!r}", where)
    return parts


def _call(out: list[Message], part: ToolCallPart) -> None:
    """A call joins the assistant turn it follows (several calls: one turn)."""
    if out and out[-1].role == "assistant":
        out[-1].parts.append(part)
    else:
        out.append(Message("assistant", [part]))


def messages_of(items: list[dict[str, Any]], where: str = "input", tools: ToolSet | None = None) -> list[Message]:
    tools = tools or ToolSet()
    out: list[Message] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise InvalidParam(f"{at} must be an object", at)
        kind = item.get("type", "message")
        if kind == "message":
            role = ROLES.get(item["role"]) if isinstance(item.get("role"), str) else None
            if role is None:
                raise InvalidParam(f"{at}.role must be user, assistant, system or developer", at)
            out.append(Message(role, _content(item.get("content"), at)))
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name")):
                raise InvalidParam(f"{at}: function_call needs call_id and name", at)
            arguments = item.get("arguments", "{}")
            name = tools.model_name(item["name"], item.get("namespace"))
            _call(
                out,
                ToolCallPart(item["call_id"], name, arguments if isinstance(arguments, str) else json.dumps(arguments)),
            )
        elif kind == "custom_tool_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "input")):
                raise InvalidParam(f"{at}: custom_tool_call needs call_id, name and input", at)
            name = tools.model_name(item["name"], item.get("namespace"))
            _call(out, ToolCallPart(item["call_id"], name, json.dumps({CUSTOM_INPUT: item["input"]})))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            if not isinstance(item.get("call_id"), str):
                raise InvalidParam(f"{at}: function_call_output needs call_id", at)
            if isinstance(output, list):
                texts = [p.get("text") for p in output if isinstance(p, dict)]
                if not all(isinstance(t, str) for t in texts):
                    raise InvalidParam(f"{at}.output parts must carry text strings", at)
                output = "".join(texts)
            if not isinstance(output, str):
                raise InvalidParam(f"{at}.output must be a string", at)
            out.append(Message("tool", [ToolResultPart(item["call_id"], output)]))
        elif kind in ("reasoning", "web_search_call"):
            continue  # earlier reasoning is not fed back to the model; hosted calls never ran here
        else:
            raise InvalidParam(f"{at}: unsupported item type {kind!r}", at)
    return out


# Tools OpenAI runs on its side; this server cannot: left out of what the model sees, listed back.
HOSTED_TOOLS = (
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11", "file_search",
    "code_interpreter", "image_generation", "computer_use_preview", "computer_use", "mcp", "local_shell",
)  # fmt: skip
CUSTOM_INPUT = "input"  # a custom tool's free-form input, as the model sees it: one string argument


@dataclass
class ToolSet:
    """A Responses `tools` list as the model sees it: function tools (those of `namespace`
    groups expanded, named `<namespace>__<name>` only where a name repeats) and custom tools
    (one string argument); hosted tools left out. `origin` maps the model's names back."""

    tools: list[Tool] = field(default_factory=list)
    origin: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)  # name → (type, namespace, name)
    hosted: set[str] = field(default_factory=set)

    def model_name(self, name: str, namespace: str | None = None) -> str:
        """The model's name of a tool the client names (with its namespace, if any)."""
        for model_name, (_, space, original) in self.origin.items():
            if original == name and space == namespace:
                return model_name
        return name


def _function(tool: Any, where: str) -> Tool:
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(tool.get("name"), str)
        or not tool["name"]
        or not isinstance(tool.get("parameters") or {}, dict)
    ):
        raise InvalidParam(f"{where} must be a function tool {{type: 'function', name, parameters}}", where)
    description = tool.get("description") if isinstance(tool.get("description"), str) else None
    return Tool(tool["name"], description, tool.get("parameters"), bool(tool.get("strict")))


def _custom(tool: dict[str, Any], where: str) -> Tool:
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise InvalidParam(f"{where}: a custom tool needs a name", where)
    fmt = tool.get("format") or {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "grammar"):
        raise InvalidParam(f"{where}.format must be {{type: 'text'}} or {{type: 'grammar', syntax, definition}}", where)
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    text: dict[str, Any] = {"type": "string", "description": "the tool's free-form input"}
    parameters = {"type": "object", "properties": {CUSTOM_INPUT: text}, "required": [CUSTOM_INPUT]}
    if fmt["type"] == "text":
        return Tool(tool["name"], description or None, parameters)
    if fmt.get("syntax") not in ("lark", "regex") or not isinstance(fmt.get("definition"), str):
        raise InvalidParam(f"{where}.format: a grammar needs syntax 'lark' or 'regex' and a definition", where)
    if fmt["syntax"] == "regex":  # enforced: the input is a JSON string, held to the regex (llguidance)
        text["pattern"] = f"^(?:{fmt['definition']})$"
        return Tool(tool["name"], description or None, {**parameters, "additionalProperties": False}, strict=True)
    # A Lark grammar cannot hold the JSON-escaped string the model writes: the model is shown it.
    description += f"\nThe input must match this Lark grammar:\n{fmt['definition']}"
    return Tool(tool["name"], description.strip(), parameters)


def tool_set(body: dict[str, Any]) -> ToolSet:
    """The tools of a body (`tools`)."""
    raw = body.get("tools")
    out = ToolSet()
    if raw is None:
        return out
    if not isinstance(raw, list):
        raise InvalidParam("tools must be a list of tools", "tools")
    entries: list[tuple[Tool, str, str | None]] = []  # (tool, type, namespace)
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            entries.append((_function(tool, where), "function", None))
        elif kind == "custom":
            entries.append((_custom(tool, where), "custom", None))
        elif kind == "namespace" and isinstance(tool.get("name"), str) and isinstance(tool.get("tools"), list):
            for j, inner in enumerate(tool["tools"]):
                at = f"{where}.tools[{j}]"
                if isinstance(inner, dict) and inner.get("type") == "custom":
                    entries.append((_custom(inner, at), "custom", tool["name"]))
                else:
                    entries.append((_function(inner, at), "function", tool["name"]))
        elif kind in HOSTED_TOOLS:
            out.hosted.add(kind)
        else:
            raise InvalidParam(
                f"{where} must be a function, custom or namespace tool, or a hosted tool this server leaves out",
                where,
            )
    counts: dict[str, int] = {}
    for tool, _, _ in entries:
        counts[tool.name] = counts.get(tool.name, 0) + 1
    for tool, kind, namespace in entries:
        original = tool.name
        if namespace is not None and counts[original] > 1:
            tool.name = f"{namespace}__{original}"
        out.tools.append(tool)
        out.origin[tool.name] = (kind, namespace, original)
    return out


def _tool_choice(choice: Any, tools: ToolSet) -> Any:
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("function", "custom") and isinstance(choice.get("name"), str):
        return {"name": tools.model_name(choice["name"], choice.get("namespace"))}
    if kind in HOSTED_TOOLS:
        raise InvalidParam(
            f"tool_choice forces {kind!r}, a hosted tool this server cannot run (it is left out of the tools)",
            "tool_choice",
            "unsupported_tool",
        )
    raise InvalidParam(
        "tool_choice must be 'none', 'auto', 'required' or {type: 'function' | 'custom', name}", "tool_choice"
    )


def previous_id(body: dict[str, Any]) -> str | None:
    """The stored response a body continues (read before its history is fetched)."""
    return read(ResponsesRequest, body).previous_response_id


def _logprobs(body: ResponsesRequest) -> int | None:
    """Alternatives per token when `include` asks for "message.output_text.logprobs" (with
    `top_logprobs` of them, 0 to 20); None: no logprobs, as OpenAI does without the include."""
    return (body.top_logprobs or 0) if LOGPROBS_INCLUDE in (body.include or []) else None


def parse(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> InferenceRequest:
    """A Responses body; `history`: the items of the previous response's conversation."""
    fields = read(ResponsesRequest, body)
    items = items_of(fields.input)
    tools = tool_set(body)
    messages = messages_of(history or [], "previous_response_id", tools) + messages_of(items, "input", tools)
    if fields.instructions:
        messages.insert(0, Message("system", [TextPart(fields.instructions)]))
    request = InferenceRequest(
        **common_fields(fields),  # seed, logit_bias, top_k, keep_alive: extensions (extra_body)
        kind="chat",
        messages=messages,
        max_tokens=fields.max_output_tokens,
        logprobs=_logprobs(fields),
        tools=tools.tools,
        tool_choice=_tool_choice(fields.tool_choice, tools),
        output_format=openai_output_format(fields.text.format if fields.text else None, "text.format"),
        reasoning=None if fields.reasoning is None else (fields.reasoning.effort != "none"),
        names={**NAMES, "logprobs": "top_logprobs"},
    )
    return request.validate()


class ResponsesRenderer:
    """The runner's events as a Response object, or as the `response.*` stream."""

    keepalive = ": keepalive\n\n"
    done_marker = ""

    def __init__(self, response_id: str, body: dict[str, Any], request: InferenceRequest):
        self.id = response_id
        self.created_at = int(time.time())
        self.request = request
        self.tools = tool_set(body)
        self.echo = {
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": body.get("previous_response_id"),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "tools": body.get("tools") or [],
            "tool_choice": body.get("tool_choice") or "auto",
            "text": body.get("text") or {"format": {"type": "text"}},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "store": body.get("store", True) is not False,
            "metadata": body.get("metadata") or {},
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "truncation": "disabled",
            "user": body.get("user"),
        }
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._seq = 0
        self._final: dict[str, Any] | None = None
        self._pending: list = []
        self.usage = None  # set by the handler

    # -- the response object ----------------------------------------------------------------------
    def response(self, status: str = "in_progress") -> dict[str, Any]:
        body = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "model": self.request.model, "output": self.output if status != "in_progress" else [],
            "error": None, "incomplete_details": None, "usage": None, **self.echo,
        }  # fmt: skip
        if status != "in_progress":
            u = self.usage
            body["usage"] = {
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": u.cached_tokens},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            }
            if status == "incomplete":
                body["incomplete_details"] = {"reason": "max_output_tokens"}
            text = "".join(c["text"] for item in self.output if item["type"] == "message" for c in item["content"])
            body["output_text"] = text
        return json.loads(json.dumps(body))  # a snapshot, not a view of the live lists

    def final(self) -> dict[str, Any]:
        if self._final is None:
            self._pending = self._close()  # sent by closing()
            status = "incomplete" if self.usage.finish_reason == "length" else "completed"
            self._final = self.response(status)
        return self._final

    def _event(self, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return kind, event

    # -- stream events ---------------------------------------------------------------------------
    def _close(self) -> list:
        item = self._open
        if item is None:
            return []
        self._open = None
        index = len(self.output) - 1
        item["status"] = "completed"
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=part["text"], logprobs=part["logprobs"]))  # fmt: skip
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=dict(part)))  # fmt: skip
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            events.append(self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=text))  # fmt: skip
        events.append(self._event("response.output_item.done", output_index=index, item=json.loads(json.dumps(item))))
        return events

    def opening(self) -> list:
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, event: dict[str, Any]) -> list:
        kind = event["ev"]
        if kind in ("text", "reasoning"):
            item_type = "message" if kind == "text" else "reasoning"
            events = []
            if self._open is None or self._open["type"] != item_type:
                events += self._close()
                if kind == "text":
                    item = {
                        "id": "msg_" + _hex(),
                        "type": "message",
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    }
                else:
                    item = {
                        "id": "rs_" + _hex(),
                        "type": "reasoning",
                        "status": "in_progress",
                        "summary": [],
                        "content": [],
                    }
                self.output.append(item)
                self._open = item
                index = len(self.output) - 1
                events.append(
                    self._event("response.output_item.added", output_index=index, item=json.loads(json.dumps(item)))
                )
                if kind == "text":
                    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                    events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                              content_index=0, part=dict(part)))  # fmt: skip
                    item["content"].append(part)
                else:
                    item["content"].append({"type": "reasoning_text", "text": ""})
            item, index = self._open, len(self.output) - 1
            item["content"][0]["text"] += event["text"]
            name = "response.output_text.delta" if kind == "text" else "response.reasoning_text.delta"
            extra = {}
            if kind == "text":  # the runner's entries are OpenAI's shape: {token, logprob, bytes, top_logprobs}
                extra["logprobs"] = event.get("logprobs") or []
                item["content"][0]["logprobs"] += extra["logprobs"]
            events.append(
                self._event(name, item_id=item["id"], output_index=index, content_index=0, delta=event["text"], **extra)
            )
            return events
        if kind == "tool_call":
            call = event["call"]
            kind, namespace, name = self.tools.origin.get(call["name"], ("function", None, call["name"]))
            make = self._custom_call if kind == "custom" else self._function_call
            return self._close() + make(name, namespace, call)
        return []

    def _function_call(self, name: str, namespace: str | None, call: dict[str, Any]) -> list:
        """A `function_call` item, named as the client named the tool (with its `namespace`)."""
        item = {"id": "fc_" + _hex(), "type": "function_call", "status": "in_progress",
                "call_id": "call_" + _hex()[:24], "name": name, "arguments": ""}  # fmt: skip
        return self._whole_call(item, namespace, "arguments", call["arguments"], "response.function_call_arguments",
                                name=name)  # fmt: skip

    def _custom_call(self, name: str, namespace: str | None, call: dict[str, Any]) -> list:
        """A `custom_tool_call` item: the model's one string argument is the tool's input."""
        try:
            arguments = json.loads(call["arguments"])
        except ValueError:
            arguments = None
        text = arguments.get(CUSTOM_INPUT) if isinstance(arguments, dict) else None
        text = text if isinstance(text, str) else call["arguments"]
        item = {"id": "ctc_" + _hex(), "type": "custom_tool_call", "status": "in_progress",
                "call_id": "call_" + _hex()[:24], "name": name, "input": ""}  # fmt: skip
        return self._whole_call(item, namespace, "input", text, "response.custom_tool_call_input")

    def _whole_call(
        self, item: dict[str, Any], namespace: str | None, field: str, value: str, stream: str, **done: Any
    ) -> list:
        """A tool call item and its events: the runner gives a call whole, so its `field` (empty
        when added) comes as one `<stream>.delta`, then `<stream>.done` (with `done` and the value)."""
        if namespace is not None:
            item["namespace"] = namespace
        self.output.append(item)
        index = len(self.output) - 1
        events = [self._event("response.output_item.added", output_index=index, item=dict(item))]
        item[field] = value
        events.append(self._event(f"{stream}.delta", item_id=item["id"], output_index=index, delta=value))
        events.append(self._event(f"{stream}.done", item_id=item["id"], output_index=index, **done, **{field: value}))
        item["status"] = "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def closing(self) -> list:
        final = self.final()
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return self._pending + [self._event(kind, response=final)]

    def error_events(self, status: int, message: str, code: str | None, param: str | None) -> list:
        return [self._event("error", code=code, message=message, param=param)]

    def body(self) -> dict[str, Any]:
        return self.final()
