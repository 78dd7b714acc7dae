"""A conversation carried as a model state: each turn costs only its own new tokens.

Each turn starts from the state after everything said so far (the opening, then every
exchange, in the chat format's words), so a long chat does not get slower. The text is kept
beside the state (`history`), so the two can be saved together and shown again.

In think mode (the reasoning models of the RWKV-7 G series) a turn runs in two steps: the
reasoning up to `</think>`, then the answer. The carried state then keeps only what the
format expects of a past turn, the question and the answer, so it is evaluated afresh from
the state before the turn (the reasoning, often far longer, is not).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from .chat_format import (
    THINK_CLOSE,
    ChatFormat,
    assistant_record,
    opening,
    parse_turns,
    user_record,
    user_turn,
)

if TYPE_CHECKING:
    import numpy as np

    from .model import RWKV
    from .results import CompletionResult

TextCallback = Callable[[str], None]


class Conversation:
    """The conversation: its text and the model state after that text."""

    def __init__(self, model: RWKV, prompt_format: str | ChatFormat, name: str = "",
                 sampling: dict[str, Any] | None = None, system: str | None = None,
                 think: bool = False, stop: list[str] | None = None):
        self.model = model
        self.name = name
        self.format = (
            prompt_format if isinstance(prompt_format, ChatFormat)
            else ChatFormat.named(prompt_format)
        )
        self.user, self.bot = self.format.user, self.format.bot
        self.sampling = dict(sampling or {})
        self.extra_stop = list(stop or [])
        self.think = think
        self.last_thinking: str | None = None  # the reasoning of the last think-mode turn
        self.last_thinking_result: CompletionResult | None = None
        self.set_system(system)

    # ---- the opening ----

    @property
    def preamble(self) -> str:
        """The text the conversation opens with (system turn or preamble exchange)."""
        return self.opening

    def set_system(self, system: str | None) -> None:
        """Open the conversation with a system prompt (None: the preamble); starts over."""
        self.system = system if system and system.strip() else None
        self.opening = opening(self.format, self.system)
        self._opening_state = self.model.get_state(self.opening)
        self.reset()

    def reset(self) -> None:
        self.history = self.opening
        self.state = self._opening_state.copy()

    @property
    def stop(self) -> list[str]:
        return self.format.stop + self.extra_stop

    def messages(self) -> list[dict[str, str]]:
        """The conversation after its opening, as messages."""
        text = self.history
        text = text.removeprefix(self.opening)
        return parse_turns(self.format, text)

    # ---- a turn ----

    def reply(
        self,
        message: str,
        on_text: TextCallback | None = None,
        stop_event: threading.Event | None = None,
        on_thinking: TextCallback | None = None,
    ) -> CompletionResult:
        """Answer `message`; the answer streams to `on_text` (the reasoning, in think mode, to
        `on_thinking`). Returns the answer's result (`last_thinking*` hold the reasoning)."""
        self.last_thinking = None
        self.last_thinking_result = None
        if self.think:
            return self._reply_thinking(message, on_text, stop_event, on_thinking)
        prompt = user_turn(self.format, message)
        result = self.model.completion(
            prompt, init_state=self.state, stop=self.stop, stream_callback=_callback(on_text),
            stop_event=stop_event, **self.sampling,
        )
        turn_end = self.format.turn_end(result.completion)
        state, rest = self._resume(self.state, prompt, result, turn_end)
        if rest:
            state = self.model.completion(rest, init_state=state, max_tokens=0).state
        assert state is not None
        self.state = state
        self.history += prompt + turn_end
        return result

    def _reply_thinking(self, message: str, on_text: TextCallback | None,
                        stop_event: threading.Event | None,
                        on_thinking: TextCallback | None) -> CompletionResult:
        prompt = user_turn(self.format, message, think=True)
        thinking = self.model.completion(
            prompt, init_state=self.state, stop=[THINK_CLOSE],
            stream_callback=_callback(on_thinking), stop_event=stop_event, **self.sampling,
        )
        self.last_thinking_result = thinking
        self.last_thinking = thinking.completion
        if thinking.finish_reason == "cancelled":
            return thinking  # stopped while thinking: the turn is dropped, the state unchanged
        state, rest = self._resume(self.state, prompt, thinking, thinking.completion + THINK_CLOSE)
        answer = self.model.completion(
            rest, init_state=state, stop=self.stop, stream_callback=_callback(on_text),
            stop_event=stop_event, **self.sampling,
        )
        # What the format carries of this turn: the question and the answer.
        record = user_record(self.format, message)
        record += assistant_record(self.format, answer.completion)
        state = self.model.completion(record, init_state=self.state, max_tokens=0).state
        assert state is not None
        self.state = state
        self.history += record
        return answer

    def _resume(self, start: np.ndarray, prompt: str, result: CompletionResult,
                expected: str) -> tuple[np.ndarray, str]:
        """A state and the text still to evaluate from it, that together stand for `prompt`
        and then `expected` evaluated from `start`.

        The result's state already holds the prompt and the first `fed_tokens` generated
        tokens (the token that ended the completion is sampled, never fed); when their text
        begins `expected`, only the rest is new. When it does not (the tokens and the text
        disagree), everything is evaluated afresh from `start`.
        """
        fed = self.model.tokenizer.decode_bytes(result.tokens[: result.fed_tokens])
        wanted = expected.encode("utf-8")
        if result.state is not None and wanted.startswith(fed):
            try:
                return result.state, wanted[len(fed):].decode("utf-8")
            except UnicodeDecodeError:
                pass
        return start, prompt + expected


def _callback(on_text: TextCallback | None):
    return (lambda piece, _so_far: on_text(piece)) if on_text else None
