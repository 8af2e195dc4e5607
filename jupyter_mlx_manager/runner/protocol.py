"""Messages between the pool (server) and a runner, one JSON object per line.

Server → runner (the runner's stdin):
  {"op": "generate", "id": str, "kind": "chat"|"completion", "messages"|"prompt": …,
   "tools": [...]|null, "max_tokens": int, "temperature": float, "top_p": float,
   "seed": int|null, "logit_bias": {token_id: bias}, "stop": [str]}
      `prompt` is a string or a list of token ids. Every field is checked before anything
      reaches MLX: a missing or ill-typed field, a prompt token id (given, or produced by the
      tokenizer or chat template) or a logit_bias id outside [0, vocab_size) ends that request
      with an `error` event (type invalid_request_error). A command that is not a JSON object,
      has no string `id` or an unknown `op` is logged to stderr and skipped.
  {"op": "cancel", "id": str}                          a cancel for a finished id is dropped
  {"op": "shutdown"}

Runner → server (the runner's stdout, on a private duplicate of fd 1; fd 1 itself points at
stderr, so library output cannot corrupt the stream):
  {"ev": "ready", "context_length": int, "vocab_size": int|null, "tool_calling": bool,
   "eos_token_ids": [int]}                             vocab_size: rows of the token embedding
  {"ev": "failed", "error": str}                       load failed; the runner exits
  {"ev": "started", "id", "prompt_tokens": int, "cached_tokens": int}
  {"ev": "text", "id", "text": str, "completion_tokens": int}
  {"ev": "tool_call", "id", "call": {"name": str, "arguments": str}}
  {"ev": "done", "id", "finish_reason": "stop"|"length"|"tool_calls"|"cancelled",
   "prompt_tokens", "cached_tokens", "completion_tokens", "ttft_ms": float}
  {"ev": "error", "id", "message": str, "type": "invalid_request_error"|"server_error",
   "code": str|null, "param"?: str}
      codes of invalid_request_error: "invalid_token_id" (prompt), "invalid_logit_bias",
      "invalid_field" (a missing or ill-typed field; `param` names it), "empty_prompt",
      "context_length_exceeded", "no_chat_template", "invalid_messages". The server's own
      handle adds "runner_stalled" (type server_error) when it kills a hung runner.
  {"ev": "heartbeat", "rss_bytes": int, "progress": int, "busy": bool,
   "mlx_active_bytes": int, "mlx_peak_bytes": int,
   "engine": {"direct_steps", "batch_steps", "prefill_chunks", "migrations", "demotions",
              "pending_cancels", "prompt_cache_bytes"}}
      Sent every HEARTBEAT_SECONDS from its own thread. `progress` counts the generation
      thread's scheduler steps (each prefill chunk, decode step and admitted command);
      `busy` says whether it has work. Heartbeats that stop, or a `progress` that does not
      move while busy, mean a hung runner.

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
