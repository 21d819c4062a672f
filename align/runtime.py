"""Process-wide framework settings every alignment tool applies before it runs anything."""
import os


def configure_frameworks(threads=None):
    """Deterministic, CPU-friendly settings for torch and Paddle (GPU: no TF32, deterministic kernels)."""
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")       # Paddle enables TF32 on Ampere+ by default
    os.environ.setdefault("FLAGS_cudnn_deterministic", "1")
    import torch
    threads = threads or max(1, min(os.cpu_count() or 1, 8))
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return threads
