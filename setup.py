"""Build: compile the C engine once, link it into the cffi extension and into librwkv.so."""

import glob
import os
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_SOURCES = sorted(glob.glob(os.path.join("native", "*.c")))
# Built into rwkv_cli/engine/ besides the extension module: our engine as a plain C library,
# and the copy of its header that the binding reads at run time.
ENGINE_FILES = ("librwkv.so", "rwkv.h")
# -fwrapv (signed overflow wraps) is in CPython's own CFLAGS, which setuptools passes too, so the
# engine was always built with it here; named so that it does not depend on how the running
# Python was built. gcc 12 schedules the float decode loop's prefetches better with it: FP16
# decode from memory 1.08-1.16x (benchmarks/kernel_speed.c, one thread). The sanitizer builds
# (native/Makefile) leave it out, so that they still report signed overflow.
NATIVE_CFLAGS = ["-std=gnu11", "-O3", "-fwrapv", "-fPIC", "-pthread", "-Wall", "-Wno-unused-function"]


class BuildEngine(build_ext):
    """Compiles native/*.c to objects shared by the extension and the plain shared library."""

    def build_extensions(self):
        # one compiler process per source file at a time on every CPU: the engine is most of
        # the build (a wheel, `pip install .`), and its files are independent
        self.mkpath(os.path.join(self.build_temp, "native"))

        def compile_one(source):
            return self.compiler.compile(
                [source], output_dir=self.build_temp, include_dirs=["native"], extra_postargs=NATIVE_CFLAGS
            )

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            objects = [obj for objs in pool.map(compile_one, NATIVE_SOURCES) for obj in objs]
        headers = sorted(glob.glob(os.path.join("native", "*.h")))
        for ext in self.extensions:
            ext.extra_objects = list(objects) + list(ext.extra_objects or [])
            # relink when the engine changes, not only when the generated glue does
            ext.depends = list(ext.depends or []) + NATIVE_SOURCES + headers
        super().build_extensions()
        # The same engine as a plain C library, beside the extension module.
        self.compiler.link_shared_object(
            objects, self._engine_path("librwkv.so"), libraries=["m"], extra_postargs=["-pthread"]
        )
        # The header too: Library(path) declares an external rwkv.cpp library from it.
        self.copy_file(os.path.join("native", "rwkv.h"), self._engine_path("rwkv.h"))

    def _engine_path(self, name):
        return os.path.join(self.build_lib, "rwkv_cli", "engine", name)

    def copy_extensions_to_source(self):
        # in-place and editable builds: put the library and header beside the extension
        super().copy_extensions_to_source()
        package_dir = self.get_finalized_command("build_py").get_package_dir("rwkv_cli.engine")
        for name in ENGINE_FILES:
            self.copy_file(self._engine_path(name), os.path.join(package_dir, name))

    def get_outputs(self):
        return super().get_outputs() + [self._engine_path(name) for name in ENGINE_FILES]

    def get_output_mapping(self):
        # editable installs copy what this maps into the source tree
        mapping = dict(super().get_output_mapping())
        for name in ENGINE_FILES:
            mapping[self._engine_path(name)] = os.path.join("rwkv_cli", "engine", name)
        return mapping


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildEngine},
)
