"""atheris target: the `.pth` reader (zip container, restricted unpickler, tensor records).

Any bytes as a checkpoint: read_pth either lists tensors, each then readable by read_stored,
or raises ConversionError with a message; any other exception is a finding.

    python tests/fuzz/fuzz_pth.py [libFuzzer options] CORPUS...   (tests/fuzz/run.sh runs it)
"""

import os
import sys
import tempfile

import atheris
import numpy  # imported before instrumentation: only our code and zipfile are instrumented

with atheris.instrument_imports():
    import zipfile  # noqa: F401  (the container parser our reader drives)

    from rwkv_cli.formats.pth import ConversionError, read_pth, read_stored

# A stride-0 view may claim any size over a tiny storage; reading such a tensor allocates its
# full size, which is the converter's business, not this target's.
MAX_VALUES = 1 << 20
PATH = os.path.join(tempfile.mkdtemp(prefix="rwkv-fuzz-pth-"), "model.pth")


def test_one_input(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        for tensor in read_pth(PATH):
            if tensor.n_values <= MAX_VALUES:
                values = read_stored(PATH, tensor)
                assert values.shape == tensor.shape and values.dtype == numpy.float32
    except ConversionError as exc:
        assert str(exc)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
