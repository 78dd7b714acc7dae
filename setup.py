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
        headers = sorted(glob.glob(os.path.join("native", "*.h")))
        for ext in self.extensions:
            ext.extra_objects = list(objects) + list(ext.extra_objects or [])
            # relink when the engine changes, not only when the generated glue does
            ext.depends = list(ext.depends or []) + NATIVE_SOURCES + headers
        super().build_extensions()
        # The same engine as a plain C library, beside the extension module.
        self.compiler.link_shared_object(
            objects, self._library_path(), libraries=["m"], extra_postargs=["-pthread"]
        )

    def _library_path(self):
        return os.path.join(self.build_lib, "rwkv_cli", "engine", "librwkv.so")

    def copy_extensions_to_source(self):
        # in-place and editable builds: put the library beside the extension in the tree
        super().copy_extensions_to_source()
        package_dir = self.get_finalized_command("build_py").get_package_dir("rwkv_cli.engine")
        self.copy_file(self._library_path(), os.path.join(package_dir, "librwkv.so"))

    def get_outputs(self):
        return super().get_outputs() + [self._library_path()]

    def get_output_mapping(self):
        # editable installs copy what this maps into the source tree
        mapping = dict(super().get_output_mapping())
        mapping[self._library_path()] = os.path.join("rwkv_cli", "engine", "librwkv.so")
        return mapping


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildEngine},
)
