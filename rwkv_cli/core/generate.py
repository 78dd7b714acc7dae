"""The per-sequence token logic: `Generation`, and the checked `Request` it serves.

- `Generation` holds what one sequence needs between tokens: the sampler, the incremental
  UTF-8 decoder, the stop-string matcher, the text and the counts. `step(logits)` takes the
  logits after the last fed token and returns the next token to feed, or None once the
  completion has ended (`finish_reason` says why); `take_text()` hands out the text that has
  become safe to show. It never calls the engine: the scheduler (scheduler.py) drives many
  Generations, feeding all their tokens to the engine in one call per step.

Per generated token this costs sampling on the sequence's logits buffer (numpy, no Python
loop over the vocabulary), an incremental UTF-8 decode and a stop check on the few characters
not yet released.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InvalidArgument
from .sampling import Sampler
from .tokenizer import IncrementalDecoder


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
    # Checked before each token: events by the engine thread, should_stop (user code) by the
    # caller's thread.
    stop_events: tuple[threading.Event, ...] = ()
    should_stop: Callable[[], bool] | None = None
    pin: bool = False  # keep the prompt's cache entry from eviction
    # Whether anyone reads the chunks: without a reader none are made (a chunk holds the
    # completion so far, a copy per piece).
    emit_chunks: bool = True
    prepare_seconds: float = 0.0  # spent tokenizing: prompt time, as the evaluation is
