"""The prompt state cache: longest-prefix lookup, LRU by count and bytes, pinning, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rwkv_cli.core.state_cache import StateCache


def state(value: float, n: int = 8) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


def test_longest_cached_prefix_wins():
    cache = StateCache(10)
    cache.put([1, 2], state(2))
    cache.put([1, 2, 3, 4], state(4))
    cache.put([1, 2, 3], state(3))
    entry = cache.lookup([1, 2, 3, 4, 5])
    assert entry is not None
    assert entry.tokens == (1, 2, 3, 4)
    assert entry.state[0] == 4


def test_a_key_longer_than_the_tokens_or_diverging_does_not_match():
    cache = StateCache(10)
    cache.put([1, 2, 3], state(3))
    cache.put([1, 9], state(9))
    assert cache.lookup([1, 2]) is None
    assert cache.lookup([1, 2, 4]) is None
    assert cache.lookup([1, 2, 3]).tokens == (1, 2, 3)


def test_max_length_leaves_tokens_to_evaluate():
    cache = StateCache(10)
    cache.put([1], state(1))
    cache.put([1, 2], state(2))
    assert cache.lookup([1, 2], max_length=1).tokens == (1,)


def test_entries_are_read_only_copies():
    cache = StateCache(10)
    source = state(1)
    logits = np.arange(4, dtype=np.float32)
    entry = cache.put([5], source, logits)
    source[:] = 7
    logits[:] = 7
    assert entry.state[0] == 1 and entry.logits[0] == 0
    with pytest.raises(ValueError):
        entry.state[0] = 3


def test_least_recently_used_is_evicted_by_count():
    cache = StateCache(2)
    cache.put([1], state(1))
    cache.put([2], state(2))
    cache.lookup([1, 0])  # touch [1]: [2] is now the oldest
    cache.put([3], state(3))
    assert cache.keys() == [(1,), (3,)]
    assert len(cache) == 2


def test_byte_cap_evicts_even_under_the_count():
    one = state(0).nbytes
    cache = StateCache(50, max_bytes=3 * one)
    for token in range(5):
        cache.put([token], state(token))
    assert len(cache) == 3
    assert cache.nbytes == 3 * one
    assert cache.keys() == [(2,), (3,), (4,)]


def test_logits_count_towards_the_byte_cap():
    entry_bytes = state(0).nbytes + np.zeros(8, np.float32).nbytes
    cache = StateCache(50, max_bytes=2 * entry_bytes)
    for token in range(3):
        cache.put([token], state(token), np.zeros(8, np.float32))
    assert len(cache) == 2


def test_pinned_entries_survive_eviction_pressure():
    cache = StateCache(3)
    cache.put([100], state(100), pin=True)
    for token in range(20):
        cache.put([token], state(token))
    assert (100,) in cache
    assert cache.lookup([100, 5]).state[0] == 100
    assert len(cache) == 3


def test_unpinning_makes_an_entry_evictable_again():
    cache = StateCache(2)
    cache.put([1], state(1), pin=True)
    cache.put([2], state(2))
    cache.put([3], state(3))
    assert (1,) in cache
    assert cache.pin([1], False)
    cache.put([4], state(4))
    assert (1,) not in cache


def test_refreshing_a_key_keeps_its_pin_and_replaces_the_state():
    cache = StateCache(2)
    cache.put([1], state(1), pin=True)
    cache.put([1], state(5))
    assert cache.lookup([1]).state[0] == 5
    for token in range(2, 6):
        cache.put([token], state(token))
    assert (1,) in cache


def test_a_disabled_cache_stores_nothing():
    cache = StateCache(0)
    assert not cache.enabled
    assert cache.put([1], state(1)) is None
    assert cache.lookup([1]) is None


def test_clear_can_keep_pinned_entries():
    cache = StateCache(5)
    cache.put([1], state(1), pin=True)
    cache.put([2], state(2))
    cache.clear(keep_pinned=True)
    assert cache.keys() == [(1,)]
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_hits_and_misses_are_counted():
    cache = StateCache(5)
    cache.put([1], state(1))
    cache.lookup([1, 2])
    cache.lookup([3])
    assert (cache.hits, cache.misses) == (1, 1)


@pytest.mark.parametrize("size", [-1, 1.5, True])
def test_bad_sizes_raise_value_error(size):
    with pytest.raises(ValueError, match="state cache size"):
        StateCache(size)


def test_concurrent_puts_and_lookups_keep_the_totals_consistent():
    cache = StateCache(16, max_bytes=10 * state(0).nbytes)
    errors = []

    def work(offset: int) -> None:
        try:
            for i in range(300):
                key = [offset, i % 37]
                cache.put(key, state(i))
                entry = cache.lookup(key + [1])
                if entry is not None and entry.tokens[0] != offset:
                    errors.append(entry.tokens)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) <= 10
    assert cache.nbytes == len(cache) * state(0).nbytes
