"""Model profiles and aliases (the seed system's profiles; Ollama's Modelfiles).

A profile names a model (or several, in order: the first that is up and has room in its queue
serves) and its defaults: a system prompt, sampling values, `max_tokens`, `keep_alive`,
`chat_template_kwargs` (`enable_thinking`), and a `draft_model` (a local model id sharing the
model's tokenizer, or "prompt_lookup") that its models load with (`draft_for`: a runner has one
draft for everyone, so it applies however the model is asked for; `c.MLXManager.draft_models`
and a load that names a draft come first). Two settings no body can carry go to each request
made through the profile (`Applied`): a `context_length` below the model's, and a `tool_parser`
(one of mlx-lm's, instead of what the chat template implies). Its name is a model id clients
may ask for, and aliases map the names clients insist on (`claude-sonnet-4-5`, `gpt-*`) to
profiles or models. Profiles come from `c.MLXManager.profiles`, overlaid by what admins set
through `mlx/api/profiles` (kept in SQLite); aliases from `c.MLXManager.aliases`.

A request's own values win: a profile only fills in what the body leaves out, in the body's own
protocol spelling, before the protocol reads it (so every check and limit applies as usual).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, NotFound
from .inference.limits import ServerBusy
from .models.ids import is_draft_id, is_valid_model_id
from .models.inspection import tool_parser_names
from .storage import Database, utcnow

NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?")
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
NUMBERS = (*SAMPLING, "max_tokens", "context_length", "keep_alive")
KEYS = {"model", "models", "description", "system", *NUMBERS, "draft_model", "tool_parser", "chat_template_kwargs"}
# What each protocol calls the fields a profile fills in (None: it has no such field).
SPELLING = {
    "chat": {"max_tokens": "max_tokens", **{k: k for k in SAMPLING}},
    "completion": {"max_tokens": "max_tokens", **{k: k for k in SAMPLING}},
    "messages": {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k"},
    "responses": {"max_tokens": "max_output_tokens", "temperature": "temperature", "top_p": "top_p"},
}


def check_profile(name: Any, value: Any) -> dict[str, Any]:
    """A profile as given (config or API), or a 400 naming what is wrong."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise BadRequest("a profile name is 1-64 ASCII letters, digits, '.', '_', ':' or '-'", reason="invalid_profile")
    if not isinstance(value, dict) or not set(value) <= KEYS:
        raise BadRequest(f"profile {name}: keys are {', '.join(sorted(KEYS))}", reason="invalid_profile")
    models = value.get("models", [value["model"]] if "model" in value else None)
    if not isinstance(models, list) or not 1 <= len(models) <= 8 or not all(is_valid_model_id(m) for m in models):
        raise BadRequest(
            f"profile {name}: model (or models, 1 to 8 in order) must be model ids", reason="invalid_profile"
        )
    for key in NUMBERS:
        number = value.get(key)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            raise BadRequest(f"profile {name}: {key} must be a number", reason="invalid_profile")
    if not isinstance(value.get("system", ""), str) or len(value.get("system", "")) > 100_000:
        raise BadRequest(
            f"profile {name}: system must be a text of at most 100,000 characters", reason="invalid_profile"
        )
    context = value.get("context_length")
    if context is not None and (not isinstance(context, int) or context < 2):
        raise BadRequest(f"profile {name}: context_length must be an integer of at least 2", reason="invalid_profile")
    parser = value.get("tool_parser")
    if parser is not None and parser not in tool_parser_names():
        raise BadRequest(
            f"profile {name}: tool_parser must be one of mlx-lm's: {', '.join(tool_parser_names())}",
            reason="invalid_profile",
        )
    draft = value.get("draft_model")
    if draft is not None and draft != "prompt_lookup" and not is_draft_id(draft):
        raise BadRequest(
            f'profile {name}: draft_model must be a local model id or "prompt_lookup"', reason="invalid_profile"
        )
    kwargs = value.get("chat_template_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(v, (bool, int, float, str)) for v in kwargs.values()):
        raise BadRequest(
            f"profile {name}: chat_template_kwargs must map names to plain values", reason="invalid_profile"
        )
    return {**{k: v for k, v in value.items() if k != "model"}, "models": models}


def check_aliases(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadRequest("aliases must map names (glob patterns allowed) to profiles or models", reason="invalid_alias")
    return dict(value)


def protocol_of(path: str) -> str:
    """The wire format of a generating route, from its path."""
    for suffix, protocol in (("/chat/completions", "chat"), ("/completions", "completion"),
                             ("/messages", "messages"), ("/responses", "responses")):  # fmt: skip
        if path.rstrip("/").endswith(suffix):
            return protocol
    return "chat"


@dataclass(frozen=True)
class Applied:
    """What a profile did to a body: the name asked for (the audit keeps it), and the settings
    no body can carry, for each request it makes (`InferenceRequest.context_length`, `.tool_parser`)."""

    asked: str
    context_length: int | None = None
    tool_parser: str | None = None


class Profiles:
    def __init__(
        self,
        db: Database,
        configured: dict[str, Any],
        aliases: dict[str, str],
        serves: Callable[[str], Awaitable[bool]],
    ):
        self.db = db
        self.configured = configured
        self.aliases = aliases
        self.serves = serves  # whether a model is up and has room in its queue now
        self._stored: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        rows = self.db.write_sync(lambda conn: conn.execute("SELECT name, body FROM profiles").fetchall())
        self._stored = {name: json.loads(body) for name, body in rows}

    def table(self) -> dict[str, dict[str, Any]]:
        return {**self.configured, **self._stored}

    def resolve(self, asked: str) -> tuple[str, dict[str, Any]] | None:
        """(profile name, profile) that `asked` names, through an alias if one matches (exact
        names first, then glob patterns, case-insensitively); None when it names neither."""
        table = {name.lower(): (name, profile) for name, profile in self.table().items()}
        target = asked
        for pattern, to in sorted(self.aliases.items(), key=lambda item: any(c in item[0] for c in "*?[")):
            if fnmatch.fnmatchcase(asked.lower(), pattern.lower()):
                target = to
                break
        if target.lower() in table:
            return table[target.lower()]
        if target != asked and is_valid_model_id(target):
            return target, {"models": [target]}  # an alias straight to a model
        return None

    def draft_for(self, model_id: str) -> str | None:
        """The `draft_model` of the first profile (by name) that serves `model_id` and names one."""
        for _, profile in sorted(self.table().items()):
            if profile.get("draft_model") and any(m.lower() == model_id.lower() for m in profile["models"]):
                return profile["draft_model"]
        return None

    async def apply(self, body: dict[str, Any], protocol: str) -> Applied | None:
        """Fill in `body` from the profile its `model` names (the model that serves, then every
        default the body leaves out); None when it named no profile."""
        asked = body.get("model")
        if not (self.configured or self._stored or self.aliases):  # the common case: nothing to look up
            return None
        found = self.resolve(asked) if isinstance(asked, str) else None
        if found is None:
            return None
        name, profile = found
        for model in profile["models"]:
            if await self.serves(model):
                body["model"] = model
                break
        else:
            raise ServerBusy(
                f"none of profile {name}'s models can serve now ({', '.join(profile['models'])}); try again shortly",
                headers={"Retry-After": "2"},
            )
        for key, field in SPELLING[protocol].items():
            if profile.get(key) is not None:
                body.setdefault(field, profile[key])
        if profile.get("keep_alive") is not None:
            body.setdefault("keep_alive", profile["keep_alive"])
        if profile.get("system"):
            _add_system(body, protocol, profile["system"])
        thinking = (profile.get("chat_template_kwargs") or {}).get("enable_thinking")
        if isinstance(thinking, bool):
            if protocol == "messages":
                body.setdefault("thinking", {"type": "adaptive" if thinking else "disabled"})
            elif protocol == "responses" and not thinking:
                body.setdefault("reasoning", {"effort": "none"})
        return Applied(asked, profile.get("context_length"), profile.get("tool_parser"))

    def entries(self) -> list[dict[str, Any]]:
        """`GET mlx/v1/models` entries of the profiles."""
        return [
            {"id": name, "object": "model", "created": 0, "owned_by": "profile", "models": profile["models"],
             **({"context_length": profile["context_length"]} if profile.get("context_length") else {})}
            for name, profile in sorted(self.table().items())
        ]  # fmt: skip

    async def put(self, name: str, value: Any) -> dict[str, Any]:
        profile = check_profile(name, value)
        await self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO profiles (name, body, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                "SET body = excluded.body, updated_at = excluded.updated_at",
                (name, json.dumps(profile), utcnow()),
            )
        )
        self._stored[name] = profile
        return {"name": name, **profile}

    async def delete(self, name: str) -> None:
        if name not in self._stored:
            raise NotFound(
                f"no stored profile {name!r} (profiles from the config are changed there)", reason="not_found"
            )
        await self.db.write(lambda conn: conn.execute("DELETE FROM profiles WHERE name = ?", (name,)))
        del self._stored[name]


def _add_system(body: dict[str, Any], protocol: str, system: str) -> None:
    """The profile's system prompt, unless the request brings its own."""
    if protocol == "messages":
        body.setdefault("system", system)
    elif protocol == "responses":
        body.setdefault("instructions", system)
    elif protocol == "chat":
        messages = body.get("messages")
        if isinstance(messages, list) and not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
            body["messages"] = [{"role": "system", "content": system}, *messages]
