"""GHM-C's fused CPU kernels (ghm_kernel.cc), compiled on first use with torch.utils.cpp_extension.

Why: at 100k anchors x 80 classes GHM-C composed of torch's stock CPU ops makes ~15 passes over anchors x
classes and allocates several fresh buffers (~10 ms each in page faults); it runs only ~3x faster than
mmdetection's per-bin loop, at the target's edge. Two passes in C++ (the bin counts; then the weighted BCE
with its closed-form gradient, binning each element again) replace them, and allocate one anchors x classes
buffer (the gradient). The Paddle twin (paddle_impl/losses/ghm_kernel.*) has the same ops; the two are
written independently (ATen's Vectorized with Sleef's exp/log1p here, GCC-vectorised loops with glibc's
vector math there), so comparing the frameworks still compares two implementations.

Where the kernel cannot serve, ghm.py runs its stock-op path: the same definition, equal to rounding
(tests/test_ghm_kernel.py holds them to each other). That is the case for non-CPU tensors, where the build
fails (no C++ compiler, no ninja; a warning says why once), on platforms other than Linux, and with
TORCH_REF_CPU_KERNELS=0 in the environment.

The build is compiled for this CPU (-march=native, AVX2 code paths of ATen's Vectorized where the CPU has
AVX2 and FMA) into torch's extension directory (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions)
under a name that hashes the source (its text and its path), the flags, torch's version and the CPU's
feature flags: a changed source or another machine sharing the directory never loads a stale build. The
first build takes ~20 s; later processes load it in well under a second.

Locking: torch's own lock (a `lock` file in the build directory, which load waits on for as long as it
exists) outlives a build killed with SIGKILL and would hang every later process. So one build at a time is
ensured by an flock on <name>.lock in the root, which the OS releases when its holder dies; under it a
`lock` file left in the build directory is a dead build's and is removed. A process that cannot take the
flock within GHM_KERNEL_LOCK_TIMEOUT seconds (default 300) warns and runs the stock ops. A read-only
directory holding the built library is loaded without writing to it (load would write its lock and
ninja's files); one without it means the stock ops, with a warning.

The ops register as torch.ops.torch_ref_ghm.{ghm_slots, ghm_counts, ghm_harmonized_bce}. What the build prints
goes to <name>.build.log in that directory (its root, beside py311_cu*/ when the variable is unset); the
warning of a failed build ends with the log's last lines.
"""
import contextlib
import functools
import hashlib
import logging
import os
import platform
import sys
import time
import warnings

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ghm_kernel.cc")
NAMESPACE = "torch_ref_ghm"
SWITCH = "TORCH_REF_CPU_KERNELS"
LOCK_TIMEOUT = "GHM_KERNEL_LOCK_TIMEOUT"   # seconds to wait for another process's build (default 300)
OPS = ("ghm_slots", "ghm_counts", "ghm_harmonized_bce")
LD_FLAGS = ("-fopenmp",)     # a tuple: cpp_extension.load appends its own flags to the list it is given


@functools.lru_cache(maxsize=None)
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def cxx_flags():
    """-O3 for this CPU; ATen's AVX2 Vectorized where the CPU has it (else its portable one); -fopenmp so
    that at::parallel_for runs on torch's threads (it is inline, OpenMP in ATen's builds for Linux)."""
    flags = ["-O3", "-march=native", "-fopenmp"]
    if {"avx2", "fma"} <= set(_cpu_flags().split()):
        flags += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


def build_name():
    digest = hashlib.sha1()
    with open(SOURCE, "rb") as f:
        digest.update(f.read())
    for part in (SOURCE, " ".join(cxx_flags() + list(LD_FLAGS)), torch.__version__, _cpu_flags()):
        digest.update(part.encode())
    return "ghm_kernel_" + digest.hexdigest()[:12]


def enabled():
    return os.environ.get(SWITCH, "1") != "0" and platform.system() == "Linux"


_loaded = {}      # "module": what build() returned; torch registers a library namespace once per process


def load():
    """The ops (torch.ops.torch_ref_ghm: ghm_slots, ghm_counts, ghm_harmonized_bce), built once per process,
    or None."""
    if "module" not in _loaded:
        _loaded["module"] = build()
    return _loaded["module"]


def _import_cpp_extension():
    """torch.utils.cpp_extension, without the CUDA_HOME warning its import logs on torch's CUDA build (moot
    for a CPU kernel)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


@contextlib.contextmanager
def _ninja_on_path():
    """torch builds with the `ninja` command; the ninja package (a dependency) puts it next to the venv's
    python, which is not on PATH when that python runs without the venv activated."""
    saved = os.environ.get("PATH", "")
    try:
        import ninja
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + saved
    except ImportError:                                    # a system ninja may still serve
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = saved


@contextlib.contextmanager
def _output_to(path):
    """Inside the block, send what is written to stdout and stderr to the file at `path` (truncated): Python's
    writes, C code's and the compiler subprocesses' (they inherit file descriptors 1 and 2)."""
    # Why: a build prints chatter (compiler notes, ABI or ninja messages) in the process that loads it, which a
    # normal run should not show; it goes to a log instead, and the warning of a failed build quotes its end.
    with open(path, "w", buffering=1) as log:             # line-buffered: its lines stay in order
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):       # what logging handlers bound to them hold back
                if stream is not None:
                    stream.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _lock_timeout():
    return float(os.environ.get(LOCK_TIMEOUT, "300"))


def _take_lock(lock, timeout):
    """flock `lock` (an open file) within `timeout` seconds; False if another process holds it that long.
    Why flock: the OS releases it when its holder dies, so a killed build never blocks the next one."""
    import fcntl  # Linux only, as is the kernel (see enabled)

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def _writable(*directories):
    return all(os.access(d, os.W_OK) for d in directories if os.path.isdir(d))


def _load_read_only(name, build_dir):
    """A read-only cache (e.g. one baked into an image) is used as it is when it holds the built library:
    cpp_extension.load would write there (its lock file, ninja's files) and fail."""
    library = os.path.join(build_dir, name + ".so")
    if not os.path.isfile(library):
        raise FileNotFoundError(f"the extension directory {build_dir} is read-only and holds no build")
    torch.ops.load_library(library)


def _build(cpp_extension, name, root, build_dir):
    """cpp_extension.load under our lock (one build at a time when processes start together), or None if
    another process holds it past the lock timeout."""
    with open(os.path.join(root, name + ".lock"), "a") as lock:
        if not _take_lock(lock, _lock_timeout()):
            return None
        # Under our lock no process of ours is building, so torch's `lock` (its FileBaton, on which load
        # would wait forever) is a killed build's.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(build_dir, "lock"))
        with _ninja_on_path(), _output_to(os.path.join(root, name + ".build.log")):
            return cpp_extension.load(name=name, sources=[SOURCE], extra_cflags=cxx_flags(),
                                      extra_ldflags=list(LD_FLAGS), build_directory=build_dir,
                                      is_python_module=False, with_cuda=False, verbose=False)


def build():
    """Compile the kernel (or find it up to date) and load it; None, with a warning, where that fails or
    another process's build holds the lock past GHM_KERNEL_LOCK_TIMEOUT seconds.
    Call it once per process (load does): a second library registering the namespace is an error."""
    log_path = None
    try:
        cpp_extension = _import_cpp_extension()
        name = build_name()
        root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
        os.makedirs(root, exist_ok=True)
        build_dir = cpp_extension._get_build_directory(name, False)   # torch's layout (py311_cu*/ by default)
        if _writable(root, build_dir):
            log_path = os.path.join(root, name + ".build.log")
            if _build(cpp_extension, name, root, build_dir) is None:
                warnings.warn(f"GHM-C CPU kernel: another process has held its build lock ({root}/{name}.lock) "
                              f"for {_lock_timeout():g} s; using torch's stock ops (same results, slower). "
                              f"{LOCK_TIMEOUT} sets the wait.")
                return None
        else:
            _load_read_only(name, build_dir)
        ops = getattr(torch.ops, NAMESPACE)
        missing = [op for op in OPS if not hasattr(ops, op)]
        if missing:
            raise RuntimeError(f"the built library lacks {missing}")
        return ops
    except Exception as exc:                               # any build failure: fall back, never fail the loss
        tail = ""
        if log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-20:]).rstrip()
        warnings.warn(f"GHM-C CPU kernel could not be built ({type(exc).__name__}: {exc}); "
                      f"using torch's stock ops (same results, slower). Set {SWITCH}=0 to skip the attempt."
                      + (f"\nThe end of the build's output ({log_path}):\n{tail}" if tail else ""))
        return None


@contextlib.contextmanager
def disabled():
    """Run torch's GHM-C on its stock-op path inside the block (sets the switch, then restores it)."""
    saved = os.environ.get(SWITCH)
    os.environ[SWITCH] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[SWITCH]
        else:
            os.environ[SWITCH] = saved


def status():
    """What torch's GHM-C has run on CPU in this process, for reports; None before its first call."""
    if not enabled():
        return f"stock ops ({SWITCH}=0 or not Linux)"
    if "module" not in _loaded:
        return None
    return "fused CPU kernel" if _loaded["module"] is not None else "stock ops (the kernel could not be built)"


def for_tensor(pred):
    """The kernel's ops if they apply to `pred` (a CPU tensor, kernels enabled and built), else None."""
    if not enabled() or pred.device.type != "cpu":
        return None
    return load()
