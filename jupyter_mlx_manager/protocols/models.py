"""The request bodies of every inference route, declared once (pydantic v2).

Each body is a model: its scalar fields (sampling, token counts, flags, ids) are checked here,
and a refused value becomes the same 400 the protocol always gave (`InvalidParam` naming the
field, with the wording in the field's `Says`). Structured fields (messages, content parts,
tools, tool choices, output formats) are declared with their full shape for the OpenAPI
document but marked `SkipValidation`: each protocol module reads them into the one
`InferenceRequest`, where their errors name the exact item (`messages[1].content[0]`).
Unknown fields are kept (`extra="allow"`), as the SDKs send fields this server ignores.

`mlx/api/openapi.json` takes these models' JSON schemas (openapi.py), so a field accepted here
is a field documented there (tests/test_request_schemas.py), and a body valid by the schema is
one the parsers accept (tests/test_fuzz.py): the rules checked after this model (model ids,
content by role, tool names, limits) are stated in the schemas too, as JSON-schema-only keywords
(`json_schema_extra`, `WithJsonSchema`) where a pydantic check would change a 400's wording.
What JSON Schema cannot state is said in words: tool names are unique, a named tool choice names
one of the tools, an image is a real one (a data URL of a PNG, JPEG, GIF, WebP or BMP image).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SkipValidation, ValidationError, WithJsonSchema

from ..inference.request import (
    MAX_EMBEDDING_INPUTS,
    MAX_MESSAGES,
    MAX_SPEECH_CHARS,
    MAX_STOP_CHARS,
    MAX_TOKEN_ID,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    TOOL_NAME_RE,
    InvalidParam,
)
from ..models.ids import LOCAL_PREFIX, MODEL_ID_RE, REMOTE_ID_RE
from ..pool.pool import MAX_KEEP_ALIVE_SECONDS

MAX_ID = 128  # a stored response's id
MAX_PROMPTS = 128  # prompts of one completions request (run one after another)
PROMPT_MESSAGE = f"prompt must be a non-empty string, a list of token ids, or a list of at most {MAX_PROMPTS} of either"
MODEL_ID_MESSAGE = "model must be a model id such as 'org/name' or 'local/<folder>'"
EMBEDDINGS_INPUT_MESSAGE = "input must be a string, a list of strings, a list of token ids or a list of token id lists"


def _any_case(text: str) -> str:
    """A pattern matching `text` in any case (JSON Schema patterns take no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in text)


_REMOTE = "remote/"
# models/ids.py's rule (is_valid_model_id) as one JSON Schema pattern: a remote id, or
# `org/name` with no `..` and (but in `local/` ids) no `--`.
MODEL_ID_PATTERN = (
    rf"^(?!.*\.\.)(?:{_any_case(_REMOTE)}{REMOTE_ID_RE.pattern.removeprefix(_REMOTE)}"
    rf"|(?:(?={_any_case(LOCAL_PREFIX)})|(?!.*--)){MODEL_ID_RE.pattern})$"
)
MODEL_ID = {
    "pattern": MODEL_ID_PATTERN,
    "description": "'org/name' (a Hub model), 'local/<folder name>' (see GET mlx/v1/models) or 'remote/<backend>/<id>'",
}
IMAGE_URL = "a data URL of a PNG, JPEG, GIF, WebP or BMP image (data:image/png;base64,…)"
TOOL_NAMES = "names unique (a named tool choice names one of them)"


def _when(condition: dict[str, Any], needed: dict[str, Any], unless: dict[str, Any] | None = None) -> dict[str, Any]:
    """JSON Schema's "a body with the properties `condition` (and, where present, `unless`) has
    the properties `needed` too"."""
    return {
        "if": {"properties": {**condition, **(unless or {})}, "required": list(condition)},
        "then": {"properties": needed, "required": list(needed)},
    }


class Says:
    """How a refused field is answered: `message` (`{field}` in it: the field's name), `missing`
    where an absent required field reads otherwise, and the error's `code`."""

    def __init__(self, message: str, missing: str | None = None, code: str | None = None):
        self.message, self.missing, self.code = message, missing, code


def _whole_numbers(value: Any) -> Any:
    """JSON's `2.0` as the integer 2, in a list too (JSON Schema reads them as one number, and
    so do the SDKs' servers); anything else as it came."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


WholeNumbers = BeforeValidator(_whole_numbers)


def token_ids(value: Any) -> list[int] | None:
    """`value` as a list of token ids (JSON's `2.0` read as 2, as `WholeNumbers` does), or None
    when it is not a list of integers. A prompt may hold a million ids and is read on the event
    loop: the usual all-int list is checked by C code (`map`, `set`) and returned as it is."""
    if not isinstance(value, list):
        return None
    kinds = set(map(type, value))
    if kinds <= {int}:
        return value
    if kinds <= {int, float} and all(type(t) is int or t.is_integer() for t in value):
        return [int(t) for t in value]
    return None


def _number(low: float, high: float) -> Any:
    return Annotated[
        float | None,
        Field(ge=low, le=high, allow_inf_nan=False),
        Says(f"{{field}} must be a number from {low} to {high}"),
    ]


def _integer(low: int, high: int) -> Any:
    return Annotated[
        int | None, Field(ge=low, le=high), WholeNumbers, Says(f"{{field}} must be an integer from {low} to {high}")
    ]


Flag = Annotated[bool | None, Says("{field} must be true or false")]
Seed = _integer(-(2**63), 2**63 - 1)
TopK = _integer(0, 1_000_000)
TopLogprobs = _integer(0, MAX_TOP_LOGPROBS)
LogitBias = Annotated[
    Annotated[
        dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]],
        Field(json_schema_extra={"additionalProperties": False}),  # token ids only
    ]
    | None,
    Says("{field} must map token ids to numbers from -100 to 100"),
]
# Seconds (negative: forever); checked by the pool's rules (InferenceRequest.validate).
KeepAlive = SkipValidation[
    Annotated[float, Field(le=MAX_KEEP_ALIVE_SECONDS, description="seconds (negative: forever)")] | None
]
ToolName = Annotated[str, Field(pattern=f"^{TOOL_NAME_RE.pattern}$")]
Speculative = Annotated[
    Literal["prompt_lookup"] | None,
    Field(description="speculative decoding for this request: n-gram drafts from the prompt (greedy requests)"),
    Says("{field} must be 'prompt_lookup'"),
]


def _tokens(low: int) -> Any:
    """A token count (`low`: 0 where zero means "score only")."""
    return _integer(low, MAX_TOKEN_ID)


Stop = Annotated[str, Field(min_length=1, json_schema_extra={"maxLength": MAX_STOP_CHARS})]


def _stops(limit: int) -> Any:
    return Annotated[
        Stop | Annotated[list[Stop], Field(max_length=limit)] | None,
        Says(f"{{field}} must be a non-empty string or a list of at most {limit} of them"),
    ]


def stop_list(value: str | list[str] | None) -> list[str]:
    """A stop field as the request's list (one string is one sequence)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def bias(value: dict[str, float] | None) -> dict[str, float]:
    """A logit bias with canonical token-id keys ("007" and "7" are one token)."""
    return {str(int(k)): float(v) for k, v in (value or {}).items()}


class Shape(BaseModel):
    """A declared object that may carry more fields than named."""

    model_config = ConfigDict(extra="allow")


class Body(Shape):
    """A request body: scalar fields strictly typed (no numbers as strings, no booleans as numbers)."""

    model_config = ConfigDict(extra="allow", strict=True)


B = TypeVar("B", bound=Body)


def read(model: type[B], body: Any) -> B:
    """`body` as `model`, or the 400 of the first field at fault (in the model's field order)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else None
    field = model.model_fields.get(name) if name else None
    says = next((m for m in field.metadata if isinstance(m, Says)), None) if field else None
    if name is None or says is None:
        raise InvalidParam(f"{name or 'the body'}: {error['msg']}", name) from None
    message = says.missing if error["type"] == "missing" and says.missing else says.message
    raise InvalidParam(message.replace("{field}", name), name, says.code) from None


# -- OpenAI chat completions and completions ----------------------------------------------------
class ImageURL(Shape):
    url: str = Field(min_length=1, description=IMAGE_URL)


class ChatTextPart(Shape):
    type: Literal["text"]
    text: str


class ChatImagePart(Shape):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(Shape):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ChatToolCall(Shape):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


ChatContent = str | list[ChatTextPart | ChatImagePart]


class ChatMessage(Shape):
    role: Literal["system", "developer", "user"]
    content: ChatContent


class ChatAssistantMessage(Shape):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "description": "content, or tool calls, or both",
            "anyOf": [
                {"properties": {"content": {"not": {"type": "null"}}}, "required": ["content"]},
                {"properties": {"tool_calls": {"type": "array", "minItems": 1}}, "required": ["tool_calls"]},
            ],
        },
    )

    role: Literal["assistant"]
    content: ChatContent | None = None
    tool_calls: list[ChatToolCall] | None = None


class ChatToolMessage(Shape):
    role: Literal["tool"]
    content: ChatContent
    tool_call_id: str | None = Field(None, description="the call this answers")


ChatMessages = Annotated[
    list[Annotated[ChatMessage | ChatAssistantMessage | ChatToolMessage, Field(discriminator="role")]],
    Field(min_length=1, max_length=MAX_MESSAGES),
]


class FunctionSpec(Shape):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema")
    strict: bool | None = None


class ChatTool(Shape):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Shape):
    name: str


class ChatToolChoiceFunction(Shape):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(Shape):
    name: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema", description="a JSON schema")
    strict: bool | None = None


class PlainFormat(Shape):
    """Free text (`text`) or any JSON object (`json_object`)."""

    type: Literal["text", "json_object"]


class ResponseFormat(Shape):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


class StreamOptions(Shape):
    include_usage: SkipValidation[bool | None] = None


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class OpenAISampling(Body):
    """What chat completions and completions share, in the order they are checked (the first bad one answers)."""

    n: Annotated[Literal[1], Says("only n = 1 is supported")] = 1
    stream_options: Annotated[StreamOptions | None, Says("{field} must be an object")] = None
    seed: Annotated[int | None, WholeNumbers, Says("{field} must be an integer")] = None
    max_completion_tokens: _tokens(1) = None
    max_tokens: _tokens(1) = None
    model: Annotated[str, Field(min_length=1, json_schema_extra=MODEL_ID), Says("model is required")]
    temperature: _number(0, 2) = None
    top_p: _number(0, 1) = None
    top_k: TopK = None
    min_p: _number(0, 1) = None
    presence_penalty: _number(-2, 2) = None
    frequency_penalty: _number(-2, 2) = None
    repetition_penalty: _number(0.01, 10) = None
    stop: _stops(4) = None
    logit_bias: LogitBias = None
    keep_alive: KeepAlive = None
    speculative: Speculative = None
    stream: Flag = None
    user: SkipValidation[str | None] = None


class ChatCompletionRequest(OpenAISampling):
    """`POST mlx/v1/chat/completions`."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _when({"top_logprobs": {"type": "integer"}}, {"logprobs": {"const": True}}),
                _when({"tool_choice": {"const": "required"}}, {"tools": {"type": "array", "minItems": 1}}),
            ]
        },
    )

    messages: Annotated[SkipValidation[ChatMessages], Says("messages must be a non-empty list")]
    logprobs: Flag = None
    top_logprobs: Annotated[TopLogprobs, Field(description="with logprobs: true")] = None
    tools: SkipValidation[Annotated[list[ChatTool], Field(max_length=MAX_TOOLS, description=TOOL_NAMES)] | None] = None
    tool_choice: Annotated[
        Literal["auto", "none", "required"] | ChatToolChoiceFunction | None,
        Field(description="'required' needs tools; a named function is one of the tools"),
        Says("tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}"),
    ] = None
    response_format: SkipValidation[PlainFormat | ResponseFormat | None] = None


class CompletionRequest(OpenAISampling):
    """`POST mlx/v1/completions`: `max_tokens: 0` with `echo` scores the prompt only."""

    max_completion_tokens: _tokens(0) = None
    max_tokens: _tokens(0) = None
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _when({"max_completion_tokens": {"const": 0}}, {"echo": {"const": True}}),
                _when(
                    {"max_tokens": {"const": 0}}, {"echo": {"const": True}}, {"max_completion_tokens": {"type": "null"}}
                ),
            ],
        },
    )

    prompt: Annotated[
        SkipValidation[
            Annotated[str, Field(min_length=1)]
            | TokenIds
            | Annotated[
                list[Annotated[str, Field(min_length=1)] | TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)
            ]
        ],
        Field(description="a string, token ids, or a list of either (one completion each)"),
        Says(PROMPT_MESSAGE),  # token ids are read (whole numbers too) by `token_ids`, in one pass
    ]
    echo: Flag = None
    logprobs: TopLogprobs = None


# -- Anthropic Messages --------------------------------------------------------------------------
class TextBlock(Shape):
    type: Literal["text"]
    text: str


class ImageSource(Shape):
    """`base64` with `media_type` and `data` (a PNG, JPEG, GIF, WebP or BMP image), or `url`
    (where the server allows image URLs)."""

    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(Shape):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(Shape):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class AttachmentBlock(Shape):
    """An image or document in a tool result: named in its text (tool results reach the model as text)."""

    type: Literal["image", "document"]


class ToolResultBlock(Shape):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock | AttachmentBlock] = ""
    is_error: bool | None = None


class ThinkingBlock(Shape):
    type: Literal["thinking", "redacted_thinking"]


class AnthropicInputMessage(Shape):
    role: Literal["user"]
    content: str | list[TextBlock | ImageBlock | ToolResultBlock]


class AnthropicAssistantMessage(Shape):
    role: Literal["assistant"]
    content: str | list[TextBlock | ImageBlock | ToolUseBlock | ThinkingBlock]


class AnthropicSystemMessage(Shape):
    """System text at this place of the conversation (as Claude Code sends its notes)."""

    role: Literal["system"]
    content: str | list[TextBlock]


class AnthropicTool(Shape):
    type: Literal["custom"] | None = None
    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None


class AnthropicToolChoice(Shape):
    type: Literal["auto", "any", "none"]


class AnthropicNamedTool(Shape):
    type: Literal["tool"]
    name: str


class Thinking(Shape):
    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: SkipValidation[int | None] = None


class JSONSchemaFormat(Shape):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Shape):
    format: SkipValidation[JSONSchemaFormat | None] = None


class MessagesRequest(Body):
    """`POST mlx/v1/messages` (`temperature`, `seed`, `logit_bias`, `keep_alive`, `speculative` in extra_body)."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _when(
                    {"tool_choice": {"type": "object", "properties": {"type": {"const": "any"}}, "required": ["type"]}},
                    {"tools": {"type": "array", "minItems": 1}},
                )
            ]
        }
    )

    model: Annotated[str, Field(min_length=1, json_schema_extra=MODEL_ID), Says("model: Field required")]
    max_tokens: Annotated[
        int | None,
        Field(ge=1, le=MAX_TOKEN_ID),
        WholeNumbers,
        WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_ID}),  # null is refused (parse)
        Says(f"{{field}} must be an integer from 1 to {MAX_TOKEN_ID}", missing="max_tokens: Field required"),
    ]
    messages: Annotated[
        SkipValidation[
            Annotated[
                list[
                    Annotated[
                        AnthropicInputMessage | AnthropicAssistantMessage | AnthropicSystemMessage,
                        Field(discriminator="role"),
                    ]
                ],
                Field(min_length=1, max_length=MAX_MESSAGES),
            ]
        ],
        Says("messages: a non-empty list is required"),
    ]
    system: SkipValidation[str | list[TextBlock] | None] = None
    output_config: Annotated[OutputConfig | None, Says("output_config must be an object")] = None
    output_format: SkipValidation[JSONSchemaFormat | None] = Field(None, description="the older output_config.format")
    temperature: _number(0, 1) = None
    top_p: _number(0, 1) = None
    top_k: TopK = None
    seed: Seed = None
    stop_sequences: _stops(16) = None
    logit_bias: LogitBias = None
    tools: SkipValidation[
        Annotated[list[AnthropicTool], Field(max_length=MAX_TOOLS, description=TOOL_NAMES)] | None
    ] = None
    tool_choice: Annotated[
        AnthropicToolChoice | AnthropicNamedTool | None,
        Field(description="'any' needs tools; a named tool is one of the tools"),
        Says("tool_choice must be {type: 'auto' | 'any' | 'none'} or {type: 'tool', name}"),
    ] = None
    thinking: Annotated[
        Thinking | None,
        Says("thinking must be {type: 'enabled', budget_tokens}, {type: 'adaptive'} or {type: 'disabled'}"),
    ] = None
    keep_alive: KeepAlive = None
    speculative: Speculative = None
    stream: Flag = None
    metadata: SkipValidation[dict[str, Any] | None] = None


class CountTokensRequest(MessagesRequest):
    """`POST mlx/v1/messages/count_tokens`: a Messages body without `max_tokens`."""

    max_tokens: _tokens(1) = None


# -- OpenAI Responses ----------------------------------------------------------------------------
class InputText(Shape):
    type: Literal["input_text", "output_text", "text"]
    text: str


class Refusal(Shape):
    type: Literal["refusal"]
    refusal: str


class InputImage(Shape):
    type: Literal["input_image"]
    image_url: str = Field(description=IMAGE_URL)


class InputMessage(Shape):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText | Refusal | InputImage]


class FunctionCallItem(Shape):
    type: Literal["function_call"]
    call_id: str
    name: str
    namespace: str | None = None
    arguments: str | dict[str, Any] = "{}"


class CustomToolCallItem(Shape):
    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    namespace: str | None = None
    input: str


class CallOutputItem(Shape):
    type: Literal["function_call_output", "custom_tool_call_output"]
    call_id: str
    output: str | list[InputText]


class SkippedItem(Shape):
    """Earlier reasoning and hosted calls: accepted, not fed back to the model."""

    type: Literal["reasoning", "web_search_call"]


InputItem = InputMessage | FunctionCallItem | CustomToolCallItem | CallOutputItem | SkippedItem


class FunctionTool(Shape):
    type: Literal["function"]
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomTextFormat(Shape):
    type: Literal["text"]


class CustomFormat(Shape):
    """A grammar the tool's input must match (a regex is enforced; a Lark grammar is shown to the model)."""

    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: str


class CustomTool(Shape):
    type: Literal["custom"]
    name: ToolName
    description: str | None = None
    format: CustomTextFormat | CustomFormat | None = None


class NamespaceTool(Shape):
    type: Literal["namespace"]
    name: str
    tools: list[FunctionTool | CustomTool]


class HostedTool(Shape):
    """OpenAI's hosted tools: left out of what the model sees, listed back."""

    type: Literal[
        "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11", "file_search",
        "code_interpreter", "image_generation", "computer_use_preview", "computer_use", "mcp", "local_shell",
    ]  # fmt: skip


class NamedTool(Shape):
    type: Literal["function", "custom"]
    name: str
    namespace: str | None = None


class TextFormat(Shape):
    type: Literal["json_schema"]
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON schema")
    strict: bool | None = None


class TextOptions(Shape):
    format: SkipValidation[PlainFormat | TextFormat | None] = None


class Reasoning(Shape):
    effort: SkipValidation[str | None] = Field(None, description="'none' turns a thinking model's reasoning off")


# A tool the model sees: a function or custom tool, or a namespace of some.
MODEL_TOOL = {
    "anyOf": [
        {"properties": {"type": {"enum": ["function", "custom"]}}, "required": ["type"]},
        {"properties": {"type": {"const": "namespace"}, "tools": {"minItems": 1}}, "required": ["type", "tools"]},
    ]
}

# Something for the model to answer (`instructions` aside): a string, or an item that is not
# earlier reasoning or a hosted call.
MESSAGE_INPUT = {
    "properties": {
        "input": {
            "anyOf": [
                {"type": "string"},
                {"contains": {"properties": {"type": {"not": {"enum": ["reasoning", "web_search_call"]}}}}},
            ]
        }
    }
}


class ResponsesRequest(Body):
    """`POST mlx/v1/responses` and `…/input_tokens` (`seed`, `logit_bias`, `top_k`, `keep_alive`, `speculative`
    as extensions)."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                _when(
                    {"tool_choice": {"const": "required"}},
                    {"tools": {"type": "array", "contains": MODEL_TOOL}},
                ),
                {
                    "anyOf": [
                        {
                            "properties": {"instructions": {"type": "string", "minLength": 1}},
                            "required": ["instructions"],
                        },
                        MESSAGE_INPUT,
                    ]
                },
            ]
        }
    )

    model: Annotated[str, Field(min_length=1, json_schema_extra=MODEL_ID), Says("model is required")]
    instructions: Annotated[str | None, Says("instructions must be a string")] = None
    input: Annotated[
        SkipValidation[str | Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)]],
        Says("input must be a string or a list of items"),
    ]
    tools: SkipValidation[
        Annotated[
            list[FunctionTool | CustomTool | NamespaceTool | HostedTool],
            Field(
                max_length=MAX_TOOLS, description="function and custom tool names unique, namespaces' tools included"
            ),
        ]
        | None
    ] = None
    store: Flag = None
    reasoning: Annotated[Reasoning | None, Says("reasoning must be an object {effort}")] = None
    max_output_tokens: _tokens(1) = None
    temperature: _number(0, 2) = None
    top_p: _number(0, 1) = None
    top_k: TopK = None
    seed: Seed = None
    logit_bias: LogitBias = None
    top_logprobs: TopLogprobs = None
    include: Annotated[list[str] | None, Says("include must be a list of strings")] = None
    tool_choice: Annotated[
        SkipValidation[Literal["auto", "none", "required"] | NamedTool | None],
        Field(description="'required' needs a function or custom tool; a named tool is one of the tools"),
    ] = None
    text: Annotated[TextOptions | None, Says("text must be an object {format}")] = None
    previous_response_id: Annotated[
        str | None, Field(min_length=1, max_length=MAX_ID), Says("previous_response_id must be a response id")
    ] = None
    parallel_tool_calls: SkipValidation[bool | None] = None
    metadata: SkipValidation[dict[str, Any] | None] = None
    user: SkipValidation[str | None] = None
    keep_alive: KeepAlive = None
    speculative: Speculative = None
    stream: Flag = None


# -- embeddings and speech -----------------------------------------------------------------------
class EmbeddingsRequest(Body):
    """`POST mlx/v1/embeddings`."""

    model: Annotated[str, Field(json_schema_extra=MODEL_ID), Says(MODEL_ID_MESSAGE, code="invalid_model")]
    input: Annotated[
        SkipValidation[
            Annotated[str, Field(min_length=1)]
            | TokenIds
            | Annotated[
                list[Annotated[str, Field(min_length=1)] | TokenIds],
                Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
            ]
        ],
        Field(
            description=f"a string, strings, token ids, or lists of token ids (at most {MAX_EMBEDDING_INPUTS}, none empty)"
        ),
        Says(EMBEDDINGS_INPUT_MESSAGE, code="invalid_input"),  # token ids: `token_ids`
    ]
    encoding_format: Annotated[
        Literal["float", "base64"] | None, Says("encoding_format must be 'float' or 'base64'", code="invalid_value")
    ] = None
    dimensions: Annotated[
        int | None, Field(ge=1), WholeNumbers, Says("dimensions must be a positive integer", code="invalid_value")
    ] = None
    user: SkipValidation[str | None] = None


class SpeechBody(Body):
    """`POST mlx/v1/audio/speech` (a WAV comes back)."""

    model: Annotated[SkipValidation[str], Field(json_schema_extra=MODEL_ID)]
    input: Annotated[
        SkipValidation[str],
        # Not blank: a character Python's str.strip keeps (ECMA's \s lacks \x1c-\x1f and \x85).
        Field(max_length=MAX_SPEECH_CHARS, json_schema_extra={"pattern": r"[^\s\x1c-\x1f\x85]"}),
    ]
    voice: Annotated[str | None, Field(max_length=100), Says("voice must be a voice name", code="invalid_value")] = None
    response_format: Annotated[
        Literal["wav"] | None, Says("response_format must be 'wav' on this server", code="invalid_value")
    ] = None
    speed: Annotated[Literal[1] | None, Says("speed other than 1 is not supported here", code="unsupported")] = None
