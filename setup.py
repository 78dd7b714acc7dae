"""Build: compile the C engine once, link it into the cffi extension and into librwkv.so."""

import glob
import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_SOURCES = sorted(glob.glob(os.path.join("native", "*.c")))
NATIVE_CFLAGS = ["-std=gnu11", "-O3", "-fPIC", "-pthread", "-Wall", "-Wno-unused-function"]


class BuildEngine(build_ext):
    """Compiles native/*.c to objects shared by the extension and the plain shared library."""

    def build_extensions(self):
        objects = self.compiler.compile(
            NATIVE_SOURCES,
            output_dir=self.build_temp,
            include_dirs=["native"],
            extra_postargs=NATIVE_CFLAGS,
        )
        for ext in self.extensions:
            ext.extra_objects = list(objects) + list(ext.extra_objects or [])
        super().build_extensions()
        # The same engine as a plain C library, beside the extension module.
        out_dir = os.path.dirname(self.get_ext_fullpath("rwkv_cli._rwkv_native"))
        self.compiler.link_shared_object(
            objects,
            os.path.join(out_dir, "librwkv.so"),
            libraries=["m"],
            extra_postargs=["-pthread"],
        )


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildEngine},
)
