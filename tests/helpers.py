"""Shared test helpers: where the shared fixtures live, and what happens when they are absent.

Tests import this as `from helpers import ...` (pytest puts tests/ on sys.path; there is no
tests/__init__.py so the repo root never shadows the installed package).

The suite stands on models it writes itself (tests/models.py); only the tests that compare
with rwkv.cpp's files and outputs (the trained tiny models and their expected logits and
states) or with the real GPT-NeoX 20B tokenizer file need ../shared. They live in the
`test_shared_*.py` modules, each skipped as a whole when ../shared is absent. With
RWKV_REQUIRE_FIXTURES=1 (CI) an absent fixture is a failure instead.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RWKV_SHARED", REPO.parent / "shared"))
TINY = SHARED / "fixtures" / "rwkv-cpp-tiny"
TOKENIZERS = SHARED / "fixtures" / "tokenizers"
TOKENIZER_20B = TOKENIZERS / "20B_tokenizer.json"

# Set by CI (.ci/run): ../shared must be there, and a test that needs it fails without it.
REQUIRE_FIXTURES = os.environ.get("RWKV_REQUIRE_FIXTURES", "") not in ("", "0")

# The prompt of the fixtures: `"in` as bytes (byte-level vocabulary).
FIXTURE_TOKENS = [34, 105, 110]

FIXTURE_VERSIONS = {
    "4v0": "4v0-660K",
    "5v1": "5v1-730K",
    "5v2": "5v2-730K",
    "6v0": "6v0-3m",
    "7v0": "7v0-834K",
}


def may_skip_without(folder: Path) -> bool:
    """True when `folder` of ../shared is absent and RWKV_REQUIRE_FIXTURES is not set: a
    test_shared_* module then skips as a whole (one skip, saying what did not run):

        if may_skip_without(TINY):
            pytest.skip(f"{TINY} absent: ...", allow_module_level=True)

    Under RWKV_REQUIRE_FIXTURES=1 the module runs all the same, and each of its tests fails on
    the file it needs."""
    return not folder.is_dir() and not REQUIRE_FIXTURES


def shared_file(path: Path) -> Path:
    """A file of ../shared: skipped, or failed under RWKV_REQUIRE_FIXTURES=1, when absent."""
    if not path.exists():
        message = f"shared fixture absent: {path}"
        if REQUIRE_FIXTURES:
            pytest.fail(f"{message} (RWKV_REQUIRE_FIXTURES=1: ../shared is required)",
                        pytrace=False)
        pytest.skip(message)
    return path


def tiny_model(version: str, dtype: str) -> Path:
    """Path of a shared fixture model (rwkv.cpp's trained tiny models)."""
    return shared_file(TINY / f"tiny-rwkv-{FIXTURE_VERSIONS[version]}-{dtype}.bin")


def tiny_expected(version: str, what: str = "logits") -> Path:
    return shared_file(TINY / f"expected-{what}-{FIXTURE_VERSIONS[version]}.bin")


def default_ctrl_c() -> None:
    """pexpect's preexec_fn for a child that is sent Ctrl-C: SIGINT back to its default. A shell
    starts a background job (`pytest ... &` in a script) with SIGINT ignored, every child
    inherits that, and Python then never installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
