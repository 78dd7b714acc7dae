"""cffi API-mode build of the engine: compiled by `pip install .` (see setup.py).

The declarations are generated from rwkv.h (rwkv_cli/engine/header.py), never copied by hand:
a function added to the header is bound by the next build. The engine's C sources are compiled
once by setup.py's build step into objects that are linked both into this extension module and
into a plain shared library `librwkv.so` (for programs written against rwkv.cpp's C API).
"""

import importlib.util
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "rwkv.h")


def _load_header_module():
    # By file path: importing the package would need the extension this script builds.
    path = os.path.join(HERE, "..", "rwkv_cli", "engine", "header.py")
    spec = importlib.util.spec_from_file_location("_rwkv_header", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


header = _load_header_module()
with open(HEADER, encoding="utf-8") as source:
    CDEF = header.cdef_from_header(source.read())

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
