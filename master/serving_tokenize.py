"""POST /tokenize and /detokenize in vLLM's shapes: a prompt or a conversation (rendered as
/v1/chat/completions would render it, tools included) -> token ids, and ids -> text."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from master.errors import APIError
from master.openai_requests import ChatCompletionRequest, ChatMessage, _Request
from master.serving import ServingContext
from master.serving_chat import render_prompt, request_tools


class TokenizeCompletionRequest(_Request):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(_Request):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False  # the template writes them
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


def tokenize(ctx: ServingContext,
             req: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
    ctx.check_model(req.model)
    tok = ctx.bundle.tokenizer
    if isinstance(req, TokenizeChatRequest):
        chat = ChatCompletionRequest(messages=req.messages, tools=req.tools,
                                     add_generation_prompt=req.add_generation_prompt,
                                     chat_template_kwargs=req.chat_template_kwargs)
        prompt, ids = render_prompt(ctx, chat, request_tools(ctx, chat))
        if req.add_special_tokens:
            ids = tok.encode(prompt)
    else:
        ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    strs = [tok.token_text(t) for t in ids] if req.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=ctx.bundle.max_model_len, tokens=ids,
                            token_strs=strs)


def detokenize(ctx: ServingContext, req: DetokenizeRequest) -> DetokenizeResponse:
    ctx.check_model(req.model)
    tok = ctx.bundle.tokenizer
    bad = next((t for t in req.tokens if not 0 <= t < tok.vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary "
                       f"(0..{tok.vocab_size - 1})", param="tokens")
    return DetokenizeResponse(prompt=tok.decode(req.tokens))
