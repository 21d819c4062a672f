"""Loss speed: the project's vectorised losses against straightforward loop implementations, both frameworks.

    python benchmarks/bench_losses.py            # realistic sizes, checks the speed targets (exit 1 if missed)
    python benchmarks/bench_losses.py --quick    # small sizes: a smoke test of the same code paths

The loops below are the baselines, written as their authors wrote them: GHM-C as mmdetection's per-bin loop
(one .item() per bin), AP-Loss as cccorn/AP-loss's per-positive loop (one host sync per positive). Each
timing covers the loss value and the gradient w.r.t. the logits (forward + backward for autograd losses).
Before timing, every pair is checked to give the same value and gradient: in float64 to 1e-9 (at the quick
sizes, where the float64 loops are cheap) and in float32, the benchmark dtype, to FLOAT32_TOL (the gradient
of the GHM-C kernels on all elements but those within rounding of a bin edge; the table says how many).

GHM-C runs on the fused CPU kernels of both twins (*/losses/ghm_kernel.py); the rows "torch-stock" and
"paddle-stock" time their stock-op paths too, the fallback where a kernel cannot be built, for information
(not gated).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from align.loss_specs.ghm_common import EDGE_TOLERANCE  # noqa: E402
from align.numpy_ref.ghm import GHMCRef  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from benchmarks.targets import verdict, wall_times  # noqa: E402

TARGETS = {"AP-Loss": 10.0, "GHM-C": 3.0}
FULL = {"anchors": 100_000, "classes": 80, "positives": 200}
QUICK = {"anchors": 500, "classes": 8, "positives": 20}
FLOAT32_TOL = 1e-4          # max|ours - loop| / max|loop|; the loops' own float32 sums differ by ~1e-6


# ----------------------------------------------------------------------------------------- baselines, torch
def torch_ap_loop(logits, targets, delta=1.0):
    import torch
    grad = torch.zeros_like(logits)
    if targets.max() <= 0:
        return logits.new_zeros(()), grad
    labels_p = targets == 1
    fg = logits[labels_p]
    threshold = fg.min() - delta
    valid_n = (targets == 0) & (logits >= threshold)
    bg = logits[valid_n]
    bg_grad = torch.zeros_like(bg)
    prec = torch.zeros_like(fg)
    max_prec = 0
    for i in torch.argsort(fg):
        tmp1 = torch.clamp((fg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        tmp2 = torch.clamp((bg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        a = tmp1.sum() + 0.5
        b = tmp2.sum()
        tmp2 /= a + b
        current = a / (a + b)
        if max_prec <= current:
            max_prec = current
        else:
            tmp2 *= (1 - max_prec) / (1 - current)
        bg_grad += tmp2
        prec[i] = max_prec
    grad[valid_n] = bg_grad
    grad[labels_p] = -(1 - prec)
    num = len(fg)
    return 1 - prec.sum() / num, grad / num


def torch_ghmc_loop(pred, target, label_weight, bins=10, momentum=0.0, acc_sum=None):
    """mmdetection's GHMC.forward, literally; acc_sum (a tensor of bins) is updated in place with momentum."""
    import torch
    import torch.nn.functional as F
    edges = torch.arange(bins + 1, dtype=torch.float32) / bins
    edges[-1] += 1e-6
    edges = edges.to(pred.dtype)                            # what comparing with float32 edges promotes to
    weights = torch.zeros_like(pred)
    g = torch.abs(pred.sigmoid().detach() - target)
    valid = label_weight > 0
    tot = max(valid.float().sum().item(), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num_in_bin = inds.sum().item()
        if num_in_bin > 0:
            if momentum > 0:
                acc_sum[i] = momentum * acc_sum[i] + (1 - momentum) * num_in_bin
                weights[inds] = tot / acc_sum[i]
            else:
                weights[inds] = tot / num_in_bin
            n += 1
    if n > 0:
        weights = weights / n
    return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot


# ---------------------------------------------------------------------------------------- baselines, paddle
def paddle_ap_loop(logits, targets, delta=1.0):
    import paddle
    grad = paddle.zeros_like(logits)
    if targets.max() <= 0:
        return paddle.zeros([], dtype=logits.dtype), grad
    labels_p = targets == 1
    fg = logits[labels_p]
    threshold = fg.min() - delta
    valid_n = (targets == 0) & (logits >= threshold)
    bg = logits[valid_n]
    bg_grad = paddle.zeros_like(bg)
    prec = paddle.zeros_like(fg)
    max_prec = 0
    for i in paddle.argsort(fg):
        tmp1 = paddle.clip((fg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        tmp2 = paddle.clip((bg - fg[i]) / (2 * delta) + 0.5, min=0, max=1)
        a = tmp1.sum() + 0.5
        b = tmp2.sum()
        tmp2 /= a + b
        current = a / (a + b)
        if max_prec <= current:
            max_prec = current
        else:
            tmp2 *= (1 - max_prec) / (1 - current)
        bg_grad += tmp2
        prec[i] = max_prec
    grad[valid_n] = bg_grad
    grad[labels_p] = -(1 - prec)
    num = fg.shape[0]
    return 1 - prec.sum() / num, grad / num


def paddle_ghmc_loop(pred, target, label_weight, bins=10):
    import paddle
    import paddle.nn.functional as F
    edges = paddle.arange(bins + 1, dtype=paddle.float32) / bins
    edges[-1] += 1e-6
    edges = edges.astype(pred.dtype)                        # what comparing with float32 edges promotes to
    weights = paddle.zeros_like(pred)
    g = paddle.abs(F.sigmoid(pred).detach() - target)
    valid = label_weight > 0
    tot = max(valid.astype(paddle.float32).sum().item(), 1.0)
    n = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1]) & valid
        num_in_bin = inds.astype(paddle.int64).sum().item()
        if num_in_bin > 0:
            weights[inds] = tot / num_in_bin
            n += 1
    if n > 0:
        weights = weights / n
    return F.binary_cross_entropy_with_logits(pred, target, weights, reduction="sum") / tot


# ---------------------------------------------------------------------------------------------- adapters
class Torch:
    name = "torch"

    def __init__(self):
        import torch

        from torch_ref.losses import ghm_kernel
        from torch_ref.losses.aploss import ap_loss
        from torch_ref.losses.ghm import GHMC
        self.torch, self.ap_loss, self.ghmc, self.ghm_kernel = torch, ap_loss, GHMC(), ghm_kernel

    def tensors(self, logits, *rest):
        """Inputs converted once, outside the timing: the logits as a leaf that collects the gradient."""
        return (self.torch.tensor(logits, requires_grad=True),) + tuple(self.torch.tensor(a) for a in rest)

    @staticmethod
    def value_and_grad(fn, x, *args):
        x.grad = None
        loss = fn(x, *args)
        loss.backward()
        return loss.item(), x.grad.numpy()


class Paddle:
    name = "paddle"

    def __init__(self):
        import paddle

        from paddle_impl.losses import ghm_kernel
        from paddle_impl.losses.aploss import ap_loss
        from paddle_impl.losses.ghm import GHMC
        paddle.set_device("cpu")
        self.paddle, self.ap_loss, self.ghmc, self.ghm_kernel = paddle, ap_loss, GHMC(), ghm_kernel

    def tensors(self, logits, *rest):
        return (self.paddle.to_tensor(logits, stop_gradient=False),) + tuple(self.paddle.to_tensor(a) for a in rest)

    @staticmethod
    def value_and_grad(fn, x, *args):
        x.clear_gradient(False)
        loss = fn(x, *args)
        loss.backward()
        return loss.item(), x.grad.numpy()


def as_result(loss, grad):
    return loss.item(), grad.numpy()


def variants(fw):
    """{(loss, 'ours'|'loop'): fn(tensors) -> (value, gradient as numpy)} of one framework adapter."""
    loops = {"torch": (torch_ap_loop, torch_ghmc_loop), "paddle": (paddle_ap_loop, paddle_ghmc_loop)}[fw.name]
    return {
        ("ap", "ours"): lambda x, t: fw.value_and_grad(fw.ap_loss, x, t),
        ("ap", "loop"): lambda x, t: as_result(*loops[0](x.detach(), t)),
        ("ghmc", "ours"): lambda x, t, w: fw.value_and_grad(fw.ghmc, x, t, w),
        ("ghmc", "loop"): lambda x, t, w: fw.value_and_grad(loops[1], x, t, w),
    }


# ------------------------------------------------------------------------------------------------ inputs
def ap_inputs(rng, sizes, dtype):
    """Logits N(0, 1) (every negative above the threshold: the loop's worst and most common case)."""
    n, c = sizes["anchors"], sizes["classes"]
    logits = rng.standard_normal((n, c)).astype(dtype)
    targets = np.zeros((n, c), np.int64)
    targets[rng.random(n) < 0.05] = -1                       # ignored anchors
    targets.reshape(-1)[rng.choice(n * c, sizes["positives"], replace=False)] = 1
    return logits, targets


def ghmc_inputs(rng, sizes, dtype):
    n, c = sizes["anchors"], sizes["classes"]
    pred = (2 * rng.standard_normal((n, c))).astype(dtype)
    target = np.zeros((n, c), dtype)
    labels = rng.integers(0, c, n)
    fg = rng.random(n) < 0.1
    target[np.nonzero(fg)[0], labels[fg]] = 1
    weight = (rng.random((n, c)) > 0.05).astype(dtype)
    return pred, target, weight


# ------------------------------------------------------------------------------------------------- runner
def max_rel(ref, other):
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(np.asarray(ref, np.float64) - other))) / scale


def near_ghmc_edges(pred, target, bins=10):
    """Elements whose float64 g = |sigmoid(pred) - target| lies within EDGE_TOLERANCE of a GHM-C edge: one
    float32 ulp of sigmoid moves them across it, so two correct float32 implementations (Paddle's sigmoid
    kernel in the loop, the fused kernel's own) may put them in neighbouring bins with different weights."""
    ref = GHMCRef(bins)
    g, _ = ref.gradient_length(pred, target, np.ones_like(pred))
    e = ref.edges
    k = np.clip(np.searchsorted(e, g), 1, len(e) - 1)
    return np.minimum(np.abs(g - e[k - 1]), np.abs(g - e[k])) <= EDGE_TOLERANCE


def check_same(label, ours, loop, tol, skip=None):
    """Value and gradient of ours against the loop, the gradient where not `skip`; raises AssertionError
    naming the case."""
    value_err = abs(ours[0] - loop[0]) / max(abs(loop[0]), 1e-30)
    keep = slice(None) if skip is None else ~skip
    grad_err = max_rel(loop[1][keep], ours[1][keep])
    assert value_err <= tol and grad_err <= tol, (
        f"{label}: ours and the loop differ (value rel {value_err:.2e}, grad max_rel {grad_err:.2e} > {tol:g})")
    return max(value_err, grad_err)


def timed(fns, args, repeats):
    """{name: fn} -> ({name: best wall time of `repeats` calls}, {name: last result}). The calls take turns
    (a, b, a, b, ...), so a slow spell of the machine hits every contender alike. The float64 checks ran
    first: no lazy initialisation is left to time."""
    times, results = wall_times(fns, repeats, args)
    return {name: min(t) for name, t in times.items()}, results


def on_stock_ops(fw, fn):
    """fn with the framework's GHM-C on its stock-op path (the fallback where its fused CPU kernel cannot be
    built)."""
    def run(*args):
        with fw.ghm_kernel.disabled():
            return fn(*args)
    return run


def run(quick, seed=0):
    sizes = QUICK if quick else FULL
    frameworks = [Torch(), Paddle()]
    rng = np.random.default_rng(seed)
    cases = {"AP-Loss": ("ap", ap_inputs), "GHM-C": ("ghmc", ghmc_inputs)}
    # float64 equality first, at the quick sizes (the loops cost O(N P) there too)
    for loss, (key, make) in cases.items():
        args = make(np.random.default_rng(seed + 1), QUICK, np.float64)
        for fw in frameworks:
            fns, tensors = variants(fw), fw.tensors(*args)
            check_same(f"{loss} {fw.name} float64", fns[key, "ours"](*tensors), fns[key, "loop"](*tensors), 1e-9)
    rows = []
    for loss, (key, make) in cases.items():
        args = make(rng, sizes, np.float32)
        # float32 GHM-C on a kernel: elements on an edge to within rounding may bin apart from the loop (the
        # kernel's sigmoid is not the framework's); the stock rows use the loop's sigmoid and are compared whole
        near_edge = near_ghmc_edges(*args[:2]) if key == "ghmc" else None
        for fw in frameworks:
            fns, tensors = variants(fw), fw.tensors(*args)
            contenders = {"loop": fns[key, "loop"], fw.name: fns[key, "ours"]}
            if key == "ghmc":
                contenders[f"{fw.name}-stock"] = on_stock_ops(fw, fns[key, "ours"])
            repeats = 2 if key == "ap" and not quick else 5         # the AP-Loss loops take ~15 s a call
            times, results = timed(contenders, tensors, repeats)
            for name in [n for n in contenders if n != "loop"]:
                skip = near_edge if key == "ghmc" and name == fw.name else None
                err = check_same(f"{loss} {name} float32", results[name], results["loop"], FLOAT32_TOL, skip)
                rows.append({"loss": loss, "framework": name, "ours": times[name], "loop": times["loop"],
                             "speedup": times["loop"] / times[name], "max_rel": err,
                             "gated": not name.endswith("-stock"), "skipped": 0 if skip is None else int(skip.sum())})
    return sizes, rows


def render(sizes, rows, quick):
    size_text = {"AP-Loss": f"{sizes['positives']} pos in {sizes['anchors']}x{sizes['classes']}",
                 "GHM-C": f"{sizes['anchors']}x{sizes['classes']}"}
    lines = [f"{'loss':<8} {'size':<22} {'framework':<12} {'ours [s]':>9} {'loop [s]':>9} {'loop/ours':>9} "
             f"{'target':>7} {'max_rel':>9}  verdict"]
    missed = []
    for r in rows:
        target = TARGETS[r["loss"]]
        judged = (verdict(r["speedup"] >= target, quick, missed, f"{r['loss']} {r['framework']}") if r["gated"]
              else "fallback, not gated")
        lines.append(f"{r['loss']:<8} {size_text[r['loss']]:<22} {r['framework']:<12} {r['ours']:>9.3f} "
                     f"{r['loop']:>9.3f} {r['speedup']:>8.1f}x {target:>6.0f}x {r['max_rel']:>9.1e}  {judged}")
    skipped = max((r["skipped"] for r in rows), default=0)
    lines.append(f"note: the GHM-C kernels' gradients compared on all but {skipped} elements with g within "
                 f"{EDGE_TOLERANCE:.1e} of an edge (their float32 sigmoid may bin them apart from the loop's)")
    lines.append("note: torch-stock and paddle-stock are GHM-C on stock ops, as where the fused CPU kernel cannot "
                 "be built")
    lines.append("")
    lines.append("paddle / torch time ratio (> 1: paddle slower):")
    for loss in TARGETS:
        by_fw = {r["framework"]: r for r in rows if r["loss"] == loss}
        lines.append(f"  {loss:<8} ours {by_fw['paddle']['ours'] / by_fw['torch']['ours']:.2f}   "
                     f"loop {by_fw['paddle']['loop'] / by_fw['torch']['loop']:.2f}")
    return "\n".join(lines), missed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no speed targets (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    threads = configure_frameworks()
    sizes, rows = run(args.quick, args.seed)
    table, missed = render(sizes, rows, args.quick)
    print(f"CPU threads: {threads}; dtype float32; ours == loop checked (float64 <= 1e-9, "
          f"float32 <= {FLOAT32_TOL:g})")
    print(table)
    if missed:
        print("speed targets missed: " + ", ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
