"""Pieces shared by the loss specs: the twin libraries, multi-output loss objects, NumPy-side plumbing,
and seeded input generators. Case names every spec uses (issue 3): random, extreme_logits, bin_edges,
no_positives, all_ignored, single_element, large_batch (+ momentum_steps for GHM)."""
import numpy as np

from align.loss_specs import LossSpec

CASE_NAMES = ("random", "extreme_logits", "bin_edges", "no_positives", "all_ignored", "single_element",
              "large_batch")


def torch_losses():
    import torch_ref.losses as lib
    return lib


def paddle_losses():
    import paddle_impl.losses as lib
    return lib


def numpy_losses():
    """align.numpy_ref exposes the same function names as the twins, returning (value, grads)."""
    import align.numpy_ref as lib
    return lib


class MultiLoss:
    """One loss run in several configurations on the same inputs: {name: output}. Every output is logged
    and their sum is back-propagated. `parts` values are loss callables (modules for stateful losses)."""

    def __init__(self, parts):
        self.parts = dict(parts)

    def __call__(self, **inputs):
        return {name: fn(**inputs) for name, fn in self.parts.items()}


def numpy_multi(parts, inputs, grad_wrt):
    """The NumPy counterpart of MultiLoss: parts {name: fn(**inputs) -> (value, grads)} -> one step record."""
    outputs, grads = {}, {name: np.zeros(np.shape(inputs[name])) for name in grad_wrt}
    for name, fn in parts.items():
        value, part_grads = fn(**inputs)
        outputs[name] = np.asarray(value, dtype=np.float64)
        for key in grad_wrt:
            if key in part_grads:
                grads[key] = grads[key] + part_grads[key]
    return {"outputs": outputs, "grads": grads, "state": {}}


def stateless_reference(parts_fn):
    """numpy_reference for a stateless spec: parts_fn() -> {name: fn(**inputs) -> (value, grads)}."""
    def reference(steps, grad_wrt):
        return [numpy_multi(parts_fn(), step, grad_wrt) for step in steps]
    return reference


def stateless_spec(name, parts, make_cases, description):
    """A spec whose loss object is MultiLoss(parts(lib)) for lib = torch twin, Paddle twin or NumPy reference."""
    return LossSpec(name=name,
                    build_torch=lambda dtype: MultiLoss(parts(torch_losses())),
                    build_paddle=lambda dtype: MultiLoss(parts(paddle_losses())),
                    make_cases=make_cases,
                    numpy_reference=stateless_reference(lambda: parts(numpy_losses())),
                    description=description)


def logits(rng, shape, scale=3.0):
    return rng.normal(0.0, scale, size=shape)


def extreme_logits(rng, shape, exact=(-40.0, -30.0, 30.0, 40.0), exact_fraction=0.2):
    """Saturated logits: |x| uniform in [20, 40] with random signs, a fraction set exactly to `exact` values.
    (Not all exact: thousands of identical terms make float32 sums round systematically; Paddle's 16-lane
    CPU sum then drifts ~8 ulps where torch's cascade sum stays within 1, a kernel property, not a port error.)"""
    x = rng.uniform(20.0, 40.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    pick = rng.random(shape) < exact_fraction
    x[pick] = rng.choice(exact, size=int(pick.sum()))
    return x


def one_hot(rng, n, c, positive_fraction):
    """(N, C) float one-hot rows for a random `positive_fraction` of the N anchors, zero rows otherwise."""
    target = np.zeros((n, c))
    pos = rng.random(n) < positive_fraction
    target[np.flatnonzero(pos), rng.integers(0, c, size=int(pos.sum()))] = 1.0
    return target


def boxes(rng, n, scale=100.0, min_size=1.0):
    """(N, 4) x1y1x2y2 boxes with positive width and height."""
    xy = rng.random((n, 2)) * scale
    wh = rng.random((n, 2)) * scale * 0.5 + min_size
    return np.concatenate([xy, xy + wh], axis=1)


def jitter_boxes(rng, b, rel=0.2):
    """Predictions near `b`: each coordinate moved by up to rel x the box size, kept valid (x2 > x1)."""
    wh = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)
    out = b + rng.uniform(-rel, rel, size=b.shape) * wh
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1e-2)
    return out


def weights(rng, shape, zero_fraction=0.1):
    """Non-negative weights with some exact zeros (ignored elements)."""
    w = rng.random(shape) + 0.5
    w[rng.random(shape) < zero_fraction] = 0.0
    return w
