"""Process-wide framework settings every alignment tool applies before it runs anything."""
from __future__ import annotations

import os


def configure_frameworks(threads: int | None = None) -> int:
    """Deterministic, CPU-friendly settings for torch and Paddle (GPU: no TF32, deterministic kernels).

    threads: torch's intra-op threads (default OMP_NUM_THREADS when set, else the CPUs, at most 8).
    ALIGN_TORCH_ONEDNN=0 turns torch's oneDNN CPU kernels off for the whole run (as
    torch.backends.mkldnn.enabled = False would): benchmarks/float32_stability.py runs the float32 checks
    both ways."""
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")       # Paddle enables TF32 on Ampere+ by default
    os.environ.setdefault("FLAGS_cudnn_deterministic", "1")
    import torch
    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    threads = threads or (int(env_threads) if env_threads.isdigit() and int(env_threads) > 0 else
                          max(1, min(os.cpu_count() or 1, 8)))
    if os.environ.get("ALIGN_TORCH_ONEDNN", "1") == "0":
        torch.backends.mkldnn.enabled = False
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return threads
