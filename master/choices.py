"""One choice's token stream turned into text: detokenize, stop strings, reasoning, logprobs.

`run_choices` drives the n choices of a request concurrently and yields their updates as they
come; closing it (client gone) cancels every choice, which closes its generator and so frees
the sequence on both stages.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator

from master.generation import GenerationRequest, Generator, TokenEvent
from master.reasoning import ReasoningParser
from master.stop import StopChecker
from master.tokenizer import Tokenizer
from master.tool_parser import ToolCallDelta

log = logging.getLogger("duet.master")


@dataclass
class TokenLogprob:
    """A sampled token's logprob and its alternatives, as token ids."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    text_offset: int  # characters of output text before this token


@dataclass
class ChoiceUpdate:
    """What one token (or the end) added to a choice."""

    index: int
    new_tokens: int = 0  # 1 when a sampled token made this update, 0 for the closing one
    content: str = ""
    reasoning: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None

    def is_empty(self) -> bool:
        return not (self.content or self.reasoning or self.logprobs or self.tool_calls
                    or self.finish_reason)


class ChoiceState:
    """Per-choice text state; feed it TokenEvents, get ChoiceUpdates."""

    def __init__(self, index: int, tokenizer: Tokenizer, request: GenerationRequest,
                 stops: list[str], reasoning: ReasoningParser | None, tools=None):
        self.index = index
        self._tools = tools  # tool_parser's ToolCallParser / ForcedToolParser, or None
        self.request = request
        self._detok = tokenizer.detokenizer(request.prompt_token_ids)
        self._stop = StopChecker(stops)
        self._reasoning = reasoning
        self._stop_ids = set(request.params.stop_token_ids)
        self._want_logprobs = request.params.logprobs is not None
        self.num_tokens = 0
        self.text_len = 0  # characters decoded so far (for text_offset)

    def on_token(self, ev: TokenEvent) -> ChoiceUpdate:
        self.num_tokens += 1
        update = ChoiceUpdate(self.index, new_tokens=1)
        if self._want_logprobs and ev.logprob is not None:
            update.logprobs.append(
                TokenLogprob(ev.token_id, ev.logprob, ev.top_logprobs, self.text_len))
        eos = ev.finish_reason == "stop" and ev.token_id in self._stop_ids
        text = "" if eos else self._detok.step(ev.token_id)
        finish = ev.finish_reason  # the scheduler decides; stop strings may end it sooner
        if finish is not None:
            text += self._detok.flush()
        self.text_len += len(text)
        self._emit(update, self._stop.feed(text))
        if self._stop.stopped is not None:
            finish = "stop"
        if finish is not None:
            self._finish(update, finish)
        return update

    def end_without_reason(self) -> ChoiceUpdate:
        """The generator ended without a finish_reason: treat what we have as complete."""
        update = ChoiceUpdate(self.index)
        self._emit(update, self._stop.feed(self._detok.flush()))
        reason = "length" if self.num_tokens >= self.request.max_tokens else "stop"
        self._finish(update, reason)
        return update

    def _finish(self, update: ChoiceUpdate, reason: str) -> None:
        self._emit(update, self._stop.flush())
        if self._reasoning is not None:
            reasoning, content = self._reasoning.flush()
            update.reasoning += reasoning
            self._content(update, content)
        if self._tools is not None:
            content, calls = self._tools.finish()
            update.content += content
            update.tool_calls += calls
            if self._tools.called and reason == "stop":
                reason = "tool_calls"
        update.finish_reason = reason

    def _emit(self, update: ChoiceUpdate, text: str) -> None:
        if self._reasoning is None:
            self._content(update, text)
            return
        reasoning, content = self._reasoning.feed(text)
        update.reasoning += reasoning
        self._content(update, content)

    def _content(self, update: ChoiceUpdate, text: str) -> None:
        """Content text, with any tool calls in it taken out."""
        if self._tools is None:
            update.content += text
            return
        content, calls = self._tools.feed(text)
        update.content += content
        update.tool_calls += calls


async def _choice_updates(generator: Generator, state: ChoiceState) -> AsyncIterator[ChoiceUpdate]:
    """One choice's updates, the last one with its finish_reason; closes its generation."""
    stream = generator.generate(state.request)
    try:
        async for ev in stream:
            update = state.on_token(ev)
            yield update
            if update.finish_reason is not None:
                return
        yield state.end_without_reason()
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            try:
                await aclose()  # frees the sequence when we stop early (stop string, cancel)
            except Exception:
                log.exception("closing the generation of %s failed", state.request.request_id)


async def _pump(updates: AsyncIterator[ChoiceUpdate], queue: asyncio.Queue) -> None:
    try:
        async for update in updates:
            queue.put_nowait((update, None))
    except Exception as e:  # handed to the consumer, which decides what the client sees
        queue.put_nowait((None, e))


def run_choices(generator: Generator, states: list[ChoiceState]) -> AsyncIterator[ChoiceUpdate]:
    """Updates of all choices as they come; raises the first choice's failure."""
    if len(states) == 1:  # the common case: its own updates, no tasks, no queue, no wrapper
        return _choice_updates(generator, states[0])
    return _all_choices(generator, states)


async def _all_choices(generator: Generator,
                       states: list[ChoiceState]) -> AsyncIterator[ChoiceUpdate]:
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(_choice_updates(generator, s), queue))
             for s in states]
    try:
        finished = 0
        while finished < len(states):
            update, error = await queue.get()
            if error is not None:
                raise error
            finished += update.finish_reason is not None
            yield update
    finally:
        for task in tasks:
            task.cancel()  # sync on purpose: this may run inside a cancelled scope
