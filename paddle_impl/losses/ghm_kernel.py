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
The first build takes ~15 s; later processes spend ~2 s in Paddle's up-to-date check.

Locking: one build at a time is ensured by an flock on <name>.lock in that directory, which the OS releases
when its holder dies, so a build killed with SIGKILL never blocks the next (Paddle's load has no lock of its
own). A process that cannot take the flock within GHM_KERNEL_LOCK_TIMEOUT seconds (default 300) warns and
runs the stock ops. A read-only directory holding the built library is loaded without writing to it (load
would write its setup.py, build files and generated Python API); one without it means the stock ops, with a
warning.

What the build prints goes to <name>.build.log in that directory; the warning of a failed build ends with the
log's last lines.
"""
import contextlib
import functools
import hashlib
import os
import platform
import sys
import tempfile
import time
import warnings

import paddle

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ghm_kernel.cc")
CXX_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd")
LD_FLAGS = ("-lmvec",)       # a tuple: cpp_extension.load may extend the list it is given
SWITCH = "PADDLE_IMPL_CPU_KERNELS"
LOCK_TIMEOUT = "GHM_KERNEL_LOCK_TIMEOUT"   # seconds to wait for another process's build (default 300)
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
    for part in (SOURCE, " ".join(list(CXX_FLAGS) + list(LD_FLAGS)), paddle.__version__, _cpu_flags()):
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
    cpp_extension.load would write there (its setup.py, the build, the generated Python API) and fail. The
    ops are registered from the library as load does, and their Python API is generated in a temporary
    directory instead of beside the library."""
    from paddle.utils.cpp_extension import extension_utils
    library = os.path.join(build_dir, name + ".so")
    if not os.path.isfile(library):
        raise FileNotFoundError(f"the extension directory {build_dir} is read-only and holds no build")
    op_names = extension_utils.load_op_meta_info_and_register_op(library)
    with tempfile.TemporaryDirectory() as api_dir:         # the module is in memory once imported
        return extension_utils._generate_python_module(name, op_names, api_dir)


def _build(cpp_extension, name, root):
    """cpp_extension.load under our lock (one build at a time when processes start together), or None if
    another process holds it past the lock timeout."""
    with open(os.path.join(root, name + ".lock"), "a") as lock:
        if not _take_lock(lock, _lock_timeout()):
            return None
        with _output_to(os.path.join(root, name + ".build.log")):
            return cpp_extension.load(name=name, sources=[SOURCE], extra_cxx_cflags=list(CXX_FLAGS),
                                      extra_ldflags=list(LD_FLAGS))


def build():
    """Compile the kernel (or find it up to date) and import it; None, with a warning, where that fails or
    another process's build holds the lock past GHM_KERNEL_LOCK_TIMEOUT seconds.
    Call it once per process (load does): Paddle imports already registered ops as an empty module."""
    from paddle.utils import cpp_extension
    log_path = None
    try:
        name = build_name()
        root = cpp_extension.get_build_directory()
        build_dir = os.path.join(root, name)
        if _writable(root, build_dir):
            log_path = os.path.join(root, name + ".build.log")
            module = _build(cpp_extension, name, root)
            if module is None:
                warnings.warn(f"GHM-C CPU kernel: another process has held its build lock ({root}/{name}.lock) "
                              f"for {_lock_timeout():g} s; using Paddle's stock ops (same results, slower). "
                              f"{LOCK_TIMEOUT} sets the wait.")
                return None
        else:
            module = _load_read_only(name, build_dir)
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
