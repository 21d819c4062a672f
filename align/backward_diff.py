"""One training step's gradients, torch vs Paddle, matched by parameter name.

    python align/backward_diff.py --model retina_r50_ghm [--dtype float32|float64] [--data COCO_DIR]
                                  [--out DIR] [--seed N]
    python align/backward_diff.py --model resnet50 [--dtype ...]     # a seeded projection of the logits

Same seeded weights, same first batch of the mirrored COCO loaders (the bundled synthetic set unless
--data), forward + loss + backward in train mode on both sides. Logs every loss term and the gradient of
every trainable parameter (Paddle names) in backward execution order (the loss terms, then the parameters
from the last used to the first), so the first divergence is the first gradient that differs as backward
computes them. float32: align.compare's rule, with torch's envelope over its two convolution backends and,
where float32 flipped decisions (ReLU masks, the anchor assignment), the float64 replay of each run's own
decisions (align.events.float32_verdicts). Writes DIR/<model>/backward/; exit 0 iff passed.
"""
import argparse
import contextlib
import sys
import time
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.backward import align_backward  # noqa: E402
from align.compare import compare_runs  # noqa: E402
from align.events import decisions_of, float32_verdicts  # noqa: E402
from align.forward import torch_kernel_variant  # noqa: E402
from align.forward_diff import seeded_inputs  # noqa: E402
from align.zoo import build_models, get_spec  # noqa: E402
from align.report import write_report  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from align.training import (TRAIN_MODELS, build_training_pair, paddle_grads, step_losses,  # noqa: E402
                            torch_grads, training_losses)
from align.train_data import first_batches  # noqa: E402


class StepRunner:
    """One training step of `name`, a side at a time. The pair and the first batch are built once per dtype;
    every pass clears the gradients and takes fresh losses (GHM's momentum state starts at zero), so each
    pass is the first step from the same weights."""

    def __init__(self, name, data, seed):
        self.name, self.data, self.seed, self.built = name, data, seed, {}

    def _pair(self, dtype):
        if dtype not in self.built:
            batches, self.num_classes = first_batches(self.data, 1, dtype, self.seed)
            (t_batch, p_batch), = batches
            t_model, _, p_model, _ = build_training_pair(self.name, self.num_classes, self.seed, dtype)
            t_model.train()
            p_model.train()
            self.built[dtype] = (t_model, t_batch, p_model, p_batch)
        return self.built[dtype]

    def torch(self, dtype, replay=None, variant=False):
        """({key: array}, decisions) of torch's step: the loss terms, then the gradients in backward order."""
        t_model, t_batch, p_model, _ = self._pair(dtype)
        t_model.zero_grad(set_to_none=True)
        t_loss, _ = training_losses(self.name, self.num_classes, t_model, p_model, dtype)
        with decisions_of(t_model, t_loss, dtype, replay) as decisions, \
                (torch_kernel_variant() if variant else contextlib.nullcontext()):
            terms = step_losses(t_model, t_loss, t_batch)
            sum(terms.values()).backward()
        log = OrderedDict((f"loss.{k}", v.detach().numpy().reshape(1)) for k, v in terms.items())
        # backward execution order: the loss, then parameters from the last used to the first
        log.update((f"grad.{k}", v) for k, v in reversed(list(torch_grads(t_model).items())))
        return log, decisions

    def paddle(self, dtype, replay=None):
        t_model, _, p_model, p_batch = self._pair(dtype)
        p_model.clear_gradients()
        _, p_loss = training_losses(self.name, self.num_classes, t_model, p_model, dtype)
        with decisions_of(p_model, p_loss, dtype, replay) as decisions:
            terms = step_losses(p_model, p_loss, p_batch)
            sum(terms.values()).backward()
        log = OrderedDict((f"loss.{k}", v.numpy().reshape(1)) for k, v in terms.items())
        log.update((f"grad.{k}", v) for k, v in paddle_grads(p_model).items())
        return log, decisions


# zoo models without a training recipe: gradients of a seeded random projection of their outputs
PROJECTION_MODELS = ("resnet50",)


def run_projection(name, dtype="float64", out="reports", seed=0):
    """Backward of a zoo model on seeded inputs with align.backward's projection objective."""
    spec = get_spec(name)
    torch_model, paddle_model = build_models(spec, None, seed)
    inputs = seeded_inputs(spec.input_shape, seed)
    return align_backward(torch_model, paddle_model, inputs, dtype, str(Path(out) / name / "backward"), seed,
                          check=f"backward:{name}", extra={"model": name, "seed": seed})


def run(name, dtype="float64", data=None, out="reports", seed=0):
    if name in PROJECTION_MODELS:
        return run_projection(name, dtype, out, seed)
    start = time.perf_counter()
    runner, flips = StepRunner(name, data, seed), None
    if dtype == "float64":
        (t, _), (p, _) = runner.torch(dtype), runner.paddle(dtype)
        results = compare_runs(dtype, t, p)
    else:
        results, t, p, flips = float32_verdicts(runner.torch, runner.paddle)
    unmatched = {"torch_only": [k for k in t if k not in p], "paddle_only": [k for k in p if k not in t]}
    extra = {"model": name, "seed": seed, "unmatched": unmatched, "order": "backward execution order",
             "num_parameters_compared": sum(k.startswith("grad.") for k in results),
             "seconds": time.perf_counter() - start}
    if flips is not None:
        extra["decision_flips"] = flips
        extra["notes"] = ("float32 flipped discrete decisions against float64 (decision_flips: ReLU elements per "
                          "site, assigned anchors per image); every key is judged by the float32-events rule on the "
                          "float64 replay of each run's own decisions")
    return write_report(str(Path(out) / name / "backward"), f"backward:{name}", dtype,
                        {k: t[k] for k in results}, {k: p[k] for k in results}, results, order=list(results),
                        extra=extra)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(TRAIN_MODELS) + list(PROJECTION_MODELS))
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--data", help="COCO-format directory (default: the bundled synthetic set)")
    ap.add_argument("--out", default="reports")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    configure_frameworks()
    summary = run(args.model, args.dtype, args.data, args.out, args.seed)
    print(f"backward_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_parameters_compared']} gradients, first divergence: {summary['first_divergence']})")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
