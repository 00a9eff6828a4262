"""POST /v1/completions: prompt text or token ids -> choices -> text or SSE chunks."""
from __future__ import annotations

from typing import AsyncIterator

from fastapi import Request

from master.access_log import AccessRecord
from master.choices import ChoiceUpdate
from master.errors import APIError
from master.openai_requests import CompletionRequest
from master.openai_responses import CompletionChoice, CompletionLogprobs, CompletionResponse
from master.resume import ResumableRun
from master.resume_registry import resumption
from master.serving import RequestRun, ServingContext, response_events
from master.sse import (SSEWriter, include_usage, nonempty, running_usage,
                        text_choice)
from master.tokenizer import Tokenizer


def tokenize_prompts(ctx: ServingContext, prompt) -> list[list[int]]:
    """The four prompt forms OpenAI accepts -> one token list per prompt."""
    tok, vocab = ctx.bundle.tokenizer, ctx.bundle.vocab_size
    if isinstance(prompt, str):
        prompts = [tok.encode(prompt)]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [tok.encode(p) for p in prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    else:
        prompts = [list(p) for p in prompt]
    for i, ids in enumerate(prompts):
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if 0 <= min(ids) and max(ids) < vocab:
            continue
        bad = next(t for t in ids if not 0 <= t < vocab)
        raise APIError(400, f"token id {bad} of prompt {i} is outside the vocabulary "
                       f"(0..{vocab - 1})", param="prompt")
    return prompts


def completion_logprobs(tok: Tokenizer, update: ChoiceUpdate, top_n: int) -> CompletionLogprobs:
    out = CompletionLogprobs(top_logprobs=[])
    for lp in update.logprobs:
        out.tokens.append(tok.token_text(lp.token_id))
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append({tok.token_text(t): v for t, v in lp.top[:top_n]})
        out.text_offset.append(lp.text_offset)
    return out


async def completion(ctx: ServingContext, req: CompletionRequest, request: Request,
                     record: AccessRecord):
    ctx.check_model(req.model)
    resume = resumption(ctx.runs, request, record.key_id, req, req.stream, "cmpl")
    record.request_id = resume.request_id
    if resume.run is not None:  # this process still has it: read on, nothing is rerun
        return await ctx.runs.respond(request, resume.run, resume.after)
    prompts = await ctx.off_loop(tokenize_prompts, ctx, req.prompt)
    if isinstance(req.prompt, str):
        record.prompt = req.prompt
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    budgets = [ctx.max_tokens(len(ids), req.max_completion_tokens or req.max_tokens, param,
                              "prompt") for ids in prompts]
    response_id = resume.request_id
    states = ctx.choice_states(response_id, req, prompts, budgets, req.logprobs, resume=resume)
    run = RequestRun(ctx, record, states, req.n)
    events = response_events(
        run, req.stream, lambda first, rest: _events(ctx, req, run, first, rest, response_id),
        lambda updates: _response(ctx, req, run, updates, response_id))
    return await ctx.runs.respond(request, ctx.runs.start(
        ResumableRun(response_id, resume.digest, req.stream), events), resume.after)


def _response(ctx, req, run: RequestRun, updates: list[ChoiceUpdate], response_id: str):
    tok = ctx.bundle.tokenizer
    texts: list[list[str]] = [[] for _ in run.states]
    logprobs = [CompletionLogprobs(top_logprobs=[]) for _ in run.states]
    for u in updates:
        texts[u.index].append(u.content)
        if req.logprobs is not None:
            part = completion_logprobs(tok, u, req.logprobs)
            for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(logprobs[u.index], name).extend(getattr(part, name))
    choices = [CompletionChoice(index=i, text="".join(texts[i]),
                                logprobs=logprobs[i] if req.logprobs is not None else None,
                                finish_reason=run.finish_reasons.get(i))
               for i in range(len(run.states))]
    return CompletionResponse(id=response_id, model=ctx.config.served_model_name,
                              choices=choices, usage=run.usage())


async def _events(ctx, req, run: RequestRun, updates: list[ChoiceUpdate],
                  rest: AsyncIterator[ChoiceUpdate], response_id: str) -> AsyncIterator[str]:
    """A chunk per update, then usage when asked for."""
    writer = SSEWriter(response_id, "text_completion", ctx.config.served_model_name)
    tok = ctx.bundle.tokenizer
    async for u in nonempty(updates, rest):
        if req.logprobs is None:
            choice = text_choice(u.index, u.content, u.finish_reason)
        else:
            choice = CompletionChoice(index=u.index, text=u.content,
                                      logprobs=completion_logprobs(tok, u, req.logprobs),
                                      finish_reason=u.finish_reason)
        yield writer.event([choice], usage=running_usage(req, run.usage))
    if include_usage(req):
        yield writer.event([], usage=run.usage())
