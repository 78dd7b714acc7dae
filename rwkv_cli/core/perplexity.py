"""Perplexity of a model on a text, as llama.cpp's perplexity tool defines it, so figures
compare across tools; and, against a reference model (another file of the same model), the
mean KL divergence and the top-1 agreement of their next-token distributions.

The definition: the text's tokens are cut into chunks of `ctx` tokens (a remainder shorter than
a chunk is left out); each chunk runs from a fresh state; the logits at positions ctx/2 ..
ctx-2 of the chunk score the tokens that follow them (the first half only gives the model
context). The perplexity is exp of the mean negative log-likelihood over every scored token
of every chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InvalidArgument

# progress(chunks done, chunks in all, perplexity so far)
PerplexityProgress = Callable[[int, int, float], None]


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    nll_stderr: float  # standard error of that mean
    tokens: int  # tokens of the text
    chunks: int
    ctx: int
    scored_tokens: int
    seconds: float
    kl_divergence: float | None = None  # mean KL(reference || model), nats per scored token
    top1_agreement: float | None = None  # share of scored tokens where both argmaxes agree
    reference_perplexity: float | None = None

    def to_dict(self) -> dict:
        out = {
            "perplexity": self.perplexity,
            "nll": self.nll,
            "nllStderr": self.nll_stderr,
            "tokens": self.tokens,
            "chunks": self.chunks,
            "ctx": self.ctx,
            "scoredTokens": self.scored_tokens,
            "seconds": round(self.seconds, 3),
            "tokensPerSecond": round(self.chunks * self.ctx / self.seconds, 1) if self.seconds else None,
        }
        if self.kl_divergence is not None:
            out.update(klDivergence=self.kl_divergence, top1Agreement=self.top1_agreement,
                       referencePerplexity=self.reference_perplexity)
        return out


def chunk_count(n_tokens: int, ctx: int) -> int:
    if ctx < 2:
        raise InvalidArgument(f"ctx must be at least 2, got {ctx}")
    chunks = n_tokens // ctx
    if chunks == 0:
        raise InvalidArgument(f"the text has {n_tokens} tokens, fewer than one chunk of ctx={ctx}")
    return chunks


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of float32 logits -> float64 log-probabilities."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x


class Accumulator:
    """Running sums over scored tokens (nll, and against a reference: KL and agreement)."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.ref_nll: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.agree = 0
        self.count = 0

    def add(self, logits: np.ndarray, targets: np.ndarray, reference: np.ndarray | None = None) -> None:
        logp = log_softmax(logits)
        rows = np.arange(len(targets))
        self.nll.append(-logp[rows, targets])
        self.count += len(targets)
        if reference is not None:
            ref_logp = log_softmax(reference)
            self.ref_nll.append(-ref_logp[rows, targets])
            self.kl.append((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1))
            self.agree += int((reference.argmax(axis=-1) == logits.argmax(axis=-1)).sum())

    @property
    def perplexity(self) -> float:
        return math.exp(float(np.concatenate(self.nll).mean())) if self.nll else float("nan")

    def result(self, tokens: int, chunks: int, ctx: int, seconds: float) -> PerplexityResult:
        nll = np.concatenate(self.nll)
        stderr = float(nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
        out = PerplexityResult(
            perplexity=math.exp(float(nll.mean())), nll=float(nll.mean()), nll_stderr=stderr,
            tokens=tokens, chunks=chunks, ctx=ctx, scored_tokens=self.count, seconds=seconds,
        )
        if self.kl:
            out.kl_divergence = float(np.concatenate(self.kl).mean())
            out.top1_agreement = self.agree / self.count
            out.reference_perplexity = math.exp(float(np.concatenate(self.ref_nll).mean()))
        return out
