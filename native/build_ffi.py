"""cffi API-mode build of the engine: compiled by `pip install .` (see setup.py).

The engine's C sources are compiled once by setup.py's build step into objects that are
linked both into this extension module and into a plain shared library `librwkv.so`
(for programs written against rwkv.cpp's C API).
"""

import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rwkv_cli", "engine"))
from _cdef import CDEF

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "rwkv_cli.engine._rwkv_native",
    '#include "rwkv.h"',
    include_dirs=[HERE],
    libraries=["m"],
    extra_compile_args=["-O2"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
