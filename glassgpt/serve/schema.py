"""Request bodies of the OpenAI-compatible API, as pydantic models.

They are the OpenAPI schema too (what the fuzz test reads). Unknown fields are ignored,
as the official API ignores them; wrong types and out-of-range values are 400s.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

INT64 = 2**63 - 1


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Loose):
    url: str
    detail: str | None = None


class ContentPart(_Loose):
    type: str
    text: str | None = None
    image_url: ImageURL | None = None


class Message(_Loose):
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None


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
