import os

import models
import pytest


@pytest.fixture(autouse=True, scope="session")
def _outside_the_repo(tmp_path_factory):
    """Run from a scratch folder: `python -m rwkv_cli` in a subprocess puts its working folder
    on sys.path, and from the repo root that would be the uncompiled source tree, not the
    installed package under test."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


# ---- models and tokenizer files the tests write themselves (see tests/models.py) ----
# Session-scoped: written once per run, read-only for the tests (copy one before changing it).

# Seeds whose greedy output does not settle into a cycle of a few bytes within 40 tokens, so
# that comparisons of completions (cached against cold, threads against serial) compare text
# that depends on the whole state, not a loop any state falls into.
BYTE_SEEDS = {"4": 3, "7": 5}


@pytest.fixture(scope="session")
def byte_model(tmp_path_factory):
    """byte_model(arch, data_type="FP32"): the path of a byte-vocabulary test model."""
    folder = tmp_path_factory.mktemp("byte-models")
    written = {}

    def path_of(arch: str, data_type: str = "FP32"):
        if (arch, data_type) not in written:
            written[arch, data_type] = models.write_byte_model(
                folder / f"bytes-v{arch}-{data_type}.bin", arch, data_type,
                seed=BYTE_SEEDS.get(arch, 0),
            )
        return written[arch, data_type]

    return path_of


@pytest.fixture(scope="session")
def byte_v4(byte_model):
    """A v4 byte-vocabulary model (2 x 64, FP32)."""
    return byte_model("4")


@pytest.fixture(scope="session")
def byte_v7(byte_model):
    """A v7 byte-vocabulary model (2 x 64, heads of 16, FP32)."""
    return byte_model("7")


@pytest.fixture(scope="session")
def world_v7(tmp_path_factory):
    """A v7 model with the World vocabulary (1 x 32, FP16)."""
    return models.write_world_model(tmp_path_factory.mktemp("world") / "world-v7.bin")


@pytest.fixture(scope="session")
def bpe_tokenizer_json(tmp_path_factory):
    """A tiny byte-level BPE tokenizer in Hugging Face JSON form (the 20B file's code path)."""
    return models.write_bpe_tokenizer(tmp_path_factory.mktemp("bpe") / "bpe-tokenizer.json")
