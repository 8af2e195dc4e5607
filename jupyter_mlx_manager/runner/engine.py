"""The generation thread: loads the model, then serves requests one token at a time.

Every active request owns an mlx-lm `generate_step` generator with its own KV cache; the
thread advances them round-robin, so concurrent requests all make progress and a new one
starts within one decode step. All MLX work happens on this one thread.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .text import TextFilter

Emit = Callable[[dict[str, Any]], None]


class ModelRefused(Exception):
    """The model cannot be loaded safely or at all; the message says why."""


def check_model_dir(path: Path) -> dict[str, Any]:
    """Refuse what mlx-lm would load wrongly or unsafely, with a message a user can act on."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelRefused(f"{path} has no config.json: not a model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelRefused(f"config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelRefused("config.json is not a JSON object")
    if "model_file" in config or "auto_map" in config:
        raise ModelRefused(
            "this model ships its own Python code (config.json names 'model_file' or 'auto_map'); "
            "running code from a model is not allowed (trust_remote_code stays off)"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelRefused(f"{path} has no .safetensors weights")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelRefused(f"{path} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    return config


@dataclass
class Request:
    id: str
    prompt: list[int]
    max_tokens: int
    steps: Any  # the generate_step generator
    detokenizer: Any
    filter: TextFilter
    eos: set[int]
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    tool_calls: int = 0


class Engine:
    def __init__(self, model_path: Path, emit: Emit):
        self.model_path = model_path
        self.emit = emit
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cancelled: set[str] = set()
        self.memory = {"mlx_active_bytes": 0, "mlx_peak_bytes": 0}
        self.active: list[Request] = []

    # -- life cycle (the generation thread) --------------------------------------------------
    def run(self) -> None:
        try:
            config = check_model_dir(self.model_path)
            import mlx.core as mx
            from mlx_lm import load

            self.mx = mx
            self.model, self.tokenizer = load(str(self.model_path), trust_remote_code=False)
        except Exception as exc:  # any load failure is reported, then the runner exits
            self.emit({"ev": "failed", "error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, ModelRefused) else str(exc)})
            return
        self.context_length = int(config.get("max_position_embeddings") or getattr(self.tokenizer, "model_max_length", 0) or 4096)
        self._update_memory()
        self.emit(
            {
                "ev": "ready",
                "context_length": self.context_length,
                "tool_calling": self.tokenizer.tool_parser is not None,
                "eos_token_ids": sorted(self.tokenizer.eos_token_ids),
            }
        )
        while True:
            if not self._admit(block=not self.active):
                return
            for request in list(self.active):
                self._step(request)
            self._update_memory()

    def _admit(self, block: bool) -> bool:
        """Start every queued request; False when told to shut down."""
        while True:
            try:
                command = self.inbox.get(timeout=0.5) if block else self.inbox.get_nowait()
            except queue.Empty:
                if block:
                    self._update_memory()
                    continue
                return True
            if command["op"] == "shutdown":
                return False
            self._start(command)
            block = False

    # -- one request -------------------------------------------------------------------------
    def _start(self, command: dict[str, Any]) -> None:
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        rid = command["id"]
        if rid in self.cancelled:
            self.cancelled.discard(rid)
            self.emit({"ev": "done", "id": rid, "finish_reason": "cancelled", "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0, "ttft_ms": None})
            return
        try:
            prompt = self._prompt_tokens(command)
            budget = self.context_length - len(prompt)
            if budget <= 0:
                raise _InvalidRequest(
                    f"the prompt has {len(prompt)} tokens; this model's context is {self.context_length}",
                    "context_length_exceeded",
                )
            max_tokens = min(command["max_tokens"], budget)
            vocab = self.model.args.vocab_size if hasattr(self.model, "args") else None
            bias = {int(k): float(v) for k, v in (command.get("logit_bias") or {}).items()}
            if vocab is not None and any(not 0 <= k < vocab for k in bias):
                raise _InvalidRequest(f"logit_bias token ids must be in [0, {vocab})", "invalid_logit_bias")
            if command.get("seed") is not None:
                self.mx.random.seed(int(command["seed"]))
            steps = generate_step(
                self.mx.array(prompt),
                self.model,
                max_tokens=max_tokens,
                sampler=make_sampler(temp=command["temperature"], top_p=command["top_p"] if command["top_p"] < 1 else 0.0),
                logits_processors=make_logits_processors(logit_bias=bias or None),
            )
        except _InvalidRequest as exc:
            self.emit({"ev": "error", "id": rid, "message": str(exc), "type": "invalid_request_error", "code": exc.code})
            return
        except Exception as exc:
            self.emit({"ev": "error", "id": rid, "message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": None})
            return
        tools = command.get("tools")
        parser = self.tokenizer.tool_parser if tools else None
        text_filter = TextFilter(
            stop=command.get("stop"),
            tool_call_start=self.tokenizer.tool_call_start,
            tool_call_end=self.tokenizer.tool_call_end,
            parse_tool_call=(lambda text: parser(text, tools)) if parser else None,
        )
        request = Request(rid, prompt, max_tokens, steps, self.tokenizer.detokenizer, text_filter, set(self.tokenizer.eos_token_ids))
        self.emit({"ev": "started", "id": rid, "prompt_tokens": len(prompt), "cached_tokens": 0})
        self.active.append(request)

    def _prompt_tokens(self, command: dict[str, Any]) -> list[int]:
        if command["kind"] == "chat":
            if not self.tokenizer.has_chat_template:
                raise _InvalidRequest("this model has no chat template: use the completions endpoint", "no_chat_template")
            try:
                tokens = self.tokenizer.apply_chat_template(
                    command["messages"], tools=command.get("tools"), add_generation_prompt=True
                )
            except Exception as exc:  # the model's Jinja template rejected the messages
                raise _InvalidRequest(f"the chat template rejected these messages: {exc}", "invalid_messages") from None
            return list(tokens)
        prompt = command["prompt"]
        if isinstance(prompt, list):
            return [int(t) for t in prompt]
        return list(self.tokenizer.encode(prompt))

    def _step(self, request: Request) -> None:
        if request.id in self.cancelled:
            self.cancelled.discard(request.id)
            self._finish(request, "cancelled")
            return
        try:
            token, _ = next(request.steps)
        except StopIteration:
            self._finish(request, "length")
            return
        except Exception as exc:
            self.active.remove(request)
            self.emit({"ev": "error", "id": request.id, "message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": None})
            return
        token = int(token)
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        if token in request.eos:
            self._finish(request, "stop")
            return
        request.completion_tokens += 1
        request.detokenizer.add_token(token)
        if self._send_text(request, request.detokenizer.last_segment):
            self._finish(request, "stop")
        elif request.completion_tokens >= request.max_tokens:
            self._finish(request, "length")

    def _send_text(self, request: Request, text: str, final: bool = False) -> bool:
        """Filter and emit new text; True if a stop string ended the request."""
        out = request.filter.feed(text)
        if final and not out.stopped:
            tail = request.filter.flush()
            out.text += tail.text
        if out.text:
            self.emit({"ev": "text", "id": request.id, "text": out.text, "completion_tokens": request.completion_tokens})
        for call in out.tool_calls:
            request.tool_calls += 1
            self.emit({"ev": "tool_call", "id": request.id, "call": call})
        return out.stopped

    def _finish(self, request: Request, reason: str) -> None:
        if request in self.active:
            self.active.remove(request)
        if reason != "cancelled" and not request.filter.stopped:
            request.detokenizer.finalize()
            self._send_text(request, request.detokenizer.last_segment, final=True)
        if reason == "stop" and request.tool_calls:
            reason = "tool_calls"
        ttft = None if request.first_token_at is None else (request.first_token_at - request.started) * 1000
        self.emit(
            {
                "ev": "done",
                "id": request.id,
                "finish_reason": reason,
                "prompt_tokens": len(request.prompt),
                "cached_tokens": 0,
                "completion_tokens": request.completion_tokens,
                "ttft_ms": ttft,
            }
        )

    def _update_memory(self) -> None:
        mx = getattr(self, "mx", None)
        if mx is not None:
            self.memory = {"mlx_active_bytes": int(mx.get_active_memory()), "mlx_peak_bytes": int(mx.get_peak_memory())}


class _InvalidRequest(Exception):
    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code
