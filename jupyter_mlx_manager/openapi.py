"""The OpenAPI 3.1 description of every `mlx/api` and `mlx/v1` route (`GET mlx/api/openapi.json`).

The request bodies of the inference routes are the models the protocols parse with
(protocols/models.py, their JSON schemas with nested definitions hoisted into the components);
the rest is written by hand next to the handlers. Kept honest by a schemathesis run against a
live server in the tests (every response must conform to the schema given here). Schemas name
the fields clients rely on and allow more (objects grow).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ._version import __version__
from .models.kinds import KINDS
from .protocols import models

JSON = "application/json"


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _list_of(key: str, item: str) -> dict[str, Any]:
    return _obj({key: {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}}}, [key])


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"message": STR, "reason": _nullable("string"), "param": STR}, ["message"]),
    "OpenAIError": _obj(
        {
            "error": _obj(
                {"message": STR, "type": STR, "param": _nullable("string"), "code": _nullable("string")},
                ["message", "type"],
            )
        },
        ["error"],
    ),
    "User": _obj(
        {
            "id": INT,
            "username": STR,
            "status": {"enum": ["pending", "approved", "disabled"]},
            "is_admin": BOOL,
            "created_at": STR,
        },
        ["id", "username", "status", "is_admin", "created_at"],
    ),
    "Credentials": _obj({"username": STR, "password": STR}, ["username", "password"]),
    "UsageRow": _obj(
        {
            "key": _nullable("string"),
            "requests": INT,
            "prompt_tokens": INT,
            "completion_tokens": INT,
            "cached_tokens": INT,
            "audio_seconds": NUM,
        },
        ["key", "requests", "prompt_tokens", "completion_tokens", "cached_tokens"],
    ),  # fmt: skip
    "BudgetLimits": {
        "type": ["object", "null"],
        "properties": {
            w: {"type": "integer", "minimum": 0} for w in ("tokens_per_minute", "tokens_per_day", "tokens_per_month")
        },
        "additionalProperties": False,
    },
    "Budgets": {
        "type": "object",
        "properties": {
            "default": _ref("BudgetLimits"),
            "users": {"type": "object", "additionalProperties": _ref("BudgetLimits")},
            "groups": {"type": "object", "additionalProperties": _ref("BudgetLimits")},
        },
        "additionalProperties": False,
    },
    "BudgetStatus": _obj(
        {"user": STR, "groups": {"type": "array"}, "windows": {"type": "object"}}, ["user", "windows"]
    ),
    "Job": _obj(
        {
            "id": STR,
            "type": {"enum": ["finetune", "evaluate", "convert"]},
            "status": STR,
            "user": STR,
            "created_at": STR,
            "progress": {"type": "object"},
            "result": {"type": ["object", "null"]},
            "error": _nullable("string"),
            "params": {"type": "object"},
        },
        ["id", "type", "status", "user", "created_at"],
    ),  # fmt: skip
    "JobRequest": _obj(
        {
            "type": {"enum": ["finetune", "evaluate", "convert"]},
            "model": STR,
            "models": {"type": "array", "items": STR},
            "data": STR,
            "name": STR,
            "method": {"enum": ["lora", "dora", "full"]},
            "iters": INT,
            "batch_size": INT,
            "learning_rate": NUM,
            "lora_rank": INT,
            "num_layers": INT,
            "max_seq_length": INT,
            "val_fraction": NUM,
            "seed": INT,
            "save_every": INT,
            "metrics": {"type": "array", "items": {"enum": ["perplexity", "accuracy"]}},
            "limit": INT,
            "source": STR,
            "quantize": _obj({"bits": {"enum": [2, 3, 4, 6, 8]}, "group_size": {"enum": [32, 64, 128]}}, ["bits"]),
            "dtype": {"enum": ["float16", "bfloat16", "float32"]},
        },
        ["type"],
    ),  # fmt: skip
    "File": _obj(
        {"id": STR, "object": STR, "bytes": INT, "created_at": INT, "filename": STR, "purpose": STR, "status": STR},
        ["id", "object", "bytes", "created_at", "filename", "purpose"],
    ),
    "Batch": _obj(
        {
            "id": STR,
            "object": STR,
            "endpoint": STR,
            "status": STR,
            "input_file_id": STR,
            "output_file_id": _nullable("string"),
            "error_file_id": _nullable("string"),
            "created_at": INT,
            "request_counts": _obj({"total": INT, "completed": INT, "failed": INT}),
        },
        ["id", "object", "endpoint", "status", "input_file_id", "request_counts"],
    ),  # fmt: skip
    "Login": _obj(
        {"access_token": STR, "token_type": {"const": "bearer"}, "expires_in": INT, "user": _ref("User")},
        ["access_token", "token_type", "expires_in"],
    ),
    "ApiToken": _obj(
        {"id": INT, "name": STR, "token": STR, "created_at": STR, "expires_at": STR},
        ["id", "name", "created_at", "expires_at"],
    ),
    "Ticket": _obj({"token": STR, "expires_in": INT}, ["token", "expires_in"]),
    "Status": _obj(
        {"version": STR, "device": {}, "memory": {"type": "object"}, "pool": {"type": "object"}}, ["version"]
    ),
    "AuditRecord": _obj(
        {
            "id": INT,
            "request_id": STR,
            "time": STR,
            "user": _nullable("string"),
            "client": _nullable("string"),
            "action": STR,
            "endpoint": _nullable("string"),
            "model": _nullable("string"),
            "status": {"enum": ["ok", "error", "cancelled", "timeout"]},
            "prompt_tokens": _nullable("integer"),
            "cached_tokens": _nullable("integer"),
            "completion_tokens": _nullable("integer"),
            "ttft_ms": _nullable("number"),
            "duration_ms": _nullable("number"),
            "error_type": _nullable("string"),
        },
        ["id", "request_id", "time", "action", "status"],
    ),
    "ModelKind": {
        "type": "string",
        "enum": list(KINDS),
        "description": "What a model does: which MLX package serves it and which routes (models/kinds.py)",
    },
    "PoolModel": _obj(
        {
            "model": STR,
            "kind": _ref("ModelKind"),
            "status": STR,
            "pinned": BOOL,
            "keep_alive": NUM,
            "expires_at": _nullable("string"),
            "memory_bytes": INT,
            "pid": INT,
            "loaded_at": STR,
            "last_used": STR,
            "requests": INT,
            "draft_model": _nullable("string"),
        },
        ["model", "status", "pinned", "keep_alive", "memory_bytes", "pid"],
    ),
    "Model": _obj({"id": STR}, ["id"]),
    "Download": _obj(
        {
            "id": INT,
            "repo_id": STR,
            "revision": _nullable("string"),
            "status": STR,
            "downloaded_bytes": _nullable("integer"),
            "total_bytes": _nullable("integer"),
            "files_done": _nullable("integer"),
            "files_total": _nullable("integer"),
            "error": _nullable("string"),
            "created_at": STR,
        },
        ["id", "repo_id", "status"],
    ),
    "Usage": _obj(
        {"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT},
        ["prompt_tokens", "completion_tokens", "total_tokens"],
    ),
    "AnthropicError": _obj(
        {"type": {"const": "error"}, "error": _obj({"type": STR, "message": STR}, ["type", "message"])},
        ["type", "error"],
    ),
    "AnthropicMessage": _obj(
        {
            "id": STR,
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": STR,
            "content": {"type": "array", "items": _obj({"type": STR}, ["type"])},
            "stop_reason": _nullable("string"),
            "stop_sequence": _nullable("string"),
            "usage": _obj({"input_tokens": INT, "output_tokens": INT}, ["input_tokens", "output_tokens"]),
        },
        ["id", "type", "role", "model", "content", "stop_reason", "usage"],
    ),
    "Response": _obj(
        {
            "id": STR,
            "object": {"const": "response"},
            "created_at": INT,
            "status": {"enum": ["completed", "incomplete", "in_progress", "failed"]},
            "model": STR,
            "output": {"type": "array", "items": _obj({"type": STR}, ["type"])},
            "usage": {"type": ["object", "null"]},
            "previous_response_id": _nullable("string"),
            "incomplete_details": {"type": ["object", "null"]},
        },
        ["id", "object", "status", "model", "output"],
    ),
    "ChatCompletion": _obj(
        {"id": STR, "object": STR, "created": INT, "model": STR, "choices": {"type": "array"}, "usage": _ref("Usage")},
        ["id", "object", "model", "choices"],
    ),
}


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    models.ChatCompletionRequest,
    models.CompletionRequest,
    models.MessagesRequest,
    models.CountTokensRequest,
    models.ResponsesRequest,
    models.EmbeddingsRequest,
    models.SpeechBody,
)


def _request_schemas() -> dict[str, Any]:
    """Each request model's JSON schema under its class name, its nested models beside it."""
    out: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, nested in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            if name in SCHEMAS or out.get(name, nested) != nested:
                raise ValueError(f"two schemas named {name}")  # a clash: rename one model
            out[name] = nested
    return out


SCHEMAS.update(_request_schemas())


def _responses(ok: dict[str, Any] | None, code: str = "200", error: str = "Error", stream: str | None = None):
    content: dict[str, Any] = {}
    if ok is not None:
        content[JSON] = {"schema": ok}
    if stream:
        content[stream] = {"schema": STR}
    success: dict[str, Any] = {"description": "success"}
    if content:
        success["content"] = content
    return {code: success, "default": {"description": "error", "content": {JSON: {"schema": _ref(error)}}}}


def _op(summary: str, responses: dict[str, Any], body: dict[str, Any] | None = None, params=None, public=False):
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    return op


def _query(*names: str, kind: str = "string") -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "required": False, "schema": {"type": kind}} for n in names]


def _path(name: str, kind: str = "integer") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


AUDIT_FILTERS = _query("user", "model", "status", "since", "until")


def _paths() -> dict[str, Any]:
    return {
        "/mlx/api/status": {"get": _op("Version, device, memory and pool summary", _responses(_ref("Status")))},
        "/mlx/api/openapi.json": {"get": _op("This description", _responses({"type": "object"}))},
        "/mlx/api/auth/register": {
            "post": _op(
                "Register (pending until approved)", _responses(_ref("User"), "201"), _ref("Credentials"), public=True
            )
        },
        "/mlx/api/auth/login": {
            "post": _op("Password login → access token", _responses(_ref("Login")), _ref("Credentials"), public=True)
        },
        "/mlx/api/auth/me": {"get": _op("The current user", _responses(_ref("User")))},
        "/mlx/api/auth/tokens": {
            "get": _op("Your API tokens", _responses(_list_of("tokens", "ApiToken"))),
            "post": _op(
                "Create an API token (shown once)",
                _responses(_ref("ApiToken"), "201"),
                _obj({"name": STR, "expires_in_days": NUM}, ["name"]),
            ),
        },
        "/mlx/api/auth/tokens/{token_id}": {
            "delete": _op("Revoke one of your API tokens", _responses(None, "204"), params=[_path("token_id")])
        },
        "/mlx/api/auth/ticket": {"post": _op("A short-lived ticket for ?token=", _responses(_ref("Ticket"), "201"))},
        "/mlx/api/users": {"get": _op("Every user (admins)", _responses(_list_of("users", "User")))},
        "/mlx/api/users/{user_id}": {
            "patch": _op(
                "Approve, disable, promote or demote a user (admins)",
                _responses(_ref("User")),
                _obj({"status": {"enum": ["pending", "approved", "disabled"]}, "is_admin": BOOL}),
                params=[_path("user_id")],
            ),
            "delete": _op("Delete a user (admins)", _responses(None, "204"), params=[_path("user_id")]),
        },
        "/mlx/api/audit": {
            "get": _op(
                "Audit records, newest first (your own unless admin)",
                _responses(
                    _obj(
                        {"records": {"type": "array", "items": _ref("AuditRecord")}, "total": INT}, ["records", "total"]
                    )
                ),
                params=AUDIT_FILTERS + _query("limit", "offset", kind="integer"),
            )
        },
        "/mlx/api/audit/stats": {
            "get": _op("Counts, token sums and latencies", _responses({"type": "object"}), params=AUDIT_FILTERS)
        },
        "/mlx/api/audit/export": {
            "get": _op(
                "Every matching record as JSON lines or CSV (streamed)",
                {
                    "200": {
                        "description": "the records",
                        "content": {"application/x-ndjson": {"schema": STR}, "text/csv": {"schema": STR}},
                    },
                    "default": {"description": "error", "content": {JSON: {"schema": _ref("Error")}}},
                },
                params=AUDIT_FILTERS + [{"name": "format", "in": "query", "schema": {"enum": ["jsonl", "csv"]}}],
            )
        },
        "/mlx/api/pool": {
            "get": _op(
                "Loaded models and limits",
                _responses(
                    _obj(
                        {
                            "models": {"type": "array", "items": _ref("PoolModel")},
                            "limits": {"type": "object"},
                            "memory_used_bytes": INT,
                        },
                        ["models", "limits", "memory_used_bytes"],
                    )
                ),
            )
        },
        "/mlx/api/pool/load": {
            "post": _op(
                "Load a local model (pin and long keep-alive: admins), optionally with a draft model "
                "(a local model sharing its tokenizer) or prompt-lookup speculative decoding",
                _responses(_ref("PoolModel")),
                _obj(
                    {
                        "model": STR,
                        "pin": BOOL,
                        "keep_alive": NUM,
                        "draft_model": STR,
                        "speculative": {"type": "string", "enum": ["prompt_lookup"]},
                    },
                    ["model"],
                ),
            )
        },
        "/mlx/api/pool/unload": {
            "post": _op(
                "Unload a model (force, or one others use: admins)",
                _responses(_obj({"model": STR, "status": STR}, ["model", "status"])),
                _obj({"model": STR, "force": BOOL}, ["model"]),
            )
        },
        "/mlx/api/models/search": {
            "get": _op(
                "Search the Hub for MLX models",
                _responses(_list_of("models", "Model")),
                params=_query("q", "author", "arch", "quant", "max_size_gb", "sort", "limit", "kind", "format"),
            )
        },
        "/mlx/api/models/local": {"get": _op("Models on this machine", _responses(_list_of("models", "Model")))},
        "/mlx/api/models/local/{model_id}": {
            "get": _op("One local model", _responses(_ref("Model")), params=[_path("model_id", "string")]),
            "delete": _op(
                "Delete a model from disk (admins)",
                _responses(_obj({"id": STR, "deleted": BOOL, "freed_bytes": INT}, ["id", "deleted"])),
                params=[_path("model_id", "string"), *_query("force")],
            ),
        },
        "/mlx/api/downloads": {
            "get": _op("Your downloads (everyone's for admins)", _responses(_list_of("downloads", "Download"))),
            "post": _op(
                "Start a download from the Hub",
                _responses(_ref("Download"), "202"),
                _obj({"repo_id": STR, "revision": STR}, ["repo_id"]),
            ),
        },
        "/mlx/api/downloads/{download_id}": {
            "get": _op("One download", _responses(_ref("Download")), params=[_path("download_id")]),
            "delete": _op("Cancel a download", _responses(_ref("Download")), params=[_path("download_id")]),
        },
        "/mlx/api/downloads/{download_id}/progress": {
            "get": _op(
                "Server-sent progress events (?token=<ticket> for EventSource)",
                _responses(None, stream="text/event-stream"),
                params=[_path("download_id")],
            )
        },
        "/mlx/api/usage": {
            "get": _op(
                "Requests and tokens per day, user, model or notebook (yours; everyone's for admins)",
                _responses(_obj({"group_by": STR, "rows": {"type": "array", "items": _ref("UsageRow")}}, ["rows"])),
                params=[*AUDIT_FILTERS, *_query("notebook", "group_by"), *_query("limit", kind="integer")],
            )
        },
        "/mlx/api/profiles": {
            "get": _op(
                "Model profiles and aliases",
                _responses(
                    _obj(
                        {"profiles": {"type": "array", "items": {"type": "object"}}, "aliases": {"type": "object"}},
                        ["profiles"],
                    )
                ),
            )
        },
        "/mlx/api/profiles/{name}": {
            "get": _op("One profile", _responses({"type": "object"}), params=[_path("name", "string")]),
            "put": _op(
                "Create or replace a profile (admins)",
                _responses({"type": "object"}),
                _obj(
                    {
                        "model": STR,
                        "models": {"type": "array", "items": STR},
                        "system": STR,
                        "temperature": NUM,
                        "top_p": NUM,
                        "top_k": INT,
                        "min_p": NUM,
                        "max_tokens": INT,
                        "keep_alive": NUM,
                        "chat_template_kwargs": {"type": "object"},
                    }
                ),
                params=[_path("name", "string")],
            ),
            "delete": _op(
                "Delete a stored profile (admins)", _responses({"type": "object"}), params=[_path("name", "string")]
            ),
        },
        "/mlx/api/budgets": {
            "get": _op(
                "Your token budgets and what is left (admins: everyone's, and the table)",
                _responses(_ref("BudgetStatus")),
            ),
            "put": _op(
                "Set budgets (admins); null removes an entry",
                _responses(_obj({"budgets": _ref("Budgets")}, ["budgets"])),
                _ref("Budgets"),
            ),
        },
        "/mlx/api/jobs": {
            "get": _op(
                "Your jobs (everyone's for admins)",
                _responses(_list_of("jobs", "Job")),
                params=_query("limit", kind="integer"),
            ),
            "post": _op(
                "Start a fine-tune, evaluation or conversion", _responses(_ref("Job"), "202"), _ref("JobRequest")
            ),
        },
        "/mlx/api/jobs/{job_id}": {
            "get": _op("One job", _responses(_ref("Job")), params=[_path("job_id", "string")]),
            "delete": _op("Cancel a job", _responses(_ref("Job")), params=[_path("job_id", "string")]),
        },
        "/mlx/api/jobs/{job_id}/events": {
            "get": _op(
                "Server-sent job events (?token=<ticket> for EventSource); the last has final: true",
                _responses(None, stream="text/event-stream"),
                params=[_path("job_id", "string")],
            )
        },
        "/mlx/v1/files": {
            "get": _op(
                "OpenAI: your files",
                _responses(
                    _obj({"object": STR, "data": {"type": "array", "items": _ref("File")}}, ["data"]),
                    error="OpenAIError",
                ),
                params=_query("purpose"),
            ),
            "post": {
                "summary": "OpenAI: upload a file (purpose batch: JSONL requests, checked whole; or fine-tune)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _obj(
                                {
                                    "file": {"type": "string", "format": "binary"},
                                    "purpose": {"enum": ["batch", "fine-tune"]},
                                },
                                ["file", "purpose"],
                            )
                        }
                    },
                },
                "responses": _responses(_ref("File"), error="OpenAIError"),
            },
        },
        "/mlx/v1/files/{file_id}": {
            "get": _op(
                "OpenAI: one of your files",
                _responses(_ref("File"), error="OpenAIError"),
                params=[_path("file_id", "string")],
            ),
            "delete": _op(
                "OpenAI: delete one of your files",
                _responses(_obj({"id": STR, "object": STR, "deleted": BOOL}, ["id", "deleted"]), error="OpenAIError"),
                params=[_path("file_id", "string")],
            ),
        },
        "/mlx/v1/files/{file_id}/content": {
            "get": _op(
                "OpenAI: a file's bytes",
                _responses(None, error="OpenAIError", stream="application/jsonl"),
                params=[_path("file_id", "string")],
            )
        },
        "/mlx/v1/batches": {
            "get": _op(
                "OpenAI: your batches, newest first",
                _responses(
                    _obj(
                        {"object": STR, "data": {"type": "array", "items": _ref("Batch")}, "has_more": BOOL}, ["data"]
                    ),
                    error="OpenAIError",
                ),
                params=[*_query("after"), *_query("limit", kind="integer")],
            ),
            "post": _op(
                "OpenAI: run a batch in the background at low priority",
                _responses(_ref("Batch"), error="OpenAIError"),
                _obj(
                    {
                        "input_file_id": STR,
                        "endpoint": {
                            "enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
                        },
                        "completion_window": {"const": "24h"},
                        "metadata": {"type": "object", "additionalProperties": STR},
                    },
                    ["input_file_id", "endpoint", "completion_window"],
                ),
            ),
        },
        "/mlx/v1/batches/{batch_id}": {
            "get": _op(
                "OpenAI: one of your batches",
                _responses(_ref("Batch"), error="OpenAIError"),
                params=[_path("batch_id", "string")],
            )
        },
        "/mlx/v1/batches/{batch_id}/cancel": {
            "post": _op(
                "OpenAI: cancel a batch (what finished is kept)",
                _responses(_ref("Batch"), error="OpenAIError"),
                params=[_path("batch_id", "string")],
            )
        },
        "/mlx": {
            "head": _op(
                "The base URL answers 200 (clients probe it before use)", {"200": {"description": "here"}}, public=True
            )
        },
        "/mlx/v1": {"head": _op("The API's base URL answers 200", {"200": {"description": "here"}}, public=True)},
        "/mlx/v1/responses/input_tokens": {
            "post": _op(
                "OpenAI Responses: the prompt tokens a body would use, without generating",
                _responses(_obj({"object": STR, "input_tokens": INT}, ["input_tokens"]), error="OpenAIError"),
                _ref("ResponsesRequest"),
            )
        },
        "/mlx/v1/models": {
            "get": _op(
                "OpenAI: models",
                _responses(
                    _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}, ["data"]),
                    error="OpenAIError",
                ),
            )
        },
        "/mlx/v1/chat/completions": {
            "post": _op(
                "OpenAI: chat completions (stream: server-sent events)",
                _responses(_ref("ChatCompletion"), error="OpenAIError", stream="text/event-stream"),
                _ref("ChatCompletionRequest"),
            )
        },
        "/mlx/v1/embeddings": {
            "post": _op(
                "OpenAI: embeddings (embedding models; base64 is little-endian float32)",
                _responses(
                    _obj(
                        {
                            "object": {"const": "list"},
                            "data": {
                                "type": "array",
                                "items": _obj(
                                    {
                                        "object": STR,
                                        "index": INT,
                                        "embedding": {"oneOf": [{"type": "array", "items": NUM}, STR]},
                                    },
                                    ["index", "embedding"],
                                ),
                            },
                            "model": STR,
                            "usage": _obj({"prompt_tokens": INT, "total_tokens": INT}, ["prompt_tokens"]),
                        },
                        ["data", "usage"],
                    ),
                    error="OpenAIError",
                ),
                _ref("EmbeddingsRequest"),
            )
        },
        "/mlx/v1/audio/transcriptions": {
            "post": {
                **_op(
                    "OpenAI: speech to text (transcription models; WAV, FLAC, MP3 or Ogg Vorbis)",
                    _responses(
                        _obj(
                            {
                                "text": STR,
                                "task": STR,
                                "language": _nullable("string"),
                                "duration": NUM,
                                "segments": {"type": "array", "items": {"type": "object"}},
                            },
                            ["text"],
                        ),
                        error="OpenAIError",
                        stream="text/plain",  # response_format=text
                    ),
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _obj(
                                {
                                    "file": {"type": "string", "contentMediaType": "application/octet-stream"},
                                    "model": STR,
                                    "language": STR,
                                    "temperature": NUM,
                                    "response_format": {"enum": ["json", "text", "verbose_json"]},
                                },
                                ["file", "model"],
                            )
                        }
                    },
                },
            }
        },
        "/mlx/v1/audio/speech": {
            "post": _op(
                "OpenAI: text to speech (speech models) → a 16-bit PCM WAV",
                _responses(None, error="OpenAIError", stream="audio/wav"),
                _ref("SpeechBody"),
            )
        },
        "/mlx/v1/messages": {
            "post": _op(
                "Anthropic Messages (stream: server-sent events; x-api-key or Bearer)",
                _responses(_ref("AnthropicMessage"), error="AnthropicError", stream="text/event-stream"),
                _ref("MessagesRequest"),
            )
        },
        "/mlx/v1/messages/count_tokens": {
            "post": _op(
                "Anthropic Messages: prompt tokens of a request",
                _responses(_obj({"input_tokens": INT}, ["input_tokens"]), error="AnthropicError"),
                _ref("CountTokensRequest"),
            )
        },
        "/mlx/v1/responses": {
            "post": _op(
                "OpenAI Responses (stream: server-sent events); stored per user unless store is false",
                _responses(_ref("Response"), error="OpenAIError", stream="text/event-stream"),
                _ref("ResponsesRequest"),
            )
        },
        "/mlx/v1/responses/{response_id}": {
            "get": _op(
                "One of your stored responses",
                _responses(_ref("Response"), error="OpenAIError"),
                params=[_path("response_id", "string")],
            ),
            "delete": _op(
                "Delete one of your stored responses",
                _responses(_obj({"id": STR, "object": STR, "deleted": BOOL}, ["id", "deleted"]), error="OpenAIError"),
                params=[_path("response_id", "string")],
            ),
        },
        "/mlx/v1/completions": {
            "post": _op(
                "OpenAI: completions (stream: server-sent events)",
                _responses(_ref("ChatCompletion"), error="OpenAIError", stream="text/event-stream"),
                _ref("CompletionRequest"),
            )
        },
    }


def document(base_url: str = "/") -> dict[str, Any]:
    """The description, with the server's base URL as its one server."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "jupyter-mlx-manager", "version": __version__},
        "servers": [{"url": base_url.rstrip("/") or "/"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API token or access token of ours"},
                "jupyter": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "token <jupyter token>",
                },
            },
        },
        "security": [{"bearer": []}, {"jupyter": []}],
        "paths": _paths(),
    }


if __name__ == "__main__":  # `python -m jupyter_mlx_manager.openapi [PATH]`: the document (labextension's types)
    import json
    import sys

    text = json.dumps(document(), indent=2, sort_keys=True) + "\n"
    if len(sys.argv) > 1:
        from pathlib import Path

        Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
