"""The worker pool: one engine context per worker, handed to one completion at a time.

Completions from several threads each take a free worker and run their token loop on its
context; when all are busy they wait in a queue (`pending`). asyncio callers run completions
on the pool's threads (`executor()`), more threads than workers, so that the surplus waits
in the same queue, where `pending` sees it.

This is the scheduling part of the model: a continuous-batching scheduler (one engine thread
advancing many sequences per step) would replace it without touching the per-sequence logic
in generate.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from ..engine import Context
from ..errors import UserError


class Worker:
    """One engine context with its own state and logits buffers."""

    __slots__ = ("context", "logits", "state")

    def __init__(self, context: Context):
        self.context = context
        self.state = np.zeros(context.state_len, dtype=np.float32)
        self.logits = np.zeros(context.logits_len, dtype=np.float32)


class WorkerPool:
    """Free workers, the counts of running and waiting completions, and the asyncio threads."""

    def __init__(self, workers: list[Worker], name: str):
        self._workers = workers
        self._name = name
        self._free = list(reversed(workers))
        self._cond = threading.Condition()
        self._open = True
        self._active = 0
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None

    @property
    def size(self) -> int:
        return len(self._workers)

    def active(self) -> int:
        with self._cond:
            return self._active

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def acquire(self) -> Worker:
        """A free worker, waiting for one if needed; raises once the pool is closed."""
        with self._cond:
            self._pending += 1
            try:
                while not self._free:
                    if not self._open:
                        raise UserError(f"the model {self._name} was freed")
                    self._cond.wait()
                if not self._open:
                    raise UserError(f"the model {self._name} was freed")
            finally:
                self._pending -= 1
            self._active += 1
            return self._free.pop()

    def release(self, worker: Worker) -> None:
        with self._cond:
            self._active -= 1
            self._free.append(worker)
            self._cond.notify_all()

    @contextmanager
    def worker(self) -> Iterator[Worker]:
        worker = self.acquire()
        try:
            yield worker
        finally:
            self.release(worker)

    def executor(self) -> ThreadPoolExecutor:
        """Threads for completions started from asyncio (created on first use)."""
        with self._cond:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=max(8, 2 * len(self._workers)), thread_name_prefix="rwkv"
                )
            return self._executor

    def close(self, poll: float | None = None, on_wait=None) -> list[Worker]:
        """Stop handing out workers and wait until every worker is back; returns them.

        Completions still waiting fail with a clear error. `on_wait()` is called before each
        wait of at most `poll` seconds (the model closes open streams there).
        """
        with self._cond:
            self._open = False
            self._cond.notify_all()
            while len(self._free) < len(self._workers):
                if on_wait is not None:
                    self._cond.release()
                    try:
                        on_wait()
                    finally:
                        self._cond.acquire()
                    if len(self._free) == len(self._workers):
                        break
                self._cond.wait(poll)
            self._free = []
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        return self._workers
