"""GHM-C's fused CPU kernels (ghm_kernel.cc), compiled on first use with paddle.utils.cpp_extension.

Why: at 100k anchors x 80 classes Paddle's stock CPU kernels cost ~20 ms per fresh buffer and ~110 ms per
log1p, so GHM-C composed of them runs only ~2.5x faster than mmdetection's per-bin loop (the target is 3x).
Two passes in C++ (the bin counts; then the weighted BCE with its closed-form gradient, binning each element
again) replace about fifteen, and allocate one anchors x classes buffer (the gradient). The torch twin
(torch_ref/losses/ghm_kernel.*) has the same ops, written with ATen's own tools.

Where the kernel cannot serve, ghm.py runs its stock-op path: the same definition, equal to rounding
(tests/test_ghm_kernel.py holds them to each other). That is the case for non-CPU tensors, where the build
fails (no C++ compiler, no glibc vector math; a warning says why once), on platforms other than Linux, and
with PADDLE_IMPL_CPU_KERNELS=0 in the environment.

The build is compiled for this CPU (-march=native) into Paddle's extension directory (PADDLE_EXTENSION_DIR,
default ~/.cache/paddle_extensions) under a name that hashes the source (its text and its path), the flags,
Paddle's version and the CPU's feature flags: a changed source or another machine sharing the directory never
loads a stale build, and two checkouts never rebuild a library the other has loaded.
The first build takes ~15 s; later processes spend ~2 s in Paddle's up-to-date check. What the build prints
goes to <name>.build.log in that directory; the warning of a failed build ends with the log's last lines.
"""
import contextlib
import functools
import hashlib
import os
import platform
import sys
import warnings

import paddle

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ghm_kernel.cc")
CXX_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd"]
LD_FLAGS = ["-lmvec"]
SWITCH = "PADDLE_IMPL_CPU_KERNELS"
OPS = ("ghm_slots", "ghm_counts", "ghm_harmonized_bce")


@functools.lru_cache(maxsize=None)
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def build_name():
    digest = hashlib.sha1()
    with open(SOURCE, "rb") as f:
        digest.update(f.read())
    for part in (SOURCE, " ".join(CXX_FLAGS + LD_FLAGS), paddle.__version__, _cpu_flags()):
        digest.update(part.encode())
    return "ghm_kernel_" + digest.hexdigest()[:12]


def enabled():
    return os.environ.get(SWITCH, "1") != "0" and platform.system() == "Linux"


_loaded = {}      # "module": what build() returned; Paddle registers custom ops once per process


def load():
    """The compiled module (ops ghm_slots, ghm_counts, ghm_harmonized_bce), built once per process, or None."""
    if "module" not in _loaded:
        _loaded["module"] = build()
    return _loaded["module"]


@contextlib.contextmanager
def _output_to(path):
    """Inside the block, send what is written to stdout and stderr to the file at `path` (truncated): Python's
    writes (Paddle's logging handlers hold sys.stderr, whose writes reach descriptor 2), C code's and the
    setup.py subprocess's (it inherits file descriptors 1 and 2)."""
    # Why: Paddle's load prints chatter in every process that loads the kernel, even an up-to-date build
    # ("Compiling user custom op", setuptools' "running build", compiler command lines, "No ccache found", ...);
    # a normal run should not show it. It goes to a log instead, and the warning of a failed build quotes its end.
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


def build():
    """Compile the kernel (or find it up to date) and import it; None, with a warning, where that fails.
    Call it once per process (load does): Paddle imports already registered ops as an empty module."""
    import fcntl  # Linux only, as is the kernel (see enabled)

    from paddle.utils import cpp_extension
    log_path = None
    try:
        name = build_name()
        lock_path = os.path.join(cpp_extension.get_build_directory(), name + ".lock")
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)               # one build at a time when processes start together
            log_path = os.path.join(cpp_extension.get_build_directory(), name + ".build.log")
            with _output_to(log_path):
                module = cpp_extension.load(name=name, sources=[SOURCE], extra_cxx_cflags=CXX_FLAGS,
                                            extra_ldflags=LD_FLAGS)
        missing = [op for op in OPS if not hasattr(module, op)]
        if missing:
            raise RuntimeError(f"the built module lacks {missing}")
        return module
    except Exception as exc:                               # any build failure: fall back, never fail the loss
        tail = ""
        if log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-20:]).rstrip()
        warnings.warn(f"GHM-C CPU kernel could not be built ({type(exc).__name__}: {exc}); "
                      f"using Paddle's stock ops (same results, slower). Set {SWITCH}=0 to skip the attempt."
                      + (f"\nThe end of the build's output ({log_path}):\n{tail}" if tail else ""))
        return None


@contextlib.contextmanager
def disabled():
    """Run Paddle's GHM-C on its stock-op path inside the block (sets the switch, then restores it)."""
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
    """What Paddle's GHM-C has run on CPU in this process, for reports; None before its first call."""
    if not enabled():
        return f"stock ops ({SWITCH}=0 or not Linux)"
    if "module" not in _loaded:
        return None
    return "fused CPU kernel" if _loaded["module"] is not None else "stock ops (the kernel could not be built)"


def for_tensor(pred):
    """The kernel module if it applies to `pred` (a CPU tensor, kernels enabled and built), else None."""
    if not enabled() or not pred.place.is_cpu_place():
        return None
    return load()
