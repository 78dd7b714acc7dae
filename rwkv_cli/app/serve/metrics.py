"""The server's Prometheus metrics (prometheus-client, one registry per server).

A registry of its own, not the library's global one, so that two servers in one process (the
tests run several) keep their counts apart, and so that /metrics shows only what this server
counts. Gauges that mirror the model (running, waiting, batch occupancy) are read when
scraped, never kept in step by hand.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# A `_created` timestamp beside every counter doubles the text for nothing a dashboard uses.
disable_created_metrics()

# The paths the server answers; any other is counted as "other", so a scan of random URLs
# cannot grow the number of series without bound.
PATHS = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")

# Seconds: first tokens come in milliseconds from a cached state, in seconds after a long
# prompt or a wait in the queue.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self, running: Callable[[], float], waiting: Callable[[], float],
                 parallel: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rwkv_requests", "HTTP requests answered, by path and status code",
            ["path", "status"], registry=r,
        )
        self.prompt_tokens = Counter(
            "rwkv_prompt_tokens", "Prompt tokens of finished completions (cached ones included)",
            registry=r,
        )
        self.cached_tokens = Counter(
            "rwkv_prompt_tokens_cached", "Prompt tokens whose state came from the prompt cache",
            registry=r,
        )
        self.generated_tokens = Counter(
            "rwkv_generated_tokens", "Tokens generated (streams cut short included)", registry=r,
        )
        self.completions = Counter(
            "rwkv_completions", "Completions ended, by how they ended (stop, length, "
            "cancelled: the client left or the server stopped)", ["finish_reason"], registry=r,
        )
        self.time_to_first_token = Histogram(
            "rwkv_time_to_first_token_seconds",
            "From the request's arrival to its first piece of text (streams)",
            buckets=TTFT_BUCKETS, registry=r,
        )
        Gauge("rwkv_requests_running", "Completions being generated now",
              registry=r).set_function(running)
        Gauge("rwkv_queue_depth", "Requests admitted and waiting for a slot",
              registry=r).set_function(waiting)
        Gauge("rwkv_batch_occupancy", "Share of the parallel slots in use (0 to 1)",
              registry=r).set_function(lambda: running() / parallel)
        Gauge("rwkv_parallel_slots", "Sequences decoded together (--parallel)",
              registry=r).set(parallel)

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in PATHS else "other", str(status)).inc()

    def text(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
