"""Inputs that the fuzz targets (tests/fuzz/) once crashed on, replayed through the same code:
each must now give the reader's own clear error (or be read), never another exception.

The engine's inputs (tests/fuzz/regressions/load, quantize) are replayed in test_badfiles.py,
which also runs under AddressSanitizer + UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from rwkv_cli.app import home
from rwkv_cli.app.chat import ChatError, ChatSession
from rwkv_cli.formats.pth import ConversionError, read_pth, read_stored
from rwkv_cli.formats.safetensors_io import read_safetensors

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"


def inputs(target: str) -> list[Path]:
    return sorted((REGRESSIONS / target).glob("*"))


def test_every_target_with_regressions_is_replayed():
    replayed = {"load", "quantize", "pth", "safetensors", "registry", "chat_load"}
    assert {p.name for p in REGRESSIONS.iterdir()} <= replayed
    assert inputs("pth") and inputs("registry") and inputs("chat_load")


@pytest.mark.parametrize("path", inputs("pth") + inputs("safetensors"), ids=lambda p: p.name)
def test_checkpoint_readers_refuse_damaged_files_clearly(path):
    reader = read_pth if path.parent.name == "pth" else read_safetensors
    try:
        tensors = reader(path)
    except ConversionError as exc:
        assert str(path) in str(exc)
        return
    for tensor in tensors:
        assert read_stored(path, tensor).shape == tensor.shape


@pytest.mark.parametrize("path", inputs("registry"), ids=lambda p: p.name)
def test_registry_of_wrong_shape_is_a_registry_error(path, tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_HOME", str(tmp_path))
    (tmp_path / home.REGISTRY_FILE).write_bytes(path.read_bytes())
    with pytest.raises(home.RegistryError, match="cannot read the model registry"):
        home.last_model()


@pytest.mark.parametrize("path", inputs("chat_load"), ids=lambda p: p.name)
def test_chat_load_of_a_damaged_file_is_a_chat_error(path):
    session = ChatSession.__new__(ChatSession)  # load() reads only the model's state length
    session.model = types.SimpleNamespace(state_len=40)
    session.state, session.history = np.zeros(40, np.float32), "kept"
    with pytest.raises(ChatError, match="not a conversation"):
        session.load(path)
    assert session.history == "kept"
