"""The GHM-C CPU kernels' builds (*/losses/ghm_kernel.py) never hang: what a killed build leaves (a 0-byte torch
`lock` in the build directory, our <name>.lock beside it) is no obstacle; a live builder is waited on for
GHM_KERNEL_LOCK_TIMEOUT seconds at most, then the stock ops serve with a warning; a read-only cache holding the
build is used as it is. Each check loads one twin in a fresh process (bounded by a timeout) on its own extension
directory: a copy of one complete build, made once per module (copied from the user's cache where that already
holds it, else built here, ~1-2 min)."""
import contextlib
import functools
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from paddle_impl.losses import ghm_kernel as paddle_kernel
from torch_ref.losses import ghm_kernel as torch_kernel

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240                      # a hang fails the test instead of stalling the suite

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the kernels are built on Linux only")


def _torch_default_root():
    return torch_kernel._import_cpp_extension().get_default_build_root()


FRAMEWORKS = {
    "torch": SimpleNamespace(kernel=torch_kernel, var="TORCH_EXTENSIONS_DIR", default_root=_torch_default_root),
    "paddle": SimpleNamespace(kernel=paddle_kernel, var="PADDLE_EXTENSION_DIR",
                              default_root=lambda: os.path.expanduser("~/.cache/paddle_extensions")),
}

# GHM-C on the kernel (or on the stock ops it falls back to), then on the stock ops: the status and both losses.
SCRIPT = textwrap.dedent("""
    import sys
    import warnings
    warnings.filterwarnings("ignore", "No ccache found")
    import numpy as np
    if sys.argv[1] == "torch":
        import torch
        import torch_ref.losses as losses
        tensor = torch.from_numpy
    else:
        import paddle
        import paddle_impl.losses as losses
        tensor = paddle.to_tensor
    rng = np.random.default_rng(0)
    args = [tensor(a) for a in (rng.normal(size=(64, 5)), (rng.random((64, 5)) < 0.3) * 1.0, np.ones((64, 5)))]
    loss = float(losses.GHMC(bins=10)(*args))
    print(losses.ghm_kernel.status())
    with losses.ghm_kernel.disabled():
        print(loss, float(losses.GHMC(bins=10)(*args)))
""")

KERNEL = "fused CPU kernel"
STOCK = "stock ops (the kernel could not be built)"

# holds our build lock (as a live builder does) until killed
HOLD = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(600)")


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request):
    return request.param


def run_load(fw, cache, **env):
    """Load `fw`'s kernel on the extension directory `cache` in a fresh process -> (status, stderr, seconds)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("TORCH_REF_CPU_KERNELS", "PADDLE_IMPL_CPU_KERNELS")}
    full_env.update({FRAMEWORKS[fw].var: str(cache)}, **env)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT, fw], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    status, losses = done.stdout.splitlines()[-2:]
    ours, stock = map(float, losses.split())
    assert ours == pytest.approx(stock, rel=1e-12), done.stdout       # the kernel or the fallback computes GHM-C
    return status, done.stderr, elapsed


@functools.lru_cache(maxsize=None)
def build_name(fw):
    """fw's build name as the fresh processes that load the kernels compute it (what another test did to this
    process's modules cannot move it)."""
    module = FRAMEWORKS[fw].kernel.__name__
    done = subprocess.run([sys.executable, "-c", f"import {module} as k; print(k.build_name())"], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def warnings_in(stderr):
    return stderr.count("UserWarning: GHM-C CPU kernel")


def _user_build(fw):
    """The directory of fw's complete build in the user's extension directory, or None."""
    f = FRAMEWORKS[fw]
    name = build_name(fw)
    root = Path(os.environ.get(f.var) or f.default_root())
    found = [p for p in (*root.glob(f"{name}/{name}.so"), *root.glob(f"*/{name}/{name}.so")) if p.is_file()]
    return found[0].parent if found else None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """fw -> an extension directory holding fw's complete build; tests copy it."""
    caches = {}
    for fw in FRAMEWORKS:
        cache = tmp_path_factory.mktemp(f"{fw}_built")
        source = _user_build(fw)
        if source is not None:                     # copy2 keeps mtimes: ninja and Paddle find the copy up to date
            shutil.copytree(source, cache / source.name, symlinks=True)
        status, stderr, _ = run_load(fw, cache)
        assert status == KERNEL, stderr
        caches[fw] = cache
    return caches


def copy_of(built, fw, tmp_path):
    cache = tmp_path / "extensions"
    shutil.copytree(built[fw], cache, symlinks=True)
    return cache


@contextlib.contextmanager
def read_only(path):
    """`path` read-only for the processes the test starts: a read-only bind mount as root (whom file modes do
    not stop), the write bits cleared otherwise."""
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True, text=True)
        if mounted.returncode:
            pytest.skip(f"cannot make a read-only bind mount: {mounted.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    entries = [path, *path.rglob("*")]
    modes = {p: p.stat().st_mode for p in entries if not p.is_symlink()}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_lock_left_by_a_killed_build_is_ignored(built, fw, tmp_path):
    """A build killed with SIGKILL leaves our <name>.lock (its flock gone with the process) and, in torch's
    case, torch's 0-byte `lock` in the build directory (torch's load would wait on it forever): the next
    load uses the build, and removes torch's lock."""
    cache = copy_of(built, fw, tmp_path)
    name = build_name(fw)
    left = [cache / f"{name}.lock"] + ([cache / name / "lock"] if fw == "torch" else [])
    for path in left:
        path.write_bytes(b"")
    status, stderr, _ = run_load(fw, cache)
    assert status == KERNEL, stderr
    assert warnings_in(stderr) == 0, stderr
    assert not (cache / name / "lock").exists()


def test_live_builder_is_waited_on_for_the_lock_timeout_then_stock_ops(built, fw, tmp_path):
    cache = copy_of(built, fw, tmp_path)
    lock = cache / f"{build_name(fw)}.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        status, stderr, elapsed = run_load(fw, cache, GHM_KERNEL_LOCK_TIMEOUT="3")
    finally:
        holder.kill()
        holder.wait()
    assert status == STOCK, stderr
    assert warnings_in(stderr) == 1 and stderr.count("UserWarning:") == 1, stderr
    assert f"another process has held its build lock ({lock}) for 3 s" in stderr, stderr
    assert "GHM_KERNEL_LOCK_TIMEOUT sets the wait" in stderr, stderr
    assert 3 <= elapsed < 60, elapsed


def test_read_only_cache_with_the_build_is_used(built, fw, tmp_path):
    cache = copy_of(built, fw, tmp_path)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in cache.rglob("*"))
    with read_only(cache):
        status, stderr, _ = run_load(fw, cache)
    assert status == KERNEL, stderr
    assert "UserWarning" not in stderr, stderr
    assert sorted((str(p), p.stat().st_mtime_ns) for p in cache.rglob("*")) == before


def test_read_only_cache_without_the_build_means_stock_ops_with_a_warning(fw, tmp_path):
    cache = tmp_path / "extensions"
    cache.mkdir()
    with read_only(cache):
        status, stderr, _ = run_load(fw, cache)
    assert status == STOCK, stderr
    assert warnings_in(stderr) == 1, stderr
    assert "could not be built" in stderr, stderr
