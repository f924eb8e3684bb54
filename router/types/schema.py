"""The OpenAI chat completion request as pydantic models: every content form, every parameter
with its type and range as OpenAI documents it.

Validation is strict (no "1" for 1, no true for 1) so that nothing of the wrong type reaches a
backend: llama.cpp takes these values through ctypes, where a wrong type is a crash or, worse, a
setting that outlives the request. Unknown top-level fields are refused (a typo such as
"max_token" must not be silently ignored); unknown fields inside a message or a content part are
dropped, because SDKs echo back assistant messages with fields such as `annotations` or `audio`.

`validate_messages` and `validate_params` are used by the library (`router.types.ChatRequest`)
and by the HTTP endpoint alike; `ChatCompletionRequest` is the whole HTTP body. Errors are
`RequestError`s whose `param` is the path of the field (`messages[2].content[0].image_url.url`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from router.errors import RequestError

MAX_TOKENS = 1 << 30  # above any context window; also what a C int takes
INT64 = (-(1 << 63), (1 << 63) - 1)
ROLES = ("system", "developer", "user", "assistant", "tool")

# What each top-level parameter must be, for error messages in OpenAI's words.
EXPECTED = {
    "model": "a non-empty string: a routing mode or a model name from GET /v1/models",
    "messages": "a non-empty list of {role, content} objects",
    "max_tokens": f"a positive integer (at most {MAX_TOKENS})",
    "max_completion_tokens": f"a positive integer (at most {MAX_TOKENS})",
    "temperature": "a number in [0.0, 2.0]",
    "top_p": "a number in [0.0, 1.0]",
    "presence_penalty": "a number in [-2.0, 2.0]",
    "frequency_penalty": "a number in [-2.0, 2.0]",
    "seed": "a 64-bit integer",
    "stop": "a non-empty string or a list of up to 4 non-empty strings",
    "n": "1 (only one choice per request is supported)",
    "stream": "true or false",
    "stream_options": 'an object such as {"include_usage": true}',
    "user": "a string of at most 256 characters",
    "metadata": "an object of at most 16 string values",
    "logprobs": "false or left out: this router does not return log probabilities",
    "top_logprobs": "0 or left out: this router does not return log probabilities",
    "logit_bias": "an object mapping token ids to numbers in [-100, 100]",
    "parallel_tool_calls": "true or false",
    "store": "true or false",
    "tools": 'a list of up to 128 {"type": "function", "function": {"name": ...}} objects',
    "tool_choice": '"none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
    "response_format": '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", ...}',
}


class _Open(BaseModel):
    """Strict types; unknown keys dropped (SDKs echo fields this router has no use for)."""

    model_config = ConfigDict(strict=True, extra="ignore")


class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# ---------------------------------------------------------------- content parts


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "parts"
    return None


def _content(part: Any) -> Any:
    """A content field: a string, or a non-empty list of `part`s."""
    return Annotated[
        Annotated[str, Tag("text")] | Annotated[list[part], Field(min_length=1), Tag("parts")],
        Discriminator(
            _content_kind,
            custom_error_type="content_type",
            custom_error_message="must be a string or a list of content parts",
        ),
    ]


# ---------------------------------------------------------------- messages


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Open):
    role: Literal["system", "developer"]
    content: _content(TextPart)  # type: ignore[valid-type]
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: _content(UserPart)  # type: ignore[valid-type]
    name: str | None = None


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: _content(AssistantPart) | None = None  # type: ignore[valid-type]
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not (self.tool_calls or self.function_call or self.refusal):
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self


class ToolMessage(_Open):
    role: Literal["tool"]
    content: _content(TextPart)  # type: ignore[valid-type]
    tool_call_id: str


def _role(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, Mapping) else None
    return {"developer": "system"}.get(role, role) if role in ROLES else None


Message = Annotated[
    Annotated[SystemMessage, Tag("system")]
    | Annotated[UserMessage, Tag("user")]
    | Annotated[AssistantMessage, Tag("assistant")]
    | Annotated[ToolMessage, Tag("tool")],
    Discriminator(
        _role,
        custom_error_type="role",
        custom_error_message=f"role must be one of {', '.join(ROLES)}",
    ),
]
_MESSAGES: TypeAdapter[list[Any]] = TypeAdapter(Annotated[list[Message], Field(min_length=1)])


# ---------------------------------------------------------------- parameters


class FunctionSpec(_Open):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaSpec(_Open):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(_Open):
    type: Literal["text"]


class JSONObjectFormat(_Open):
    type: Literal["json_object"]


class JSONSchemaFormat(_Open):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")
]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
StopWord = Annotated[str, Field(min_length=1, max_length=256)]


class ChatParams(_Closed):
    """The parameters passed on to a model (router.types.SAMPLING_PARAMS)."""

    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stop: StopWord | Annotated[list[StopWord], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=INT64[0], le=INT64[1])] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(ChatParams):
    """A whole POST /v1/chat/completions body. Fields that change nothing here are accepted
    (and checked) so that clients which always send them keep working: LangChain sends n=1,
    the SDK may send store=false."""

    model: Annotated[str, Field(min_length=1, max_length=256)] = "auto"
    messages: list[Any]  # checked by validate_messages, for errors that name the message
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    ) = None
    n: Literal[1] | None = None
    logprobs: Literal[False] | None = None  # not served: refused rather than dropped
    top_logprobs: Literal[0] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None

    def params(self) -> dict[str, Any]:
        """The model parameters that were given (not null)."""
        return self.model_dump(include=set(ChatParams.model_fields), exclude_none=True)


# ---------------------------------------------------------------- entry points


def validate_body(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc, body) from None


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Checked messages as plain dicts: the fields that were sent, unknown ones dropped."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"'messages' must be {EXPECTED['messages']}", param="messages")
    try:
        checked = _MESSAGES.validate_python(messages)
    except ValidationError as exc:
        raise request_error(exc, messages, root="messages") from None
    return [m.model_dump(exclude_unset=True, by_alias=True) for m in checked]


def validate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Checked model parameters, nulls dropped, `max_completion_tokens` read as `max_tokens`."""
    unknown = sorted(set(params) - set(ChatParams.model_fields))
    if unknown:
        raise RequestError(
            f"unsupported parameter(s) {', '.join(unknown)}; "
            f"supported: {', '.join(sorted(ChatParams.model_fields))}",
            param=unknown[0],
        )
    try:
        checked = ChatParams.model_validate(dict(params))
    except ValidationError as exc:
        raise request_error(exc, params) from None
    out = checked.model_dump(exclude_none=True, by_alias=True)
    if "max_completion_tokens" in out:
        out.setdefault("max_tokens", out["max_completion_tokens"])
        del out["max_completion_tokens"]
    return out


def request_error(exc: ValidationError, data: Any, root: str = "") -> RequestError:
    """The first problem pydantic found, as one line naming the field; never the input."""
    err = exc.errors(include_url=False, include_input=False)[0]
    kind = err["type"]
    param, node = _path(data, err["loc"], root, kind == "missing")
    top = param.split(".")[0].split("[")[0]
    if kind == "extra_forbidden":
        return RequestError(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing" and param in EXPECTED:
        return RequestError(f"'{param}' is missing: send {EXPECTED[param]}", param=param)
    if kind == "missing":
        return RequestError(f"{param} is missing", param=param)
    if param == top and top in EXPECTED:
        return RequestError(f"'{top}' must be {EXPECTED[top]}", param=param)
    if kind == "role" and not isinstance(node, Mapping):
        return RequestError(f"{param} must be an object", param=param)
    if kind == "role":
        return RequestError(
            f"{param}.role must be one of {', '.join(ROLES)}", param=f"{param}.role"
        )
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind in {"model_type", "dict_type"}:
        message = "must be an object"
    elif kind == "content_type":
        message = "must be a string or a list of content parts"
    elif kind == "union_tag_invalid":
        tag = str(err.get("ctx", {}).get("expected_tags", ""))
        message = f"has an unsupported 'type'; expected one of {tag}"
        param += ".type"
    message = message[0].lower() + message[1:]
    joiner = " " if message.startswith("must ") else ": "
    return RequestError(f"{param}{joiner}{message}", param=param)


def _path(data: Any, loc: tuple[int | str, ...], root: str, missing: bool) -> tuple[str, Any]:
    """A pydantic error location as a field path (and the value there), walking the input to
    skip union tags."""
    path, node = root, data
    for i, step in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(step, int) and isinstance(node, list) and 0 <= step < len(node):
            path, node = f"{path}[{step}]", node[step]
        elif isinstance(step, str) and isinstance(node, Mapping) and step in node:
            path, node = (f"{path}.{step}" if path else step), node[step]
        elif last and missing and isinstance(step, str):  # a required field not sent
            path = f"{path}.{step}" if path else step
    return path[:200], node
