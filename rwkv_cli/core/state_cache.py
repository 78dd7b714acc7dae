"""The prompt state cache: model states keyed by the token prefix that produced them.

A lookup returns the entry whose key is the longest prefix of the tokens asked for, so a
completion only evaluates the tokens after it. Each entry also holds the logits after its last
token, so a prompt that is entirely cached needs no evaluation at all before sampling.

Eviction is least-recently-used, bounded by an entry count and by a byte total; pinned entries
are never evicted (and still count towards the totals). All methods are thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class CacheEntry:
    """A cached state: `tokens` (the key), `state` and `logits` (read-only arrays)."""

    tokens: tuple[int, ...]
    state: np.ndarray
    logits: np.ndarray | None
    pinned: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.state.nbytes + (self.logits.nbytes if self.logits is not None else 0)


def _frozen_copy(array: np.ndarray | None) -> np.ndarray | None:
    if array is None:
        return None
    copy = np.array(array, dtype=np.float32, copy=True)
    copy.flags.writeable = False
    return copy


class StateCache:
    """LRU map of token prefix -> (state, logits), with pinning and count/byte limits."""

    def __init__(self, max_entries: int = 50, max_bytes: int | None = DEFAULT_MAX_BYTES):
        if isinstance(max_entries, bool) or int(max_entries) != max_entries or max_entries < 0:
            raise InvalidArgument(f"state cache size must be an integer >= 0, got {max_entries!r}")
        if max_bytes is not None and max_bytes < 0:
            raise InvalidArgument(f"state cache byte limit must be >= 0, got {max_bytes!r}")
        self.max_entries = int(max_entries)
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], CacheEntry] = OrderedDict()
        # Key lengths present, with how many keys have each: a lookup hashes one prefix per
        # distinct length instead of comparing against every entry.
        self._lengths: dict[int, int] = {}
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, tokens: Sequence[int]) -> bool:
        with self._lock:
            return tuple(tokens) in self._entries

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def keys(self) -> list[tuple[int, ...]]:
        """Cached token prefixes, least recently used first."""
        with self._lock:
            return list(self._entries.keys())

    def lookup(self, tokens: Sequence[int], max_length: int | None = None) -> CacheEntry | None:
        """The entry with the longest key that is a prefix of `tokens` (or None).

        `max_length` bounds the key length (e.g. len(tokens) - 1 to keep one token to evaluate).
        """
        limit = len(tokens) if max_length is None else min(max_length, len(tokens))
        with self._lock:
            for length in sorted(self._lengths, reverse=True):
                if length > limit or length == 0:
                    continue
                entry = self._entries.get(tuple(tokens[:length]))
                if entry is not None:
                    self._entries.move_to_end(entry.tokens)
                    self.hits += 1
                    return entry
            self.misses += 1
            return None

    def put(
        self,
        tokens: Sequence[int],
        state: np.ndarray,
        logits: np.ndarray | None = None,
        pin: bool = False,
    ) -> CacheEntry | None:
        """Cache copies of `state` and `logits` after `tokens`; returns the entry (None when
        the cache is disabled or the key is empty). An existing key is refreshed and stays
        pinned if it was."""
        key = tuple(int(t) for t in tokens)
        if not self.enabled or not key:
            return None
        with self._lock:
            old = self._entries.get(key)
            entry = CacheEntry(
                key, _frozen_copy(state), _frozen_copy(logits), pin or (old is not None and old.pinned)
            )
            if old is not None:
                self._remove(key)
            self._entries[key] = entry
            self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
            self._nbytes += entry.nbytes
            self._evict()
            return entry

    def pin(self, tokens: Sequence[int], pinned: bool = True) -> bool:
        """Pin (or unpin) an existing entry; False when there is no such key."""
        key = tuple(tokens)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            self._entries[key] = CacheEntry(entry.tokens, entry.state, entry.logits, pinned)
            if not pinned:
                self._evict()
            return True

    def remove(self, tokens: Sequence[int]) -> bool:
        with self._lock:
            key = tuple(tokens)
            if key not in self._entries:
                return False
            self._remove(key)
            return True

    def clear(self, keep_pinned: bool = False) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if not (keep_pinned and e.pinned)]:
                self._remove(key)

    # ---- internals (lock held) ----

    def _remove(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self._nbytes -= entry.nbytes
        count = self._lengths[len(key)] - 1
        if count:
            self._lengths[len(key)] = count
        else:
            del self._lengths[len(key)]

    def _over(self) -> bool:
        if len(self._entries) > self.max_entries:
            return True
        return self.max_bytes is not None and self._nbytes > self.max_bytes

    def _evict(self) -> None:
        if not self._over():
            return
        for key in [k for k, e in self._entries.items() if not e.pinned]:
            if not self._over():
                break
            self._remove(key)
