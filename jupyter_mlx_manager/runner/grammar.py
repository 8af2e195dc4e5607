"""Structured output by constrained decoding: llguidance grammars as per-request token masks.

`Grammars` (one per runner) builds llguidance's tokenizer from the model's Hugging Face
tokenizer once (lazily: ~10 ms for the demo models, up to ~1 s for a 150k vocabulary) and
compiles a request's `response_format` into an `LLMatcher`. `GrammarProcessor` is an mlx-lm
logits processor (`processor(tokens, logits) -> logits`) that sets every token the grammar
does not allow to -inf; it rides in the request's `processors` list, so it follows the
request onto the direct path (`generate_step`) and into `BatchGenerator` rows alike.

Why llguidance (measured on this machine, the demo model's 512-token vocabulary, a 5-field
bounded schema): compile 1.5 ms (outlines-core: 12 ms; `{"type": "object"}` 1.1 ms vs 15 s,
because outlines-core unrolls a regex where llguidance keeps a grammar), mask + advance 20-160
µs per token, it names unsupported schema keywords instead of ignoring them, and it has no
Python dependencies. JSON is compiled with fixed separators (", " and ": ") and no free
whitespace: a random-weight model cannot emit whitespace without end.

The processor is stateful and the scheduler pipelines (each path samples token n+1 before
token n reaches the request's handler), so it keeps its own record: at the call that samples
token k it first consumes token k-1, which both paths pass as the last entry of `tokens`.
`rewind(generated)` re-synchronises it when a request switches paths (the lookahead sample is
discarded then and the last token fed again); it never consumes a token twice.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

# Compact JSON, no whitespace between tokens; unknown schema keywords are errors, not ignored.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False}
GRAMMAR_CACHE_SIZE = 64
REGEX_META = set("\\.+*?()|[]{}^$#&-~/")  # escaped in a lark regex (Rust syntax; `\<` would be a word boundary)


class UnsupportedSchema(Exception):
    """The response_format cannot be compiled or enforced; the message says which feature."""


def schema_of(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema to enforce for a `response_format` (None: unconstrained).

    Accepts `{"type": "json_object"}`, `{"type": "json_schema", "schema": {...}}` (the
    OpenAI chat form `{"json_schema": {"schema": ...}}` too) and `{"type": "text"}`. ValueError
    for an ill-typed value, UnsupportedSchema for a type or schema that cannot be enforced."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = response_format.get("schema")
        if schema is None and isinstance(response_format.get("json_schema"), dict):
            schema = response_format["json_schema"].get("schema")
        if schema is None:
            return {"type": "object"}
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, dict):
            raise ValueError("response_format.schema must be a JSON schema object")
        return schema
    raise UnsupportedSchema(f"response_format type {kind!r} is not supported (json_object, json_schema or text)")


class Grammars:
    """The runner's llguidance tokenizer and a small cache of compiled grammars."""

    def __init__(
        self,
        hf_tokenizer: Any,
        model_path: Path | None,
        eos_ids: set[int],
        vocab_size: int | None,
        think_ids: tuple[int, int] | None = None,
    ):
        self.hf_tokenizer = hf_tokenizer
        self.model_path = model_path
        self.eos_ids = sorted(eos_ids)
        self.vocab_size = vocab_size
        self.think_ids = think_ids
        self._tokenizer: Any = None
        self._grammars: OrderedDict[str, str] = OrderedDict()
        self.compile_seconds = 0.0

    def tokenizer(self) -> Any:
        """llguidance's tokenizer, from the model's tokenizer.json (via the HF fast tokenizer's
        Rust backend when there is one, which includes tokens added in tokenizer_config.json)."""
        if self._tokenizer is None:
            import llguidance

            spec = None
            backend = getattr(self.hf_tokenizer, "backend_tokenizer", None)
            if backend is not None:
                try:
                    from copy import copy

                    backend = copy(backend)
                    backend.no_padding()
                    backend.no_truncation()
                    spec = backend.to_str()
                except Exception:
                    spec = None
            if spec is None and self.model_path is not None and (self.model_path / "tokenizer.json").is_file():
                spec = (self.model_path / "tokenizer.json").read_text()
            if spec is None:
                raise UnsupportedSchema(
                    "structured output needs a tokenizer.json (fast tokenizer); this model has none"
                )
            try:
                natural = llguidance.LLTokenizer(spec, eos_token=self.eos_ids or None).vocab_size
                n_vocab = max(natural, self.vocab_size or 0)
                self._tokenizer = llguidance.LLTokenizer(spec, n_vocab=n_vocab, eos_token=self.eos_ids or None)
            except Exception as exc:
                raise UnsupportedSchema(
                    f"this model's tokenizer is not supported for structured output: {exc}"
                ) from None
        return self._tokenizer

    def grammar(self, schema: dict[str, Any], thinking: str | None = None) -> str:
        """llguidance grammar text for `schema`; `thinking` (None, "optional" or "open") lets a
        thinking model reason first: an optional think block, or the rest of one the prompt opened."""
        import llguidance

        try:
            schema_text = json.dumps({**schema, "x-guidance": JSON_OPTIONS}, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise UnsupportedSchema(f"the schema is not JSON: {exc}") from None
        cached = self._grammars.get(f"{thinking}:{schema_text}")
        if cached is not None:
            self._grammars.move_to_end(f"{thinking}:{schema_text}")
            return cached
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
        except ValueError as exc:
            raise UnsupportedSchema(f"this JSON schema cannot be enforced: {exc}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer())
        if is_error:  # the schema alone: the message names the feature (e.g. 'Unimplemented keys: ["not"]')
            raise UnsupportedSchema(f"this JSON schema cannot be enforced: {'; '.join(messages)[:500]}")
        prefix, rules = self._think(thinking)
        if prefix:
            grammar = self._lark(f"start: {prefix}answer\nanswer: %json {schema_text}\n{rules}")
        self._remember(f"{thinking}:{schema_text}", grammar)
        return grammar

    def tool_grammar(
        self,
        calls: list[tuple[str, dict[str, Any]]],
        markers: tuple[str, str, str],
        forced: bool,
        answer: dict[str, Any] | None = None,
        thinking: str | None = None,
    ) -> str:
        """llguidance grammar for a tool call in the `json_tools` format: `markers` (the start
        and end markers in lark, tokens `<[id]>` or strings, and the start marker's text) around
        `{"name": …, "arguments": …}`, the arguments of each of `calls` (name, schema) held to
        its schema. `forced`: the answer is one call; else the JSON of `answer` (a schema) or
        free text, then maybe a call. Free text cannot spell the start marker out: a call that
        the text filter would see must go through the grammar."""
        variants = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": schema},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, schema in calls
        ]
        call_schema = variants[0] if len(variants) == 1 else {"anyOf": variants}
        try:
            call_text = json.dumps({**call_schema, "x-guidance": JSON_OPTIONS}, separators=(",", ":"))
            answer_text = None
            if answer is not None:
                answer_text = json.dumps({**answer, "x-guidance": JSON_OPTIONS}, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise UnsupportedSchema(f"the tool's parameters are not a JSON schema: {exc}") from None
        key = json.dumps([call_text, markers, forced, answer_text, thinking])
        cached = self._grammars.get(key)
        if cached is not None:
            self._grammars.move_to_end(key)
            return cached
        start, end, start_text = markers
        lark = f'call: {start} "\\n" payload "\\n" {end}\npayload: %json {call_text}\n'
        if forced:
            body = "call"
        elif answer_text is not None:
            body, lark = "answer | call", lark + f"answer: %json {answer_text}\n"
        else:
            spelled = "".join(f"\\{c}" if c in REGEX_META else c for c in start_text).replace("\n", "\\n")
            body, lark = "TEXT call?", lark + f"TEXT: /(.|\\n)*/ & ~/(.|\\n)*{spelled}(.|\\n)*/\n"
        prefix, rules = self._think(thinking)
        grammar = self._lark(f"start: {prefix}body\nbody: {body}\n{lark}{rules}")
        self._remember(key, grammar)
        return grammar

    def _think(self, thinking: str | None) -> tuple[str, str]:
        """(the lark before the answer, the rules it uses) that let a thinking model reason
        first: the rest of a think block the prompt opened ("open"), or an optional one."""
        if not thinking or not self.think_ids:
            return "", ""
        start, end = self.think_ids
        block = f"THINK <[{end}]>" if thinking == "open" else f"(<[{start}]> THINK <[{end}]>)?"
        return f"{block} GAP ", "THINK: /(.|\\n)*/\nGAP: /[ \\n]{0,2}/\n"

    def _lark(self, lark: str) -> str:
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        except ValueError as exc:
            raise UnsupportedSchema(f"this JSON schema cannot be enforced: {exc}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer())
        if is_error:
            raise UnsupportedSchema(f"this JSON schema cannot be enforced: {'; '.join(messages)[:500]}")
        return grammar

    def _remember(self, key: str, grammar: str) -> None:
        self._grammars[key] = grammar
        if len(self._grammars) > GRAMMAR_CACHE_SIZE:
            self._grammars.popitem(last=False)

    def processor(self, mx: Any, schema: dict[str, Any], thinking: str | None = None) -> GrammarProcessor:
        return self._processor(mx, lambda: self.grammar(schema, thinking))

    def tool_processor(
        self,
        mx: Any,
        calls: list[tuple[str, dict[str, Any]]],
        markers: tuple[str, str, str],
        forced: bool,
        answer: dict[str, Any] | None = None,
        thinking: str | None = None,
    ) -> GrammarProcessor:
        return self._processor(mx, lambda: self.tool_grammar(calls, markers, forced, answer, thinking))

    def _processor(self, mx: Any, compile_grammar: Any) -> GrammarProcessor:
        import time

        import llguidance

        began = time.perf_counter()
        grammar = compile_grammar()
        matcher = llguidance.LLMatcher(self.tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise UnsupportedSchema(f"this JSON schema cannot be enforced: {matcher.get_error()[:500]}")
        self.compile_seconds = time.perf_counter() - began
        return GrammarProcessor(mx, matcher, self.tokenizer().vocab_size, self.eos_ids)


class GrammarProcessor:
    """A logits processor that masks everything the request's grammar does not allow next."""

    def __init__(self, mx: Any, matcher: Any, n_vocab: int, eos_ids: list[int]):
        import numpy as np

        self.mx = mx
        self.np = np
        self.matcher = matcher
        self.n_vocab = n_vocab
        self.eos_ids = eos_ids
        self.words = np.zeros(((n_vocab + 31) // 32,), dtype=np.int32)
        self.neg_inf: dict[Any, Any] = {}
        self.consumed: list[int] = []  # the generated tokens the matcher has advanced over
        self.calls = 0  # index of the token the next call samples
        self.error: str | None = None
        self._eos_only: dict[int, Any] = {}

    def __call__(self, tokens: Any, logits: Any) -> Any:
        mx = self.mx
        index, self.calls = self.calls, self.calls + 1
        width = logits.shape[-1]
        try:
            if len(self.consumed) < index:  # the token sampled last is the last one fed
                self._consume(int(tokens[-1].item()))
            if self.error is not None or len(self.consumed) != index or self.matcher.is_stopped():
                mask = self._eos_mask(width)
            else:
                mask = self._mask(width)
        except Exception as exc:  # never take the batch down: end this request instead
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            mask = self._eos_mask(width)
        neg_inf = self.neg_inf.get(logits.dtype)
        if neg_inf is None:
            neg_inf = self.neg_inf[logits.dtype] = mx.array(-float("inf"), dtype=logits.dtype)
        return mx.where(mask, logits, neg_inf)

    def rewind(self, generated: list[int]) -> None:
        """Re-synchronise with the request's tokens after a switch between paths: the next
        call samples token `len(generated)`."""
        common = 0
        for mine, theirs in zip(self.consumed, generated):
            if mine != theirs:
                break
            common += 1
        if len(self.consumed) > common:
            if not self.matcher.rollback(len(self.consumed) - common):
                self.error = self.error or "grammar rollback failed"
            del self.consumed[common:]
        for token in generated[common:]:
            self._consume(token)
        self.calls = len(generated)

    @property
    def done(self) -> bool:
        """The grammar is complete: only EOS may follow."""
        return self.matcher.is_stopped()

    def _consume(self, token: int) -> None:
        self.consumed.append(token)
        if self.error is None and not self.matcher.consume_token(token):
            self.error = self.matcher.get_error() or f"token {token} rejected by the grammar"

    def _mask(self, width: int) -> Any:
        """The allowed tokens as a bool row of `width` (unpacked in numpy: one MLX op, not six)."""
        np = self.np
        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        if self.matcher.is_error():
            self.error = self.matcher.get_error()
            return self._eos_mask(width)
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little").view(bool)
        if bits.shape[0] < width:
            bits = np.concatenate([bits, np.zeros((width - bits.shape[0],), dtype=bool)])
        return self.mx.array(bits[:width])

    def _eos_mask(self, width: int) -> Any:
        mask = self._eos_only.get(width)
        if mask is None:
            row = self.np.zeros((width,), dtype=bool)
            row[[t for t in self.eos_ids if t < width]] = True
            mask = self._eos_only[width] = self.mx.array(row)
        return mask
