"""atheris target: the `.safetensors` reader.

Any bytes as a checkpoint: read_safetensors either lists tensors, each then readable by
read_stored, or raises ConversionError with a message; any other exception is a finding.

    python tests/fuzz/fuzz_safetensors.py [libFuzzer options] CORPUS...   (tests/fuzz/run.sh)
"""

import os
import sys
import tempfile

import atheris
import numpy  # imported before instrumentation: only our code is instrumented

with atheris.instrument_imports():
    from rwkv_cli.formats.pth import ConversionError, read_stored
    from rwkv_cli.formats.safetensors_io import read_safetensors

MAX_VALUES = 1 << 20  # see fuzz_pth.py
PATH = os.path.join(tempfile.mkdtemp(prefix="rwkv-fuzz-safetensors-"), "model.safetensors")


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        for tensor in read_safetensors(PATH):
            if tensor.n_values <= MAX_VALUES:
                values = read_stored(PATH, tensor)
                assert values.shape == tensor.shape and values.dtype == numpy.float32
    except ConversionError as exc:
        assert str(exc)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
