"""The GHM-C CPU kernels' builds (*/losses/ghm_kernel.py) print nothing: their chatter (setuptools' "running
build", compiler command lines, Paddle's notes) goes to a log beside the build, shown only in the warning of a
failed build. Each check runs a fresh process with fresh extension directories, as a user's first run would."""
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the kernels are built on Linux only")

# `import paddle` itself warns "No ccache found" (paddle.utils.cpp_extension checks at import): that is not the
# build's, so the script ignores it in its own process; the build's subprocess, which imports paddle again,
# still prints it, and that copy must land in the log.
SCRIPT = textwrap.dedent("""
    import warnings
    warnings.filterwarnings("ignore", "No ccache found")
    import paddle
    import torch
    from paddle_impl.losses import ghm_kernel as paddle_kernel
    from torch_ref.losses import ghm_kernel as torch_kernel
    torch_kernel.for_tensor(torch.zeros(2, 2))
    paddle_kernel.for_tensor(paddle.zeros([2, 2]))
    print("torch:", torch_kernel.status())
    print("paddle:", paddle_kernel.status())
""")

CHATTER = ("running build", "ccache", "Emitting ninja", "ninja", "Compiling user custom op", "building '",
           "g++", "c++", "INFO", "-O3", "custom operator")

KERNEL = "fused CPU kernel"
STOCK = "stock ops (the kernel could not be built)"


def run_loads(tmp_path, **env):
    extension_dirs = {"TORCH_EXTENSIONS_DIR": tmp_path / "torch_extensions",
                      "PADDLE_EXTENSION_DIR": tmp_path / "paddle_extensions"}
    for d in extension_dirs.values():
        d.mkdir(exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k not in ("TORCH_REF_CPU_KERNELS", "PADDLE_IMPL_CPU_KERNELS")}
    full_env.update({k: str(v) for k, v in extension_dirs.items()}, **env)
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, extension_dirs


def logs(directory):
    return "".join(p.read_text(errors="replace") for p in directory.rglob("*.build.log"))


def test_builds_and_cached_loads_print_nothing(tmp_path):
    for run in ("fresh build", "cached load"):
        done, dirs = run_loads(tmp_path)
        output = done.stdout + done.stderr
        assert done.stdout.splitlines() == [f"torch: {KERNEL}", f"paddle: {KERNEL}"], f"{run}:\n{output}"
        found = [text for text in CHATTER if text in output]
        assert not found, f"{run} printed build chatter {found}:\n{output}"
        assert "running build" in logs(dirs["PADDLE_EXTENSION_DIR"]), f"{run}: Paddle's build log lacks its chatter"


def test_failed_build_warns_with_the_log_tail_and_falls_back(tmp_path):
    compiler = tmp_path / "refusing-cxx"           # answers version queries as the real one; compiles nothing
    compiler.write_text('#!/bin/sh\ncase "$1" in --version|-v|-dumpversion) exec c++ "$@";; esac\n'
                        'echo "refusing-cxx: not compiling this" >&2\nexit 1\n')
    compiler.chmod(0o755)
    done, dirs = run_loads(tmp_path, CXX=str(compiler))
    assert done.stdout.splitlines() == [f"torch: {STOCK}", f"paddle: {STOCK}"], done.stdout + done.stderr
    for framework, source in (("torch", "torch_ref"), ("Paddle", "paddle_impl")):
        assert f"{source}/losses/ghm_kernel.py" in done.stderr, done.stderr
        assert f"using {framework}'s stock ops (same results, slower)" in done.stderr, done.stderr
    assert done.stderr.count("UserWarning: GHM-C CPU kernel could not be built") == 2, done.stderr
    assert done.stderr.count("The end of the build's output") == 2, done.stderr
    assert "refusing-cxx: not compiling this" in logs(dirs["PADDLE_EXTENSION_DIR"])
    assert "refusing-cxx: not compiling this" in done.stderr
