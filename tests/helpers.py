"""Shared test helpers: where the shared fixtures live, and skips when they are absent.

Tests import this as `from helpers import ...` (pytest puts tests/ on sys.path; there is no
tests/__init__.py so the repo root never shadows the installed package).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RWKV_SHARED", REPO.parent / "shared"))
TINY = SHARED / "fixtures" / "rwkv-cpp-tiny"
TOKENIZERS = SHARED / "fixtures" / "tokenizers"

# The prompt of the fixtures: `"in` as bytes (byte-level vocabulary).
FIXTURE_TOKENS = [34, 105, 110]

FIXTURE_VERSIONS = {
    "4v0": "4v0-660K",
    "5v1": "5v1-730K",
    "5v2": "5v2-730K",
    "6v0": "6v0-3m",
    "7v0": "7v0-834K",
}


def tiny_model(version: str, dtype: str) -> Path:
    """Path of a shared fixture model, skipping the test when it is not there."""
    path = TINY / f"tiny-rwkv-{FIXTURE_VERSIONS[version]}-{dtype}.bin"
    if not path.exists():
        pytest.skip(f"shared fixture absent: {path}")
    return path


def tiny_expected(version: str, what: str = "logits") -> Path:
    path = TINY / f"expected-{what}-{FIXTURE_VERSIONS[version]}.bin"
    if not path.exists():
        pytest.skip(f"shared fixture absent: {path}")
    return path


@pytest.fixture
def tokenizer_20b() -> Path:
    path = TOKENIZERS / "20B_tokenizer.json"
    if not path.exists():
        pytest.skip(f"shared fixture absent: {path}")
    return path
