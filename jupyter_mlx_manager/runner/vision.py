"""The vision runner's one MLX thread (`python -m jupyter_mlx_manager.runner PATH --kind vision`).

It loads the model with mlx-vlm (its own model classes, the model's chat template and image
processor through transformers' `AutoProcessor`, never code shipped with the model: a model
that names any is refused first, as for text models) and answers the text engine's `generate`
commands for chat (`kind: "chat"`) with the same events: `started`, `text`, `done` or one
`error`. Requests run **one at a time**, in arrival order, on mlx-vlm's `stream_generate`:
mlx-vlm's batch generation is model-specific, and the pool's limits already queue the rest.
A cancel stops a request between tokens.

Images: a message part `{"type": "image", "data": <base64>}` (checked and size-bounded by the
server) is decoded here with PIL and handed to the model's image processor; the chat template
sees `{"type": "image"}` in its place. Sampling: `max_tokens`, `temperature`, `top_p`, `seed`,
`logit_bias` (ids checked against the vocabulary) and `stop` strings; tools, structured output
and logprobs are refused (`invalid_field`), never silently ignored.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from typing import Any

from .engine import vocab_size_of
from .protocol import GenerateCommand
from .serial import Invalid, SerialEngine

UNSUPPORTED = ("tools", "response_format", "logprobs", "tool_choice", "strict_tools")


class VisionEngine(SerialEngine):
    def load(self, config: dict[str, Any]) -> dict[str, Any]:
        from mlx_vlm import load, stream_generate

        from ..models.inspection import context_length, read_json

        self.stream_generate = stream_generate
        self.model, self.processor = load(str(self.model_path))
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.vocab_size = vocab_size_of(self.model) or int(config.get("vocab_size") or 0) or None
        self.context_length = context_length(config, read_json(self.model_path / "tokenizer_config.json"))
        eos = config.get("eos_token_id")
        self.eos = sorted({eos} if isinstance(eos, int) else set(eos or []))
        return {"context_length": self.context_length, "vocab_size": self.vocab_size, "eos_token_ids": self.eos}

    def handlers(self) -> dict[str, Callable[[GenerateCommand], None]]:
        return {"generate": self._generate}

    def _generate(self, command: GenerateCommand) -> None:
        rid = command.id
        started = time.perf_counter()
        try:
            prompt, images, options, stops = self._prepare(command)
        except Invalid as exc:
            self.error(rid, str(exc), "invalid_request_error", exc.code, exc.param)
            return
        text, sent, completion, first, reason, matched = "", 0, 0, None, "length", None
        prompt_tokens = 0
        try:
            for result in self.stream_generate(self.model, self.processor, prompt, image=images or None, **options):
                self.progress += 1
                if first is None:
                    first, prompt_tokens = time.perf_counter(), result.prompt_tokens
                    self.emit({"ev": "started", "id": rid, "prompt_tokens": prompt_tokens, "cached_tokens": 0})
                completion = result.generation_tokens
                text += result.text
                hit = min(((text.find(s), s) for s in stops if s in text), default=None)
                if hit is not None:
                    text, reason, matched = text[: hit[0]], "stop", hit[1]
                # Hold back what could still become a stop string.
                safe = len(text) if hit is not None else max(sent, len(text) - max(map(len, stops), default=1) + 1)
                if safe > sent:
                    self.emit({"ev": "text", "id": rid, "text": text[sent:safe], "completion_tokens": completion})
                    sent = safe
                if hit is not None:
                    break
                if result.token in self.eos:
                    reason = "stop"
                if rid in self.cancelled:
                    reason = "cancelled"
                    break
            if reason not in ("cancelled", "stop") and completion < options["max_tokens"]:
                reason = "stop"
            if reason != "cancelled" and len(text) > sent:
                self.emit({"ev": "text", "id": rid, "text": text[sent:], "completion_tokens": completion})
        except Exception as exc:  # an MLX or processor failure: this request fails, the runner serves on
            self.error(rid, f"{type(exc).__name__}: {exc}", "server_error", None)
            return
        done = {
            "ev": "done", "id": rid, "finish_reason": reason, "prompt_tokens": prompt_tokens, "cached_tokens": 0,
            "completion_tokens": completion, "ttft_ms": None if first is None else (first - started) * 1000,
        }  # fmt: skip
        if matched:
            done["stop_sequence"] = matched
        self.emit(done)

    def _prepare(self, command: GenerateCommand) -> tuple[str, list[Any], dict[str, Any], list[str]]:
        """(prompt text, PIL images, stream_generate options, stop strings), all checked."""
        if command.kind != "chat" or command.messages is None:
            raise Invalid("a vision model answers chat requests (messages) only", "invalid_messages", "messages")
        for name in UNSUPPORTED:
            if getattr(command, name) not in (None, [], {"type": "text"}):
                raise Invalid(f"{name} is not supported by vision models yet", "invalid_field", name)
        from PIL import Image

        images, messages = [], []
        for message in command.messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if isinstance(part, dict) and part.get("type") == "image":
                        try:
                            image = Image.open(io.BytesIO(base64.b64decode(part.get("data") or "", validate=True)))
                            images.append(image.convert("RGB"))
                        except Exception:
                            raise Invalid("an image could not be decoded", "invalid_image", "messages") from None
                        parts.append({"type": "image"})
                    elif isinstance(part, dict) and part.get("type") == "text":
                        parts.append({"type": "text", "text": str(part.get("text") or "")})
                content = parts
            elif not isinstance(content, str):
                raise Invalid("message content must be text or a list of parts", "invalid_messages", "messages")
            messages.append({"role": str(message.get("role")), "content": content})
        try:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:
            raise Invalid(f"the chat template refused the messages: {exc}", "invalid_messages", "messages") from None
        if len(self.tokenizer.encode(prompt, add_special_tokens=False)) >= self.context_length:
            raise Invalid("the prompt is longer than the model's context", "context_length_exceeded", "messages")
        bias = {}
        for key, value in (command.logit_bias or {}).items():
            token = int(key) if key.lstrip("-").isdigit() else -1
            if not 0 <= token < (self.vocab_size or 0):
                raise Invalid(
                    f"logit_bias token id {key} is outside the vocabulary", "invalid_logit_bias", "logit_bias"
                )
            bias[token] = value
        if command.seed is not None:
            self.mx.random.seed(command.seed & 0xFFFFFFFF)
        options = {
            "max_tokens": command.max_tokens,
            "temperature": command.temperature,
            "top_p": command.top_p,
            **({"logit_bias": bias} if bias else {}),
            "skip_special_tokens": True,  # <|im_start|>, <|endoftext|>…: never reply text
        }
        return prompt, images, options, [s for s in command.stops if s]
