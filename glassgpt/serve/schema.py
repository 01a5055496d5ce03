"""Request bodies of the OpenAI-compatible API, as pydantic models.

They are the OpenAPI schema too (what the fuzz test reads). Unknown fields are ignored,
as the official API ignores them; wrong types and out-of-range values are 400s. Types are
strict, as OpenAI's schema has them: `max_tokens: true`, `stream: "yes"` and `prompt: [true]`
are refused, not coerced (an integer is still a number: `temperature: 1` is fine).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

INT64 = 2**63 - 1


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ImageURL(_Loose):
    url: str
    detail: str | None = None


class ContentPart(_Loose):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Loose):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Loose):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Loose):
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers


class FunctionDef(_Loose):
    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Loose):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Loose):
    name: str


class ToolChoiceNamed(_Loose):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Loose):
    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Loose):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(_Loose):
    include_usage: bool | None = False


class ChatCompletionRequest(_Loose):
    model: str
    messages: list[Message]
    max_tokens: int | None = Field(None, ge=1, le=INT64)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=INT64, description="glassgpt extension: sample from the k most likely tokens")
    n: int | None = Field(None, ge=1, le=128)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # glassgpt extension, llama.cpp's names: DRY, a penalty on extending a repeat of the output's own text
    dry_multiplier: float | None = Field(None, ge=0.0, le=100.0)
    dry_base: float | None = Field(None, ge=1.0, le=10.0)
    dry_allowed_length: int | None = Field(None, ge=1, le=1024)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], ToolChoiceNamed, None] = None
    parallel_tool_calls: bool | None = None
    # Deprecated by OpenAI in favour of tools; refused with a 400 that says so.
    functions: list[Any] | None = None
    function_call: Any = None


class CompletionRequest(_Loose):
    model: str
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=0, le=INT64)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=INT64)
    n: int | None = Field(None, ge=1, le=128)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # glassgpt extension, llama.cpp's names: DRY, a penalty on extending a repeat of the output's own text
    dry_multiplier: float | None = Field(None, ge=0.0, le=100.0)
    dry_base: float | None = Field(None, ge=1.0, le=10.0)
    dry_allowed_length: int | None = Field(None, ge=1, le=1024)
    best_of: int | None = Field(None, ge=1, le=128)


Role = Literal["system", "developer", "user", "assistant"]


class TokenizeRequest(_Loose):
    """vLLM's /tokenize: a text `prompt`, or chat `messages` rendered as the chat endpoint
    renders them. `model` may be left out when one model is served."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (as vLLM)
    add_generation_prompt: bool | None = True
    return_token_strs: bool | None = False


class DetokenizeRequest(_Loose):
    model: str | None = None
    tokens: list[int]
