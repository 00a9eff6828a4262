"""OpenAI request shapes (chat, completions) and their field-level validation; no serving
logic. Replies are in master/openai_responses.py."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from master.request_fields import refuse_unknown
from proto.convert import FLOAT32_MAX, INT32_MAX

# Bounds here are what pipeline.proto carries (int32 counts and ids, finite floats); bounds
# that depend on the model (vocabulary, context, max_output_tokens) are checked in serving.py.
TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
Count = Annotated[int, Field(ge=1, le=INT32_MAX)]


class _Request(BaseModel):
    # An unknown field is refused with a 400 naming it, as OpenAI does (request_fields.py):
    # one that would change the output must never be silently ignored. NaN and Infinity
    # (which Python's JSON parser accepts) are refused for every float field.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="after")
    def _no_unknown_fields(self):
        refuse_unknown(self.model_extra)
        return self


class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage on every chunk


class ResponseFormat(_Request):
    """OpenAI's response_format; master/structured.py turns it into a grammar."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None  # {"name", "schema", "strict"}


class _SamplingFields(_Request):
    """Fields chat and completions share. None = the checkpoint's generation_config default."""

    model: str | None = None
    max_tokens: Count | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)  # -1 or 0 = off (vLLM accepts both)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = None  # vLLM's extension
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=FLOAT32_MAX)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # structured outputs (master/structured.py): at most one of these
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | bool | str | None = None  # vLLM's extensions
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = None

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatMessage(BaseModel):
    """One message of a conversation; extra keys go to the chat template untouched."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Count | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True  # vLLM's extension
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's extension

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self


def _prompt_form(value: Any) -> str:
    """Which of OpenAI's four prompt forms a value is, from its first element, so a long
    list is validated once (trying each arm of the union took 140 ms for 163k ids)."""
    if isinstance(value, list) and value:
        return {str: "list[str]", list: "list[list[int]]"}.get(type(value[0]), "list[int]")
    return "str" if isinstance(value, str) else "list[int]"


Prompt = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[str], Tag("list[str]")]
    | Annotated[list[int], Tag("list[int]")] | Annotated[list[list[int]], Tag("list[list[int]]")],
    Discriminator(_prompt_form)]


class CompletionRequest(_SamplingFields):
    prompt: Prompt
    max_tokens: Count | None = 16  # OpenAI's default for legacy completions
    logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: Count | None = None  # the chat name, accepted here too
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _supported(self):
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self
