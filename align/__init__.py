"""Alignment of PyTorch models and their PaddlePaddle ports: forward, losses, gradients, training, metric.

    from align import build_pair, align_forward
    summary = align_forward(*build_pair("retina_r50"), "float64", "reports/x")

build_pair(name, seed=0, weights=None) -> (torch model, Paddle twin holding its weights, {name: ndarray});
align_forward / align_backward / align_train take any (torch module, Paddle layer) pair and a dict of NumPy inputs.
"""
import warnings

# Paddle warns on import that ccache is absent (it only matters when compiling extensions): not a user's
# concern, and a normal run prints no build chatter
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
# and that BatchNorm in train mode tracks running statistics (it always has: information, not a problem)
warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")

__all__ = ["align_backward", "align_forward", "align_train", "build_pair"]


def __getattr__(name):
    # lazily, so `import align.<module>` stays cheap and framework imports happen on first use
    if name == "build_pair":
        from align.zoo import build_pair
        return build_pair
    if name == "align_forward":
        from align.forward import align_forward
        return align_forward
    if name == "align_train":
        from align.train_align import align_train
        return align_train
    if name == "align_backward":
        from align.backward import align_backward
        return align_backward
    raise AttributeError(f"module 'align' has no attribute {name!r}")
