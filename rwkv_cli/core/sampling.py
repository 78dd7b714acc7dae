"""Token sampling on numpy views of the logits: greedy, temperature, top-k, top-p, penalties.

Everything here works on whole arrays; nothing loops over the vocabulary in Python. With a
65536-token vocabulary a full sort costs ~1.4 ms and a full cumulative sum ~0.2 ms, more than
the whole per-token budget, so:
- top-k narrows the vocabulary with a threshold test (one vectorised compare), widening it
  until it holds k tokens, and selects among those only;
- top-p sorts the few likely tokens when they hold the nucleus (trained models); on flat
  distributions it draws from the whole distribution and accepts a token iff the tokens more
  probable than it hold less than top_p of the mass (one masked dot product per try);
- a draw from the whole distribution finds the block of 256 ids holding it from block sums,
  then searches inside that block only.
Temperature divides the logits before top-k/top-p (the usual definition: it also changes which
tokens the nucleus holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument

_BLOCK = 256
# Top-p: tokens at least this probable relative to the best one are the first candidates,
# sorted outright when they are at most _SMALL_NUCLEUS and hold top_p of the mass.
_CANDIDATE_WEIGHT = 1e-3
_SMALL_NUCLEUS = 1024
# Draws from the whole distribution tried before the nucleus is built explicitly.
_MAX_REJECTIONS = 200


@dataclass(frozen=True)
class SamplingParams:
    """The knobs of one completion; `check()` raises InvalidArgument naming the bad one."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def check(self) -> SamplingParams:
        if not _is_real(self.temperature) or self.temperature < 0:
            raise InvalidArgument(
                f"temperature must be a number >= 0 (0 is greedy), got {self.temperature!r}",
                "temperature",
            )
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p!r}", "top_p")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)):
            # InvalidArgument (a ValueError), not TypeError: every bad option is one for callers.
            raise InvalidArgument(
                f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}", "top_k"
            )
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 disables it), got {self.top_k!r}", "top_k")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value):
                raise InvalidArgument(f"{name} must be a finite number, got {value!r}", name)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def _is_real(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


class Sampler:
    """Picks tokens for one completion; keeps the token counts the penalties need.

    `sample(logits)` may modify `logits` in place (penalties, scaling): pass the engine's
    output buffer, which the next evaluation overwrites anyway.
    """

    def __init__(self, n_vocab: int, params: SamplingParams, seed: int | None = None):
        self.n_vocab = int(n_vocab)
        self.params = params.check()
        self.rng = np.random.default_rng(seed)
        self._work = np.empty(self.n_vocab, dtype=np.float32)
        # Penalties: the distinct generated ids in order of first use, with their counts,
        # grown in place so that applying them is two short vector operations per token.
        self._slot: dict[int, int] = {}
        self._penalty_ids = np.empty(64, dtype=np.int64)
        self._penalty_counts = np.zeros(64, dtype=np.float32)
        self._use_penalties = params.presence_penalty != 0 or params.frequency_penalty != 0

    def accept(self, token: int) -> None:
        """Record a generated token (for the presence and frequency penalties)."""
        if not self._use_penalties:
            return
        slot = self._slot.get(token)
        if slot is None:
            slot = len(self._slot)
            if slot == self._penalty_ids.shape[0]:
                self._penalty_ids = np.concatenate([self._penalty_ids, np.empty_like(self._penalty_ids)])
                self._penalty_counts = np.concatenate(
                    [self._penalty_counts, np.zeros_like(self._penalty_counts)]
                )
            self._slot[token] = slot
            self._penalty_ids[slot] = token
        self._penalty_counts[slot] += 1

    def apply_penalties(self, logits: np.ndarray) -> None:
        n = len(self._slot)
        if n == 0:
            return
        p = self.params
        penalty = self._penalty_counts[:n] * np.float32(p.frequency_penalty)
        penalty += np.float32(p.presence_penalty)
        logits[self._penalty_ids[:n]] -= penalty

    def sample(self, logits: np.ndarray) -> int:
        if logits.shape[0] != self.n_vocab:
            logits = logits[: self.n_vocab]
        self.apply_penalties(logits)
        p = self.params
        if p.greedy:
            return int(logits.argmax())
        if p.top_k > 0 and p.top_k < self.n_vocab:
            return self._sample_top_k(logits)
        return self._sample_full(logits)

    # ---- internals ----

    def _draw(self, weights: np.ndarray) -> int:
        """Index drawn in proportion to `weights` (a short array)."""
        cumulative = np.cumsum(weights, dtype=np.float64)
        point = self.rng.random() * cumulative[-1]
        index = int(np.searchsorted(cumulative, point, side="right"))
        return min(index, len(weights) - 1)

    def _nucleus(self, ids: np.ndarray, weights: np.ndarray, total: float) -> int:
        """Sample among `ids` (holding the whole nucleus) restricted to top_p of `total`."""
        order = np.argsort(-weights, kind="stable")
        sorted_weights = weights[order]
        cumulative = np.cumsum(sorted_weights, dtype=np.float64)
        cut = int(np.searchsorted(cumulative, self.params.top_p * total, side="left"))
        cut = min(cut, len(sorted_weights) - 1)
        # Keep every token as probable as the one that crosses top_p (ties stay together).
        keep = sorted_weights >= sorted_weights[cut]
        kept = order[keep]
        return int(ids[kept[self._draw(weights[kept])]])

    def _sample_full(self, logits: np.ndarray) -> int:
        p = self.params
        work = self._work[: logits.shape[0]]
        peak = float(logits.max())
        np.subtract(logits, peak, out=work)
        if p.temperature != 1:
            np.multiply(work, 1.0 / p.temperature, out=work)
        np.exp(work, out=work)  # the most likely token has weight 1
        blocked = self._blocked(work)
        total = blocked.total
        if p.top_p >= 1:
            return blocked.draw()
        target = p.top_p * total
        # Trained models put most of the mass on a few tokens: sort just those when they hold
        # top_p of it (every token outside is less probable than every token inside).
        likely = work >= _CANDIDATE_WEIGHT
        # Counting first: listing ~65536 indices of a flat distribution costs ~50 µs.
        if np.count_nonzero(likely) <= _SMALL_NUCLEUS:
            ids = np.flatnonzero(likely)
            weights = work[ids]
            if float(weights.sum(dtype=np.float64)) >= target:
                return self._nucleus(ids, weights, total)
        # Otherwise (flat distributions, e.g. random weights) draw from the whole distribution
        # until the token lies in the nucleus: a token belongs iff the tokens strictly more
        # probable than it hold less than top_p of the mass. Each try costs one masked dot
        # product; at least top_p of the draws are accepted.
        for _ in range(_MAX_REJECTIONS):
            token = blocked.draw()
            if float(np.dot(work, work > work[token])) < target:
                return token
        ids = np.arange(work.shape[0])
        return self._nucleus(ids, work.copy(), total)

    def _blocked(self, weights: np.ndarray) -> _BlockedDistribution:
        return _BlockedDistribution(weights, self.rng)

    def _sample_top_k(self, logits: np.ndarray) -> int:
        p = self.params
        k = p.top_k
        peak = float(logits.max())
        # Widen a window under the peak until it holds at least k tokens; then select k there.
        window = 0.25
        while True:
            ids = np.flatnonzero(logits >= peak - window)
            if ids.shape[0] >= k or window > 1e6 or not math.isfinite(peak):
                break
            window *= 2.0
        # Selecting the k smallest of the negated logits: numpy's introselect degrades badly
        # (~9 ms) on the k largest of an array with many ties, not on this form (~0.3 ms).
        if ids.shape[0] < k:
            ids = np.argpartition(-logits, k - 1)[:k]
        elif ids.shape[0] > k:
            ids = ids[np.argpartition(-logits[ids], k - 1)[:k]]
        weights = np.exp((logits[ids].astype(np.float64) - peak) / p.temperature)
        total = float(weights.sum())
        if p.top_p < 1:
            return self._nucleus(ids, weights, total)
        return int(ids[self._draw(weights)])


def sample_logits(
    logits: np.ndarray,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> int:
    """One-off sampling (no penalties), for callers that hold a logits array."""
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    return Sampler(logits.shape[0], params, seed).sample(np.array(logits, dtype=np.float32))


class _BlockedDistribution:
    """Draws ids in proportion to a long weight vector: block sums once, then per draw a
    search over the block sums and one cumulative sum inside the chosen block."""

    def __init__(self, weights: np.ndarray, rng: np.random.Generator):
        self.weights = weights
        self.rng = rng
        n = weights.shape[0]
        whole = n - n % _BLOCK
        # float32 sums of 256 weights in (0, 1] lose nothing that matters; float64 reductions
        # of the whole vector cost ~3x more.
        sums = weights[:whole].reshape(-1, _BLOCK).sum(axis=1)
        if whole < n:
            sums = np.append(sums, weights[whole:].sum())
        self.cumulative = np.cumsum(sums, dtype=np.float64)
        self.total = float(self.cumulative[-1])

    def draw(self) -> int:
        cumulative = self.cumulative
        point = self.rng.random() * cumulative[-1]
        block = min(int(np.searchsorted(cumulative, point, side="right")), cumulative.shape[0] - 1)
        start = block * _BLOCK
        inside = self.weights[start : start + _BLOCK]
        local = np.cumsum(inside, dtype=np.float64)
        offset = point - (cumulative[block - 1] if block > 0 else 0.0)
        return start + min(int(np.searchsorted(local, offset, side="right")), inside.shape[0] - 1)
