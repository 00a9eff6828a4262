"""POST /v1/chat/completions: messages -> chat template -> choices -> message or SSE deltas."""
from __future__ import annotations

from typing import AsyncIterator

from fastapi import Request

from master.access_log import AccessRecord
from master.chat_template import ChatTemplateError
from master.choices import ChoiceUpdate
from master.errors import APIError
from master.openai_requests import ChatCompletionRequest, ChatMessage
from master.openai_responses import (AssistantMessage, ChatChoice, ChatChunkChoice,
                                     ChatCompletionResponse, ChatLogprobs, DeltaFunctionCall,
                                     DeltaMessage, DeltaToolCall, FunctionCall,
                                     TokenLogprobEntry, ToolCall, TopLogprob)
from master.resume import ResumableRun
from master.resume_registry import resumption
from master.serving import RequestRun, ServingContext, response_events
from master.sse import (SSEWriter, content_choice, include_usage, nonempty,
                        running_usage)
from master.tokenizer import Tokenizer
from master.tool_parser import ToolCallDelta
from master.tools import ToolPlan, prompt_messages, tool_plan


def _message_dict(m: ChatMessage, index: int) -> dict:
    """What the template sees: the message as sent, text parts joined into one string."""
    d = m.model_dump(exclude_none=True)
    d["content"] = m.content
    if isinstance(m.content, list):
        if any(part.get("type") != "text" for part in m.content):
            raise APIError(400, "only text content parts are supported",
                           param=f"messages[{index}].content")
        d["content"] = "".join(str(part.get("text", "")) for part in m.content)
    return d


RESERVED_TEMPLATE_NAMES = frozenset({"messages", "tools", "documents", "add_generation_prompt"})


def render_prompt(ctx: ServingContext, req: ChatCompletionRequest,
                  plan: ToolPlan | None = None) -> tuple[str, list[int]]:
    template = ctx.bundle.chat_template
    if template is None:
        raise APIError(400, "this model has no chat template; use /v1/completions",
                       param="messages")
    messages = [_message_dict(m, i) for i, m in enumerate(req.messages)]
    uses = set(template.variables)  # "tools": the template renders definitions itself
    if template.mentions("tool_calls"):  # and earlier calls (DeepSeek's)
        uses.add("tool_calls")
    messages, tools = prompt_messages(messages, plan, ctx.bundle.tool_format, uses)
    extra = req.chat_template_kwargs or {}
    taken = sorted(RESERVED_TEMPLATE_NAMES & extra.keys())
    if taken:
        raise APIError(400, f"chat_template_kwargs: {taken[0]!r} is set by the request itself",
                       param="chat_template_kwargs")
    try:
        prompt = template.render(messages, add_generation_prompt=req.add_generation_prompt,
                                 tools=tools, **extra)
    except ChatTemplateError as e:
        raise APIError(400, str(e), param="messages") from None
    return prompt, template.encode(prompt)


def request_tools(ctx: ServingContext, req: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool plan; 400 when the model cannot honour it."""
    plan = tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls, ctx.bundle.tool_format)
    if plan is not None and plan.mode == "auto" and plan.fmt is None:
        raise APIError(400, "this model has no tool-call format to parse (set the master's "
                       "tool_call_parser)", param="tools")
    return plan


def chat_logprobs(tok: Tokenizer, update: ChoiceUpdate, top_n: int) -> ChatLogprobs | None:
    if not update.logprobs:
        return None

    def entry(cls, token_id: int, logprob: float, **extra):
        data = tok.token_bytes(token_id)
        return cls(token=tok.token_text(token_id), logprob=logprob, bytes=list(data), **extra)

    return ChatLogprobs(content=[
        entry(TokenLogprobEntry, lp.token_id, lp.logprob,
              top_logprobs=[entry(TopLogprob, t, v) for t, v in lp.top[:top_n]])
        for lp in update.logprobs])


async def chat_completion(ctx: ServingContext, req: ChatCompletionRequest,
                          request: Request, record: AccessRecord):
    ctx.check_model(req.model)
    resume = resumption(ctx.runs, request, record.key_id, req, req.stream, "chatcmpl")
    record.request_id = resume.request_id
    if resume.run is not None:  # this process still has it: read on, nothing is rerun
        return await ctx.runs.respond(request, resume.run, resume.after)
    plan = request_tools(ctx, req)
    prompt, ids = await ctx.off_loop(render_prompt, ctx, req, plan)
    record.prompt = prompt
    budget = ctx.max_tokens(len(ids), req.max_completion_tokens or req.max_tokens,
                            "max_completion_tokens" if req.max_completion_tokens else "max_tokens",
                            "messages")
    response_id = resume.request_id
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    states = ctx.choice_states(response_id, req, [ids], [budget], logprobs,
                               think_open=ctx.think_open(prompt), tools=plan, resume=resume)
    run = RequestRun(ctx, record, states, req.n)
    events = response_events(
        run, req.stream, lambda first, rest: _events(ctx, req, run, first, rest, response_id),
        lambda updates: _response(ctx, req, run, updates, response_id))
    return await ctx.runs.respond(request, ctx.runs.start(
        ResumableRun(response_id, resume.digest, req.stream), events), resume.after)


def _response(ctx, req, run: RequestRun, updates: list[ChoiceUpdate], response_id: str):
    n = len(run.states)
    content, reasoning = [[] for _ in range(n)], [[] for _ in range(n)]
    logprobs: list[list[TokenLogprobEntry]] = [[] for _ in range(n)]
    calls: list[list[ToolCall]] = [[] for _ in range(n)]
    for u in updates:
        content[u.index].append(u.content)
        reasoning[u.index].append(u.reasoning)
        calls[u.index] += [ToolCall(id=c.id, function=FunctionCall(name=c.name,
                                                                    arguments=c.arguments))
                           for c in u.tool_calls]
        if req.logprobs and (lp := chat_logprobs(ctx.bundle.tokenizer, u, req.top_logprobs or 0)):
            logprobs[u.index].extend(lp.content)
    choices = []
    for i, state in enumerate(run.states):
        thought, text = "".join(reasoning[i]), "".join(content[i])
        message = AssistantMessage(  # with calls, OpenAI sends null rather than blank content
            content=None if calls[i] and not text.strip() else text,
            reasoning_content=thought or None, tool_calls=calls[i] or None)
        choices.append(ChatChoice(
            index=i, message=message, finish_reason=run.finish_reasons.get(i),
            logprobs=ChatLogprobs(content=logprobs[i]) if req.logprobs else None))
    return ChatCompletionResponse(id=response_id, model=ctx.config.served_model_name,
                                  choices=choices, usage=run.usage())


async def _events(ctx, req, run: RequestRun, updates: list[ChoiceUpdate],
                  rest: AsyncIterator[ChoiceUpdate], response_id: str) -> AsyncIterator[str]:
    """The role chunk of every choice, a delta per update, then usage when asked for."""
    writer = SSEWriter(response_id, "chat.completion.chunk", ctx.config.served_model_name)
    role = DeltaMessage(role="assistant", content="")
    for i in range(len(run.states)):
        yield writer.event([ChatChunkChoice(index=i, delta=role)])
    async for u in nonempty(updates, rest):
        lp = chat_logprobs(ctx.bundle.tokenizer, u, req.top_logprobs or 0)
        if lp is None and not u.reasoning and not u.tool_calls:
            choice = content_choice(u.index, u.content, u.finish_reason)
        else:
            d = DeltaMessage(content=u.content or None, reasoning_content=u.reasoning or None,
                             tool_calls=[_delta_call(c) for c in u.tool_calls] or None)
            choice = ChatChunkChoice(index=u.index, delta=d, logprobs=lp,
                                     finish_reason=u.finish_reason)
        yield writer.event([choice], usage=running_usage(req, run.usage))
    if include_usage(req):
        yield writer.event([], usage=run.usage())


def _delta_call(c: ToolCallDelta) -> DeltaToolCall:
    return DeltaToolCall(index=c.index, id=c.id, type="function" if c.id else None,
                         function=DeltaFunctionCall(name=c.name, arguments=c.arguments))
