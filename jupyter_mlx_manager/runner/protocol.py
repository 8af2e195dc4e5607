"""Messages between the pool (server) and a runner, one JSON object per line.

Server → runner (stdin):
  {"op": "generate", "id": str, "kind": "chat"|"completion", "messages"|"prompt": …,
   "tools": [...]|null, "max_tokens": int, "temperature": float, "top_p": float,
   "seed": int|null, "logit_bias": {token_id: bias}, "stop": [str]}
  {"op": "cancel", "id": str}
  {"op": "shutdown"}

Runner → server (stdout):
  {"ev": "ready", "context_length": int, "tool_calling": bool, "eos_token_ids": [int]}
  {"ev": "failed", "error": str}                       load failed; the runner exits
  {"ev": "started", "id", "prompt_tokens": int, "cached_tokens": int}
  {"ev": "text", "id", "text": str, "completion_tokens": int}
  {"ev": "tool_call", "id", "call": {"name": str, "arguments": str}}
  {"ev": "done", "id", "finish_reason": "stop"|"length"|"tool_calls"|"cancelled",
   "prompt_tokens", "cached_tokens", "completion_tokens", "ttft_ms": float}
  {"ev": "error", "id", "message": str, "type": "invalid_request_error"|"server_error",
   "code": str|null}
  {"ev": "heartbeat", "rss_bytes": int, "mlx_active_bytes": int, "mlx_peak_bytes": int,
   "engine": {"direct_steps", "batch_steps", "migrations", "demotions", "prompt_cache_bytes"}}

Text events are written as the tokens come; all the events of one batched decode step go
out in one write.
"""

from __future__ import annotations

import json
from typing import Any

HEARTBEAT_SECONDS = 0.5


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    return json.loads(line)
