"""What a completion returns: token counts (`Usage`), timings (`Perf`), the result, and the
chunks of a streamed completion. Plain dataclasses; the camelCase names of the original
Node.js library read the same fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

FINISH_REASONS = ("length", "stop", "eos", "cancelled")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _CamelCaseFields:
    """Fields are snake_case; the original library's camelCase names read the same values."""

    def __getattr__(self, name: str) -> Any:
        aliases = type(self)._aliases()
        if name in aliases:
            return getattr(self, aliases[name])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {_camel(f.name): f.name for f in fields(cls)}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {_camel(f.name): getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass
class Usage(_CamelCaseFields):
    """Token counts: prompt tokens include the cached ones, which are also counted apart."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_cached: int = 0

    @classmethod
    def of(cls, n_prompt: int, n_completion: int, n_cached: int) -> Usage:
        return cls(n_prompt, n_completion, n_prompt + n_completion, n_cached)


@dataclass
class Perf(_CamelCaseFields):
    """Times in milliseconds and rates per second.

    "prompt" figures count only the prompt tokens evaluated (cached ones excluded); "full
    prompt" figures count every prompt token over the same time.
    """

    prompt_time: float = 0.0
    completion_time: float = 0.0
    total_time: float = 0.0
    time_per_prompt: float = 0.0
    time_per_completion: float = 0.0
    time_per_full_prompt: float = 0.0
    prompt_per_second: float = 0.0
    completion_per_second: float = 0.0
    full_prompt_per_second: float = 0.0

    @classmethod
    def of(cls, usage: Usage, prompt_ms: float, completion_ms: float) -> Perf:
        """The figures for `usage` processed in the given times."""
        n_prompt, n_completion = usage.prompt_tokens, usage.completion_tokens
        n_evaluated = n_prompt - usage.prompt_tokens_cached

        def per_token(ms: float, n: int) -> float:
            return ms / n if n else 0.0

        def per_second(n: int, ms: float) -> float:
            return n * 1000.0 / ms if n and ms else 0.0

        return cls(
            prompt_time=prompt_ms,
            completion_time=completion_ms,
            total_time=prompt_ms + completion_ms,
            time_per_prompt=per_token(prompt_ms, n_evaluated),
            time_per_completion=per_token(completion_ms, n_completion),
            time_per_full_prompt=per_token(prompt_ms, n_prompt),
            prompt_per_second=per_second(n_evaluated, prompt_ms),
            completion_per_second=per_second(n_completion, completion_ms),
            full_prompt_per_second=per_second(n_prompt, prompt_ms),
        )


@dataclass
class CompletionResult:
    """What `completion` returns.

    `finish_reason`: "length" (max_tokens), "stop" (a stop string), "eos" (the end-of-text
    token) or "cancelled" (stop_event / should_stop, or a closed stream). `tokens` are the
    sampled token ids. `state` is a copy of the model state after the prompt and the first
    `fed_tokens` of `tokens`: the token that ends a completion (by length, stop string or end
    of text) is sampled but never fed to the model, so `fed_tokens` is len(tokens) - 1 then,
    and len(tokens) for a cancelled one.
    """

    completion: str
    prompt: str
    usage: Usage
    perf: Perf
    finish_reason: str = "length"
    tokens: list[int] = field(default_factory=list, repr=False)
    state: np.ndarray | None = field(default=None, repr=False)
    fed_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "completion": self.completion,
            "prompt": self.prompt,
            "finishReason": self.finish_reason,
            "usage": self.usage.to_dict(),
            "perf": self.perf.to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)


@dataclass
class CompletionChunk:
    """One piece of a streamed completion.

    `text` is the new piece (never half a character), `completion` everything so far, `usage`
    the counts so far. The last chunk of a stream has `text == ""`, its `finish_reason` and
    the whole `result`; the pieces before it concatenate to `result.completion`.
    """

    text: str
    completion: str
    usage: Usage
    finish_reason: str | None = None
    result: CompletionResult | None = field(default=None, repr=False)
