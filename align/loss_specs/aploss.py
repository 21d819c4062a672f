"""loss_diff spec of AP-Loss: the ranking loss alone (ap_loss) and the full APLoss (assignment + regression).

Steps with `logits`/`targets` call ap_loss and log {"loss"}; steps with `cls_logits`/`reg_preds`/`anchors`/
`annotations` call APLoss and log {"cls_loss", "reg_loss"}. Both frameworks use their custom backward, so the
compared gradients are the official AP-Loss gradients (not derivatives of the logged values). The NumPy side
is align/numpy_ref/aploss.py: the official per-positive loop and per-image assignment in float64.
"""
import importlib

import numpy as np

from align.loss_specs import LossCase, LossSpec
from align.numpy_ref import aploss as ref

NUM_CLASSES = 5


def _builder(module_name):
    """The same dispatching callable for both frameworks; only the imported twin differs."""
    def build(dtype):
        twin = importlib.import_module(module_name)
        module = twin.APLoss()

        def call(**inputs):
            if "logits" in inputs:
                return {"loss": twin.ap_loss(inputs["logits"], inputs["targets"])}
            cls_loss, reg_loss = module(**inputs)
            return {"cls_loss": cls_loss, "reg_loss": reg_loss}
        return call
    return build


def _targets(rng, shape, p_pos, p_ignored):
    u = rng.random(shape)
    return np.where(u < p_pos, 1, np.where(u < p_pos + p_ignored, -1, 0)).astype(np.int64)


def _anchors(grid=8, stride=8):
    """6 anchors per location (ratios 0.5, 1, 2 x scales 4, 4 sqrt 2), sizes on a 1/8 grid so that float32
    holds them exactly and both dtypes assign alike."""
    sizes = [(stride * s / np.sqrt(r), stride * s * np.sqrt(r)) for r in (0.5, 1, 2) for s in (4, 4 * np.sqrt(2))]
    half = np.round(np.array(sizes) * 4) / 8                      # half width, half height
    centres = (np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij"), -1)[..., ::-1] + 0.5) * stride
    centres = centres.reshape(-1, 1, 2)
    return np.concatenate([centres - half, centres + half], axis=-1).reshape(-1, 4)


def _annotations(rng, batch, slots, image=64):
    """Integer GT boxes, label -1 padding; the last image has no GT at all."""
    ann = np.full((batch, slots, 5), -1.0)
    for j in range(batch - 1):
        n = int(rng.integers(1, slots + 1))
        wh = rng.integers(16, 48, (n, 2))
        xy = rng.integers(0, image - wh + 1, (n, 2))
        ann[j, :n, :2], ann[j, :n, 2:4] = xy, xy + wh
        ann[j, :n, 4] = rng.integers(0, NUM_CLASSES, n)
    return ann


def make_cases(rng):
    ap = ("logits",)
    random = {"logits": 2 * rng.standard_normal((64, 20)), "targets": _targets(rng, (64, 20), 0.05, 0.1)}
    extreme_logits = rng.choice([-30.0, 30.0], (32, 10)) + np.where(rng.random((32, 10)) < 0.5, 0.0,
                                                                      rng.standard_normal((32, 10)))
    extreme = {"logits": extreme_logits, "targets": _targets(rng, (32, 10), 0.1, 0.05)}
    edges = {"logits": rng.integers(-6, 7, (24, 10)) / 2.0, "targets": _targets(rng, (24, 10), 0.1, 0.05)}
    no_pos = {"logits": rng.standard_normal((16, 8)), "targets": -(rng.random((16, 8)) < 0.2).astype(np.int64)}
    ignored = {"logits": rng.standard_normal((16, 8)), "targets": np.full((16, 8), -1, np.int64)}
    single = [{"logits": np.array([[0.7]]), "targets": np.array([[1]])},
              {"logits": np.array([[-0.3]]), "targets": np.array([[0]])}]
    large = {"logits": 1.5 * rng.standard_normal((16, 1000, 20)),
             "targets": _targets(rng, (16, 1000, 20), 0.0008, 0.05)}
    anchors = _anchors()
    module = {"cls_logits": rng.standard_normal((3, len(anchors), NUM_CLASSES)),
              "reg_preds": 0.7 * rng.standard_normal((3, len(anchors), 4)),
              "anchors": anchors, "annotations": _annotations(rng, 3, 4)}
    no_gt = dict(module, annotations=np.full((2, 3, 5), -1.0), cls_logits=module["cls_logits"][:2],
                 reg_preds=module["reg_preds"][:2])
    return [
        LossCase("random", [random], ap, "N(0, 4) logits, 5% positives, 10% ignored"),
        LossCase("extreme_logits", [extreme], ap, "logits at +-30, half of them exactly (ties)"),
        LossCase("bin_edges", [edges], ap, "logits on a 0.5 grid: negatives exactly at f -+ delta (ramp kinks, "
                 "threshold), tied positives"),
        LossCase("no_positives", [no_pos], ap, "targets 0 / -1 only: loss 0, zero gradient"),
        LossCase("all_ignored", [ignored], ap, "targets all -1"),
        LossCase("single_element", single, ap, "one positive alone, then one negative alone"),
        LossCase("large_batch", [large], ap, "16 x 1000 x 20 logits, ~250 positives pooled over the batch"),
        LossCase("module", [module], ("cls_logits", "reg_preds"),
                 "APLoss: assignment, AP-Loss and regression (quarter gradient); last image without GT"),
        LossCase("module_no_gt", [no_gt], ("cls_logits", "reg_preds"), "APLoss with no GT in any image"),
    ]


def numpy_reference(steps, grad_wrt):
    results = []
    for inputs in steps:
        if "logits" in inputs:
            loss, grad = ref.ap_loss_loop(inputs["logits"], inputs["targets"])
            outputs, grads = {"loss": np.float64(loss)}, {"logits": grad}
        else:
            outputs, grads = ref.aploss_module(inputs["cls_logits"], inputs["reg_preds"], inputs["anchors"],
                                               inputs["annotations"])
            outputs = {k: np.float64(v) for k, v in outputs.items()}
        results.append({"outputs": outputs, "grads": {k: grads[k] for k in grad_wrt}, "state": {}})
    return results


SPEC = LossSpec(
    name="aploss",
    build_torch=_builder("torch_ref.losses.aploss"),
    build_paddle=_builder("paddle_impl.losses.aploss"),
    make_cases=make_cases,
    numpy_reference=numpy_reference,
    description="AP-Loss (cccorn/AP-loss): ranking loss with the official custom gradient, anchor assignment, "
                "smooth L1 regression with the quarter gradient",
)
