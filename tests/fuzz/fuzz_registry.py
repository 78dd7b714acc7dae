"""atheris target: the model registry (`models.json` in the rwkv-cpp home folder).

Any bytes as models.json: what the commands do with it (list the installed models, pick the
last one, look one up by name) either works or raises RegistryError with a message (the CLI
prints it as one line); any other exception is a finding.

    python tests/fuzz/fuzz_registry.py [libFuzzer options] CORPUS...   (tests/fuzz/run.sh)
"""

import os
import sys
import tempfile

import atheris

HOME = tempfile.mkdtemp(prefix="rwkv-fuzz-home-")
os.environ["RWKV_HOME"] = HOME

with atheris.instrument_imports():
    from rwkv_cli.app import home


def test_one_input(data: bytes) -> None:
    with open(os.path.join(HOME, home.REGISTRY_FILE), "wb") as f:
        f.write(data)
    try:
        for model in home.installed_models():
            assert isinstance(model.name, str) and isinstance(model.exists, bool)
        home.last_model()
        for name in ("rwkv7-0.1b", ""):
            try:
                home.resolve_model(model_name=name)
            except home.NoModelError as exc:
                assert str(exc)
    except home.RegistryError as exc:
        assert str(exc)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
