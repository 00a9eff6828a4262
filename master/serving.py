"""The request flow chat and completions share: request fields -> sampling params -> choices
-> updates, with metrics and the access log kept as they come.

An endpoint (serving_chat.py, serving_completion.py) builds the choices and hands
`response_events` its shaping functions (JSON body or SSE events, sse.py); the run registry
(master/resume_registry.py) runs that apart from the connection, so a client can resume.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, TypeVar

from fastapi.responses import Response
from pydantic import BaseModel

from engine.constraint import Constraint
from engine.sampling_params import SamplingParams
from master.access_log import AccessRecord
from master.bundle import ModelBundle
from master.choices import ChoiceState, ChoiceUpdate, run_choices
from master.config import MasterConfig
from master.errors import APIError, to_api_error
from master.generation import GenerationRequest, Generator
from master.metrics import Metrics
from master.openai_requests import _SamplingFields
from master.openai_responses import Usage
from master.reasoning import ReasoningParser, prompt_opens_think
from master.sse import with_done
from master.structured import constraint_of
from master.tools import forced_constraint
from proto.convert import WireError, check_wire_ranges

if TYPE_CHECKING:
    from master.resume_registry import Resumption, RunRegistry

T = TypeVar("T")


@dataclass
class ServingContext:
    """The app-wide pieces every request handler uses."""

    config: MasterConfig
    generator: Generator
    bundle: ModelBundle
    metrics: Metrics
    text_pool: Executor  # tokenizing and template rendering: seconds for a large prompt
    runs: "RunRegistry"  # master/resume_registry.py: responses readable after a lost stream

    async def off_loop(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in the text pool, so /health and running streams answer meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.text_pool, fn, *args)

    def check_model(self, model: str | None) -> None:
        if model not in (None, "", self.config.served_model_name):
            raise APIError(404, f"The model `{model}` does not exist.", param="model",
                           code="model_not_found")

    def max_tokens(self, prompt_len: int, requested: int | None, param: str,
                   prompt_param: str) -> int:
        """Tokens to generate: absent = min(what fits, max_output_tokens); 400 above
        max_output_tokens or when the prompt plus them exceed the context."""
        limit, cap = self.bundle.max_model_len, self.config.max_output_tokens
        if requested is not None and requested > cap:
            raise APIError(400, f"{param}: {requested} is above this server's limit of {cap} "
                           "output tokens (max_output_tokens)", param=param, code="invalid_value")
        if prompt_len >= limit:
            param = prompt_param
        if requested is None:  # as much as fits, up to the server's cap
            fits = limit - prompt_len
            requested = max(1, min(self.bundle.default_max_tokens or fits, fits, cap))
        if prompt_len + requested > limit:
            # A prompt over the limit was tokenized only that far (Tokenizer.limit_tokens).
            counted = f"{prompt_len}" if prompt_len <= limit else f"more than {limit}"
            raise APIError(
                400, f"This model's maximum context length is {limit} tokens. However, you "
                f"requested more than that ({counted} in the prompt, {requested} for the "
                "completion). Please reduce the length of the prompt or the completion.",
                param=param, code="context_length_exceeded")
        return requested

    def sampling_params(self, req: _SamplingFields, logprobs: int | None,
                        prompt_ids: list[int], choice: int,
                        constraint: Constraint | None = None) -> SamplingParams:
        """Request fields, else generation_config.json's defaults, else OpenAI's."""
        defaults = self.bundle.sampling_defaults

        def pick(name: str, fallback):
            value = getattr(req, name)
            return defaults.get(name, fallback) if value is None else value

        repetition_penalty = float(pick("repetition_penalty", 1.0))
        try:
            params = SamplingParams(
                temperature=float(pick("temperature", 1.0)), top_p=float(pick("top_p", 1.0)),
                top_k=max(int(pick("top_k", 0)), 0), min_p=float(pick("min_p", 0.0)),
                seed=None if req.seed is None else (req.seed + choice) % 2**64,
                presence_penalty=req.presence_penalty,
                frequency_penalty=req.frequency_penalty,
                repetition_penalty=repetition_penalty, logprobs=logprobs,
                stop_token_ids=self.bundle.stop_token_ids + tuple(req.stop_token_ids or ()),
                prompt_token_ids=tuple(prompt_ids) if repetition_penalty != 1.0 else (),
                constraint=constraint,
            )
            check_wire_ranges(params)
        except WireError as e:
            raise APIError(400, str(e), param=e.field, code="invalid_value") from None
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split(" ")[0]) from None
        self._check_vocabulary(params)
        return params

    def _check_vocabulary(self, params: SamplingParams) -> None:
        vocab = self.bundle.vocab_size
        if params.top_k > vocab:
            raise APIError(400, f"top_k: {params.top_k} is above the vocabulary size {vocab}",
                           param="top_k", code="invalid_value")
        bad = next((t for t in params.stop_token_ids if t >= vocab), None)
        if bad is not None:
            raise APIError(400, f"stop_token_ids: {bad} is outside the vocabulary "
                           f"(0..{vocab - 1})", param="stop_token_ids", code="invalid_value")

    def choice_states(self, response_id: str, req: _SamplingFields, prompts: list[list[int]],
                      max_tokens: list[int], logprobs: int | None,
                      think_open: bool | None = None, tools=None,
                      resume: "Resumption | None" = None) -> list[ChoiceState]:
        """n choices per prompt, index = prompt * n + i, seed + i for choice i.

        think_open None: no reasoning split (completions); else whether the prompt opened it.
        tools: the chat request's tools.ToolPlan, whose parser reads calls out of the text.
        resume: the request's resume_registry.Resumption: the key each sequence is kept
        under on the worker, and whether to ask the worker for it first (the client chose
        the id, so this may be a resume after the API that ran it died).
        """
        # checked once: a bad schema is a 400; a forced tool call is a constraint too
        states, constraint = [], forced_constraint(tools, constraint_of(req))
        for p, (ids, budget) in enumerate(zip(prompts, max_tokens)):
            for i in range(req.n):
                index = p * req.n + i
                params = self.sampling_params(req, logprobs, ids, i, constraint)
                gen = GenerationRequest(f"{response_id}-{index}", ids, params, budget,
                                        resume.resume_key(index) if resume else "",
                                        bool(resume and resume.client_given))
                parser = None
                if think_open is not None and self.bundle.reasoning:
                    parser = ReasoningParser(in_reasoning=think_open)
                states.append(ChoiceState(index, self.bundle.tokenizer, gen, req.stop_strings(),
                                          parser, tools.parser() if tools else None))
        return states

    def think_open(self, prompt: str) -> bool:
        return self.bundle.reasoning and prompt_opens_think(prompt)


class RequestRun:
    """The choices of one request, with metrics and access-log bookkeeping as tokens come."""

    def __init__(self, ctx: ServingContext, record: AccessRecord, states: list[ChoiceState],
                 n: int):
        self.ctx, self.record, self.states, self.n = ctx, record, states, n
        self.prompt_tokens = sum(len(s.request.prompt_token_ids) for s in states[::n])
        record.prompt_tokens = self.prompt_tokens
        self.finish_reasons: dict[int, str] = {}
        self._last_token_s: dict[int, float] = {}  # choice index -> perf_counter of its last

    def _on_token(self, index: int) -> None:
        metrics, now = self.ctx.metrics, time.perf_counter()
        last = self._last_token_s.get(index)
        if last is None:
            metrics.observe_ttft(now - self.record.start_s)
            self.record.mark_first_token()
        else:
            metrics.observe_tpot(now - last)
        self._last_token_s[index] = now
        self.record.output_tokens += 1

    def _on_finish(self, update: ChoiceUpdate) -> None:
        state = self.states[update.index]
        self.finish_reasons[update.index] = update.finish_reason
        self.record.finish = ",".join(sorted(set(self.finish_reasons.values())))
        prompt = len(state.request.prompt_token_ids) if update.index % self.n == 0 else 0
        e2e_s = time.perf_counter() - self.record.start_s
        self.ctx.metrics.observe_request(prompt, state.num_tokens, e2e_s, update.finish_reason)

    async def updates(self) -> AsyncIterator[ChoiceUpdate]:
        stream = run_choices(self.ctx.generator, self.states)
        try:
            async for update in stream:
                if update.new_tokens:
                    self._on_token(update.index)
                if update.finish_reason is not None:
                    self._on_finish(update)
                yield update
        except (asyncio.CancelledError, GeneratorExit):
            self.record.finish = "disconnect"
            raise
        except Exception:
            self.record.finish = "error"
            raise
        finally:
            await stream.aclose()

    def usage(self) -> Usage:
        completion = sum(s.num_tokens for s in self.states)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                     total_tokens=self.prompt_tokens + completion)


async def response_events(run: RequestRun, stream: bool,
                          shape_events: Callable[[list[ChoiceUpdate], AsyncIterator[ChoiceUpdate]],
                                                 AsyncIterator[str]],
                          shape_body: Callable[[list[ChoiceUpdate]], BaseModel]
                          ) -> AsyncIterator[str]:
    """What a request's ResumableRun stores (master/resume.py): for a stream, the SSE events
    shape_events makes of the first update and the rest, then [DONE]; else the JSON body of
    every update. A failure before the first event (or of a non-streaming request) is an
    APIError, whose status the response gets; a later one is an error event in the stream."""
    updates = run.updates()
    try:
        first = await anext(updates)
        rest = [] if stream else [u async for u in updates]
    except Exception as e:
        await updates.aclose()
        raise to_api_error(e) from None
    if not stream:
        yield shape_body([first, *rest]).model_dump_json()
        return
    async for event in with_done(shape_events([first], updates), updates):
        yield event


def json_response(body: BaseModel) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")
