"""The token loop: one completion on one engine context.

Two parts, so that the per-sequence logic does not depend on who calls the engine:

- `Generation` holds what one sequence needs between tokens: the sampler, the incremental
  UTF-8 decoder, the stop-string matcher, the text and the counts. `step(logits)` takes the
  logits after the last fed token and returns the next token to feed, or None once the
  completion has ended (`finish_reason` says why); `take_text()` hands out the text that has
  become safe to show. It never calls the engine.
- `generate()` drives one Generation on a worker's context: the prompt (through the state
  cache), then per token one `eval` of the token `step` returned. It yields the completion in
  chunks and returns the result. A batching scheduler would drive many Generations instead,
  feeding all their tokens to the engine in one call per step.

Per generated token this costs one engine call (GIL released), sampling on the engine's logits
buffer (numpy, no Python loop over the vocabulary), an incremental UTF-8 decode and a stop
check on the few characters not yet released.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InvalidArgument
from .pool import Worker
from .results import CompletionChunk, CompletionResult, Perf, Usage
from .sampling import Sampler
from .state_cache import StateCache
from .tokenizer import IncrementalDecoder, Tokenizer


class StopMatcher:
    """Finds stop strings in text that arrives piece by piece, also across token boundaries."""

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)

    def __bool__(self) -> bool:
        return bool(self.stops)

    def find(self, text: str) -> int | None:
        """Where the earliest stop string in `text` starts, or None."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def held_back(self, text: str) -> int:
        """Length of the longest end of `text` that could still grow into a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class Generation:
    """The state of one sequence being generated (see the module docstring).

    Text is released only when no stop string can begin in it; the completion ends before
    the first stop string, at the end-of-text token, after `max_tokens` tokens, or when
    `cancel()` is called. The token that ends a completion is sampled but not fed.
    """

    def __init__(
        self,
        sampler: Sampler | None,
        decoder: IncrementalDecoder,
        eos_token: int | None,
        max_tokens: int,
        stops: Sequence[str] = (),
    ):
        self.sampler = sampler
        self.decoder = decoder
        self.eos_token = eos_token
        self.max_tokens = max_tokens
        self.stops = StopMatcher(stops)
        self._has_stops = bool(stops)
        self.tokens: list[int] = []  # sampled
        self.text = ""  # everything decoded so far
        self.finish_reason: str | None = None
        self._returned = 0  # tokens handed out to be fed
        self._released = 0  # characters of `text` safe to show
        self._taken = 0  # characters of `text` handed out by take_text()
        self._end: int | None = None  # where the completion ends, once known
        if max_tokens == 0:
            self._finish("length")
        elif sampler is None:
            raise InvalidArgument("a Generation of max_tokens > 0 needs a sampler")

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def fed_tokens(self) -> int:
        """Tokens returned by step() (the caller feeds each before the next step)."""
        return self._returned

    @property
    def completion(self) -> str:
        """The text released so far (all of it once done)."""
        return self.text[: self._released]

    def step(self, logits: np.ndarray) -> int | None:
        """Sample from `logits` (may be modified); the token to feed next, or None at the end."""
        if self.done:
            return None
        token = self.sampler.sample(logits)  # type: ignore[union-attr]
        self.tokens.append(token)
        if token == self.eos_token:
            self._finish("eos")
            return None
        self.sampler.accept(token)  # type: ignore[union-attr]
        piece = self.decoder.feed(token)
        if piece:
            self.text += piece
            if self._has_stops:
                window = self.text[self._released :]
                found = self.stops.find(window)
                if found is not None:
                    self._end = self._released + found
                    self._finish("stop")
                    return None
                # Never less than before: what was held back is at most the unreleased window.
                self._released = len(self.text) - self.stops.held_back(window)
            else:
                self._released = len(self.text)
        if len(self.tokens) == self.max_tokens:
            self._finish("length")  # the last token is not fed: nothing would read its logits
            return None
        self._returned += 1
        return token

    def cancel(self) -> None:
        """End the completion now, with what was generated so far."""
        if not self.done:
            self._finish("cancelled")

    def take_text(self) -> str:
        """The text released since the last call ("" if none)."""
        piece = self.text[self._taken : self._released]
        self._taken = self._released
        return piece

    def _finish(self, reason: str) -> None:
        if self._end is None:
            self.text += self.decoder.flush()
            self._end = len(self.text)
            if self._has_stops:
                # Text held back for a stop string that never completed (a flushed replacement
                # character can only end one, so the search covers the unreleased tail only).
                found = self.stops.find(self.text[self._released :])
                if found is not None:
                    self._end = self._released + found
                    reason = "stop"
        self.text = self.text[: self._end]
        self._released = self._end
        self.finish_reason = reason


@dataclass
class Request:
    """One checked completion request (see RWKV.completion for the options)."""

    prompt: str
    tokens: list[int]
    max_tokens: int
    sampler: Sampler | None
    stops: list[str]
    init_state: np.ndarray | None = None
    should_stop: Callable[[], bool] | None = None
    pin: bool = False  # keep the prompt's cache entry from eviction
    # Whether anyone reads the chunks: without a reader generate() makes none (a chunk holds
    # the completion so far, a copy per piece).
    emit_chunks: bool = True
    prepare_seconds: float = 0.0  # spent tokenizing: prompt time, as the evaluation is


def evaluate_prompt(
    worker: Worker, request: Request, cache: StateCache, batch_size: int
) -> int:
    """Leave the state and logits after the prompt in the worker's buffers; returns how many
    prompt tokens came from the cache (0 with an init_state, which bypasses the cache)."""
    context, state, logits = worker.context, worker.state, worker.logits
    tokens = request.tokens
    n_cached = 0
    state_in: np.ndarray | None = None
    if request.init_state is not None:
        state[:] = request.init_state
        state_in = state
    elif cache.enabled:
        entry = cache.lookup(tokens)
        if entry is not None and entry.logits is None:
            entry = cache.lookup(tokens, max_length=len(tokens) - 1)
        if entry is not None:
            n_cached = entry.n_tokens
            state[:] = entry.state
            state_in = state
            if n_cached == len(tokens):
                logits[:] = entry.logits
    remaining = tokens[n_cached:]
    if len(remaining) == 1:
        context.eval(remaining[0], state_in, state, logits)
    elif remaining:
        context.eval_sequence_in_chunks(remaining, batch_size, state_in, state, logits)
    if request.init_state is None and cache.enabled and (remaining or request.pin):
        cache.put(tokens, state, logits, pin=request.pin)
    return n_cached


def generate(
    worker: Worker,
    request: Request,
    tokenizer: Tokenizer,
    cache: StateCache,
    batch_size: int,
) -> Generator[CompletionChunk, None, CompletionResult]:
    """Run `request` on `worker`: yields the completion in chunks (text never split inside a
    character), returns the result. Closing the generator early ends the work there."""
    # Time waiting for a worker is not the model's time; tokenizing the prompt is.
    started = time.perf_counter() - request.prepare_seconds
    n_cached = evaluate_prompt(worker, request, cache, batch_size)
    prompt_done = time.perf_counter()
    n_prompt = len(request.tokens)

    generation = Generation(
        request.sampler, tokenizer.decoder(), tokenizer.eos_token, request.max_tokens,
        request.stops,
    )
    state, logits = worker.state, worker.logits
    # The context stays open while a completion holds its worker: look its pointer up once.
    library, pointer = worker.context.library, worker.context.pointer
    should_stop, emit_chunks = request.should_stop, request.emit_chunks
    step = generation.step
    while not generation.done:
        if should_stop is not None and should_stop():
            generation.cancel()
            break
        token = step(logits)
        if emit_chunks:
            piece = generation.take_text()
            if piece:
                usage = Usage.of(n_prompt, len(generation.tokens), n_cached)
                yield CompletionChunk(piece, generation.completion, usage)
        if token is None:
            break
        library.eval(pointer, token, state, state, logits)
    piece = generation.take_text()  # all of it without a reader, else what the end released
    if piece and emit_chunks:
        usage = Usage.of(n_prompt, len(generation.tokens), n_cached)
        yield CompletionChunk(piece, generation.completion, usage)

    assert generation.finish_reason is not None
    fed = generation.fed_tokens
    if request.init_state is None and cache.enabled and fed > 0:
        cache.put(request.tokens + generation.tokens[:fed], state, logits)
    finished = time.perf_counter()
    usage = Usage.of(n_prompt, len(generation.tokens), n_cached)
    return CompletionResult(
        completion=generation.completion,
        prompt=request.prompt,
        usage=usage,
        perf=Perf.of(usage, (prompt_done - started) * 1000.0, (finished - prompt_done) * 1000.0),
        finish_reason=generation.finish_reason,
        tokens=generation.tokens,
        state=state.copy(),
        fed_tokens=fed,
    )
