"""Sampling: greedy, seeded draws, the distributions of temperature / top-k / top-p, penalties."""

from __future__ import annotations

import numpy as np
import pytest

from rwkv_cli.core.sampling import Sampler, SamplingParams, sample_logits

N_VOCAB = 65536


def big_logits(peaks: dict, floor: float = -30.0) -> np.ndarray:
    """A 65536-token logits vector: `floor` everywhere except the given id -> logit peaks."""
    logits = np.full(N_VOCAB, floor, dtype=np.float32)
    for token, value in peaks.items():
        logits[token] = value
    return logits


def draws(params: SamplingParams, logits: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    sampler = Sampler(logits.shape[0], params, seed)
    return np.array([sampler.sample(logits.copy()) for _ in range(n)])


def test_greedy_picks_the_largest_logit():
    logits = big_logits({123: 2.0, 40000: 3.5, 65535: 3.4})
    assert Sampler(N_VOCAB, SamplingParams(temperature=0)).sample(logits) == 40000


def test_top_k_one_is_greedy_at_any_temperature():
    logits = big_logits({7: 1.0, 9: 1.2})
    assert set(draws(SamplingParams(temperature=2.0, top_k=1), logits, 50)) == {9}


def test_same_seed_same_tokens_other_seed_other_tokens():
    rng = np.random.default_rng(5)
    logits = (4 * rng.normal(size=N_VOCAB)).astype(np.float32)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    first = draws(params, logits, 40, seed=42)
    again = draws(params, logits, 40, seed=42)
    other = draws(params, logits, 40, seed=43)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_full_distribution_matches_softmax():
    # Four likely tokens spread over different 256-blocks (and the last, partial position).
    peaks = {3: 1.0, 300: 0.0, 40000: -1.0, 65535: 0.5}
    logits = big_logits(peaks)
    samples = draws(SamplingParams(temperature=1.0), logits, 4000, seed=1)
    weights = np.exp(np.array(list(peaks.values())))
    expected = weights / weights.sum()
    for (token, _), p in zip(peaks.items(), expected):
        observed = float(np.mean(samples == token))
        assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / len(samples)) + 1e-3, token


def test_temperature_sharpens_and_flattens():
    logits = big_logits({10: 1.0, 20: 0.0}, floor=-1000.0)
    cold = np.mean(draws(SamplingParams(temperature=0.25), logits, 1000) == 10)
    hot = np.mean(draws(SamplingParams(temperature=4.0), logits, 1000) == 10)
    # p(10) = 1 / (1 + e^{-1/T}): 0.98 at T=0.25, 0.56 at T=4.
    assert cold > 0.95
    assert 0.45 < hot < 0.67


def test_top_k_keeps_exactly_the_k_best():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=N_VOCAB).astype(np.float32)
    best = set(np.argsort(-logits)[:5].tolist())
    samples = set(draws(SamplingParams(temperature=5.0, top_k=5), logits, 500).tolist())
    assert samples == best


def test_top_k_with_a_peaked_distribution_still_finds_k_candidates():
    logits = big_logits({1: 50.0, 2: 0.0, 3: -1.0})
    samples = set(draws(SamplingParams(temperature=100.0, top_k=3), logits, 600).tolist())
    assert samples == {1, 2, 3}


@pytest.mark.parametrize(
    "top_p, allowed",
    [(0.45, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, allowed):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).astype(np.float32)
    samples = set(draws(SamplingParams(temperature=1.0, top_p=top_p), logits, 800).tolist())
    assert samples == allowed


def test_top_p_over_a_large_flat_tail():
    # Two likely tokens hold ~70% of the mass; the rest is spread over 65534 tokens.
    tail = np.log(0.3 / (N_VOCAB - 2))
    logits = np.full(N_VOCAB, tail, dtype=np.float32)
    logits[100], logits[200] = np.log(0.4), np.log(0.3)
    samples = draws(SamplingParams(temperature=1.0, top_p=0.6), logits, 300)
    assert set(samples.tolist()) == {100, 200}
    wide = draws(SamplingParams(temperature=1.0, top_p=0.9), logits, 300)
    assert len(set(wide.tolist()) - {100, 200}) > 10


def test_top_p_and_top_k_together():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    logits = np.log(probs).astype(np.float32)
    samples = set(draws(SamplingParams(top_k=3, top_p=0.5), logits, 500).tolist())
    # top_k=3 renormalises to 4/9, 3/9, 2/9; half the mass needs the two best.
    assert samples == {0, 1}


def test_presence_penalty_applies_once_per_seen_token():
    sampler = Sampler(3, SamplingParams(temperature=0, presence_penalty=1.0))
    logits = np.array([5.0, 4.5, 0.0], dtype=np.float32)
    assert sampler.sample(logits.copy()) == 0
    sampler.accept(0)
    assert sampler.sample(logits.copy()) == 1
    sampler.accept(1)
    sampler.accept(0)  # presence does not grow with the count
    assert sampler.sample(logits.copy()) == 0


def test_frequency_penalty_grows_with_the_count():
    sampler = Sampler(2, SamplingParams(temperature=0, frequency_penalty=0.4))
    logits = np.array([5.0, 4.5], dtype=np.float32)
    sampler.accept(0)
    assert sampler.sample(logits.copy()) == 0  # 4.6 > 4.5
    sampler.accept(0)
    assert sampler.sample(logits.copy()) == 1  # 4.2 < 4.5


def test_sampling_only_reads_the_first_n_vocab_logits():
    # A model head wider than the tokenizer: ids beyond the tokenizer are never sampled.
    logits = np.array([0.0, 1.0, 9.0], dtype=np.float32)
    assert Sampler(2, SamplingParams(temperature=0)).sample(logits) == 1


def test_sample_logits_does_not_modify_the_input():
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    before = logits.copy()
    assert sample_logits(logits, temperature=0) == 2
    assert np.array_equal(logits, before)


@pytest.mark.parametrize(
    "params, message",
    [
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(top_p=float("nan")), "top_p"),
        (SamplingParams(temperature=-0.1), "temperature"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(top_k=2.5), "top_k"),  # type: ignore[arg-type]
        (SamplingParams(presence_penalty=float("inf")), "presence_penalty"),
        (SamplingParams(frequency_penalty="a"), "frequency_penalty"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_raise_value_error(params, message):
    with pytest.raises(ValueError, match=message):
        params.check()


def test_penalties_track_many_distinct_tokens():
    # More distinct tokens than the initial capacity of the penalty arrays.
    n = 300
    sampler = Sampler(n, SamplingParams(temperature=0, presence_penalty=1.0, frequency_penalty=0.5))
    for token in range(200):
        sampler.accept(token)
    sampler.accept(7)
    logits = np.zeros(n, dtype=np.float32)
    sampler.apply_penalties(logits)
    assert logits[7] == pytest.approx(-2.0)
    assert logits[199] == pytest.approx(-1.5)
    assert np.all(logits[200:] == 0)
