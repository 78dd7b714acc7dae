import os

import pytest
from helpers import tokenizer_20b  # noqa: F401  (a pytest fixture shared by all tests)


@pytest.fixture(autouse=True, scope="session")
def _outside_the_repo(tmp_path_factory):
    """Run from a scratch folder: `python -m rwkv_cli` in a subprocess puts its working folder
    on sys.path, and from the repo root that would be the uncompiled source tree, not the
    installed package under test."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
