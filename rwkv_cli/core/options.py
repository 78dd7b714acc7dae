"""Checks of the options `RWKV` takes: each raises InvalidArgument (a ValueError) naming the
option, the value and what is accepted."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgument


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def available_cpus() -> int:
    """CPUs this process may run on (logical: SMT siblings count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def context_threads(requested: int | None) -> int:
    """Engine threads: the request (default: the physical cores), capped at the CPUs available.

    More threads than CPUs never helps: the engine's threads meet at a barrier per layer, and
    one that waits for a CPU stalls all the others (999 threads on 2 cores ran 30-40x slower).
    A model has one context whatever its `concurrent` (the completions share its batch), so
    the cap does not depend on it.
    """
    if requested is not None:
        requested = positive_int("threads", requested)
    wanted = physical_cores() if requested is None else requested
    return max(1, min(wanted, available_cpus()))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise InvalidArgument(f"{name} must be an integer >= 1, got {value!r}", name)
    return int(value)


def check_gpu_offload(gpu_offload: int | str) -> None:
    if isinstance(gpu_offload, str):
        text = gpu_offload.strip()
        try:
            percent = float(text[:-1]) if text.endswith("%") else None
        except ValueError:
            percent = None
        if percent is None or not 0 <= percent <= 100:
            raise InvalidArgument(
                "gpu_offload must be a number of layers or a percentage like '50%', "
                f"got {gpu_offload!r}", "gpu_offload"
            )
        return
    if not _is_int(gpu_offload) or gpu_offload < 0:
        raise InvalidArgument(
            f"gpu_offload must be a layer count >= 0 or a percentage string, got {gpu_offload!r}",
            "gpu_offload",
        )


def gpu_layers(gpu_offload: int | str, n_layer: int) -> int:
    """The layer count a (checked) gpu_offload option asks for, for a model of n_layer."""
    if isinstance(gpu_offload, str):
        percent = float(gpu_offload.strip().rstrip("%"))
        return round(n_layer * percent / 100.0)
    return min(int(gpu_offload), n_layer)


def state_cache_entries(value: int | bool | None, default: int) -> int:
    if value is True:
        return default
    if value is False or value is None:
        return 0
    if not _is_int(value) or value < 0:
        raise InvalidArgument(f"state_cache_size must be an integer >= 0, got {value!r}")
    return int(value)


def stop_strings(stop: None | str | Sequence[str]) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InvalidArgument(
                f"stop must be a non-empty string or a list of them, got {stop!r}", "stop"
            )
    return stops


def max_tokens(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise InvalidArgument(f"max_tokens must be an integer >= 0, got {value!r}", "max_tokens")
    return int(value)


def seed(value: Any) -> int | None:
    if value is not None and not _is_int(value):
        raise InvalidArgument(f"seed must be an integer or None, got {value!r}", "seed")
    return value


def prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"prompt must be a string, got {type(value).__name__}", "prompt")
    return value


def init_state(value: Any, state_len: int) -> np.ndarray:
    """A state of `state_len` values, as a flat float32 array."""
    try:
        array = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"init_state must be a float32 array of {state_len} values", "init_state"
        ) from exc
    if array.shape[0] != state_len:
        raise InvalidArgument(
            f"init_state has {array.shape[0]} values, this model's state has {state_len} "
            f"(a state from another model?)", "init_state"
        )
    return array
