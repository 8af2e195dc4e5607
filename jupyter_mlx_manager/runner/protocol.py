"""Messages between the pool (server) and a runner, one JSON object per line.

Server → runner (the runner's stdin):
  {"op": "generate", "id": str, "kind": "chat"|"completion", "messages"|"prompt": …,
   "tools": [...]|null, "max_tokens": int, "temperature": float, "top_p": float,
   "seed": int|null, "logit_bias": {token_id: bias}, "stop": [str],
   "response_format"?: null | {"type": "text"} | {"type": "json_object"}
                       | {"type": "json_schema", "schema": {...}},
   "reasoning"?: true|false|null, "logprobs"?: int (0-20), "tool_choice"?: "auto"|"required",
   "strict_tools"?: [tool name], "echo"?: bool, "cache_scope"?: str}
      `cache_scope` (default ""): the prompt-cache scope; a cached prefix is reused only by
      requests of the same scope (the local backend sends "user:<id>" or, with
      `prompt_cache_scope` "shared", "").
      `echo` (completions only): a `prompt` event follows `started`; with `logprobs: k` the
      whole prompt is computed (a chunk per scheduler step) to give each prompt token's
      log-probability (the model's own log-softmax) and k alternatives; `max_tokens` may then be
      0 (score, generate nothing).
      `logprobs: k` adds each answer token's log-probability and its k most likely alternatives
      to the `text` events. `tool_choice: "required"` (the tools narrowed to one for a named
      choice) and `strict_tools` are a grammar in the model's tool-call format (json_tools
      only; another format ends the request with code "unsupported_tool_choice").
      `response_format` is enforced by constrained decoding (runner/grammar.py, llguidance):
      every sampled token is masked to the JSON grammar (compact: ", " and ": " separators, no
      other whitespace), and the request ends (`stop`) as soon as the JSON is complete. A schema
      that cannot be enforced ends the request with error code "unsupported_schema"
      (param "response_format", the message names the feature); an ill-typed value with
      "invalid_field". `reasoning` (chat on a thinking model only): false renders the prompt
      with `enable_thinking=False`, true with True, null the template's default.
      `prompt` is a string or a list of token ids. Every field is checked before anything
      reaches MLX: a missing or ill-typed field, a prompt token id (given, or produced by the
      tokenizer or chat template) or a logit_bias id outside [0, vocab_size) ends that request
      with an `error` event (type invalid_request_error). A command that is not a JSON object,
      has no string `id` or an unknown `op` is logged to stderr and skipped.
  {"op": "cancel", "id": str}                          a cancel for a finished id is dropped
  {"op": "trim_cache", "bytes": int}                   the prompt cache may hold at most `bytes`
      from now on (never more than --prompt-cache-bytes): trimmed at once, least recently used
      entries first (`LRUPromptCache.trim_to`); answered with `trimmed`. The pool sends it to
      keep its memory budget, and to give a trimmed cache room back.
  {"op": "load", "path": str, "prompt_cache_bytes"?: int, "prefill_step_size"?: int}
      only to a spare runner (started without MODEL_PATH): load this model folder, with these
      options instead of the command line's; then it is a runner like any other (`ready` or
      `failed`). Anything else a spare receives before it is logged and skipped.
  {"op": "shutdown"}
  {"op": "embed", "id": str, "inputs": [str | [int]], "dimensions"?: int|null}
      only to an embedding runner (`--kind embedding`, runner/embedding.py): strings are
      tokenized there; every token id must be in [0, vocab_size) and no input longer than
      context_length (else an `error`, type invalid_request_error, param "input"); answered
      with `embeddings` events and one `done` (`prompt_tokens`, `dimensions`).

Runner → server (the runner's stdout, on a private duplicate of fd 1; fd 1 itself points at
stderr, so library output cannot corrupt the stream):
  {"ev": "spare", "rss_bytes": int|null}              a spare runner has imported MLX and mlx-lm
                                                       and waits for `load`
  {"ev": "ready", "rss_bytes": int|null, "context_length": int, "vocab_size": int|null,
   "tool_calling": bool, "eos_token_ids": [int]}       vocab_size: rows of the token embedding;
      rss_bytes: the process's RSS with the model loaded (the pool's memory base);
      context_length: `models.catalog.context_length` of its config (what the catalog reports)
  {"ev": "failed", "error": str}                       load failed; the runner exits
  {"ev": "started", "id", "prompt_tokens": int, "cached_tokens": int}
  {"ev": "prompt", "id", "text": str, "logprobs"?: [entries as below; the first has
   "logprob": null and no alternatives]}              an `echo` request's prompt
  {"ev": "text", "id", "text": str, "completion_tokens": int,      the answer
   "logprobs"?: [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}
  {"ev": "reasoning", "id", "text": str, "completion_tokens": int} a thinking model's reasoning
      (chat requests on a model whose vocabulary has think markers, as mlx-lm detects them: the
      text between them, markers dropped; also when the prompt itself opened the block). Stop
      strings apply to the answer only; tool calls are parsed in the answer.
  {"ev": "tool_call", "id", "call": {"name": str, "arguments": str}}
  {"ev": "done", "id", "finish_reason": "stop"|"length"|"tool_calls"|"cancelled",
   "prompt_tokens", "cached_tokens", "completion_tokens", "ttft_ms": float,
   "reasoning_tokens"?: int,                           present for chat on a thinking model
   "stop_sequence"?: str}                              the stop string that ended the output
  {"ev": "error", "id", "message": str, "type": "invalid_request_error"|"server_error",
   "code": str|null, "param"?: str}
      codes of invalid_request_error: "invalid_token_id" (prompt), "invalid_logit_bias",
      "invalid_field" (a missing or ill-typed field; `param` names it), "empty_prompt",
      "context_length_exceeded", "no_chat_template", "invalid_messages", "unsupported_schema"
      (param "response_format"). The server's own
      handle adds "runner_stalled" (type server_error) when it kills a hung runner.
  A vision runner (`--kind vision`, runner/vision.py) answers chat `generate` commands with the
  events below; a user message's content may then be a list of {"type": "text", "text"} and
  {"type": "image", "data": <base64, checked by the server>} parts.
  {"ev": "embeddings", "id", "index": [int], "data": [str]}   an embedding runner's vectors for
      these inputs (one batch): base64 of little-endian float32, pooled and normalised. Its
      `ready` adds "kind": "embedding", "dimensions": int, "matryoshka": bool.
  {"ev": "trimmed", "prompt_cache_bytes": int, "limit_bytes": int}   the answer to trim_cache
  {"ev": "heartbeat", "rss_bytes": int, "progress": int, "busy": bool,
   "mlx_active_bytes": int, "mlx_peak_bytes": int, "kv_bytes": int, "prompt_cache_bytes": int,
   "prompt_cache_limit_bytes": int,
   "engine": {"direct_steps", "batch_steps", "prefill_chunks", "migrations", "demotions",
              "pending_cancels", "prompt_cache_bytes", "speculative_accepted", "speculative_rejected",
              "speculative"?: "prompt_lookup" (a runner started with --speculative)}}
      Sent every HEARTBEAT_SECONDS from its own thread. `progress` counts the generation
      thread's scheduler steps (each prefill chunk, decode step and admitted command);
      `busy` says whether it has work. Heartbeats that stop, or a `progress` that does not
      move while busy, mean a hung runner. `kv_bytes`: the running requests' KV caches (the
      direct request's cache plus the batch's), `prompt_cache_bytes`: the prompt cache, both
      from the arrays' `nbytes` (what the pool's memory budget counts).

`done` and `error` are terminal: exactly one per request. Text events are written as the
tokens come; all the events of one scheduler step go out in one write.
"""

from __future__ import annotations

import json
from typing import Any

HEARTBEAT_SECONDS = 0.5


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> Any:
    """The JSON value of one line (not necessarily an object: callers check)."""
    return json.loads(line)
