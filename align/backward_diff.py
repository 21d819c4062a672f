"""One training step's gradients, torch vs Paddle, matched by parameter name.

    python align/backward_diff.py --model retina_r50_ghm [--dtype float32|float64] [--data COCO_DIR]
                                  [--out DIR] [--seed N]
    python align/backward_diff.py --model resnet50 [--dtype ...]     # a seeded projection of the logits

Same seeded weights, same first batch of the mirrored COCO loaders (the bundled synthetic set unless
--data), forward + loss + backward in train mode on both sides. Logs every loss term and the gradient of
every trainable parameter (Paddle names) in backward execution order (the loss terms, then the parameters
from the last used to the first), so the first divergence is the first gradient that differs as backward
computes them. float32: align.compare's rule, with torch's envelope over its two convolution backends and,
where float32 flipped ReLU decisions, the float64 replay of each run's masks (align/events.py). Writes DIR/<model>/backward/; exit 0 iff passed.
"""
import argparse
import contextlib
import sys
import time
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.compare import check_float32_events, compare_runs  # noqa: E402
from align.events import (call_flips, mask_flips, record_calls, record_relu_masks, replay_calls,  # noqa: E402
                          replay_relu_masks)
from align.backward import align_backward  # noqa: E402
from align.forward import torch_kernel_variant  # noqa: E402
from align.forward_diff import seeded_inputs  # noqa: E402
from align.zoo import build_models, get_spec  # noqa: E402
from align.report import write_report  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from align.training import (TRAIN_MODELS, build_training_pair, paddle_grads, step_losses,  # noqa: E402
                            torch_grads)
from align.train_data import first_batches  # noqa: E402


@contextlib.contextmanager
def decisions_of(model, loss, fw, dtype, replay=None):
    """Records (replay None) or replays the discrete decisions of one side's step: its ReLU masks and its
    loss's target assignment (align/events.py). Yields the dict the recording fills."""
    recorded = {}
    with contextlib.ExitStack() as stack:
        if replay is None:
            recorded["relu"] = stack.enter_context(record_relu_masks(model))
            if hasattr(loss, "assigner"):
                recorded["assign"] = stack.enter_context(record_calls(loss.assigner, "assign"))
        else:
            stack.enter_context(replay_relu_masks(model, replay["relu"]))
            if "assign" in replay:
                stack.enter_context(replay_calls(loss.assigner, "assign", replay["assign"], fw, dtype))
        yield recorded


def one_step(name, dtype, data, seed, replay=(None, None), variant=False):
    """One forward/backward in dtype: ({key: array} torch, {key: array} paddle, (torch, Paddle decisions)).

    replay: each side's decisions to replay (from an earlier one_step), or None to record them;
    variant: torch on its other convolution backend (align.forward.torch_kernel_variant)."""
    batches, num_classes = first_batches(data, 1, dtype, seed)
    (t_batch, p_batch), = batches
    t_model, t_loss, p_model, p_loss = build_training_pair(name, num_classes, seed, dtype)
    t_model.train()
    p_model.train()
    with decisions_of(t_model, t_loss, "torch", dtype, replay[0]) as t_dec, \
            (torch_kernel_variant() if variant else contextlib.nullcontext()):
        t_terms = step_losses(t_model, t_loss, t_batch)
        sum(t_terms.values()).backward()
    with decisions_of(p_model, p_loss, "paddle", dtype, replay[1]) as p_dec:
        p_terms = step_losses(p_model, p_loss, p_batch)
        sum(p_terms.values()).backward()
    t_out = OrderedDict((f"loss.{k}", v.detach().numpy().reshape(1)) for k, v in t_terms.items())
    p_out = OrderedDict((f"loss.{k}", v.numpy().reshape(1)) for k, v in p_terms.items())
    # backward execution order: the loss, then parameters from the last used to the first
    t_out.update((f"grad.{k}", v) for k, v in reversed(list(torch_grads(t_model).items())))
    p_out.update((f"grad.{k}", v) for k, v in paddle_grads(p_model).items())
    return t_out, p_out, (t_dec, p_dec)


def decision_flips(a, b):
    """{"relu": {site: n}, "assign": {image: n}} of the decisions that differ between two runs."""
    flips = {"relu": mask_flips(a["relu"], b["relu"])}
    if "assign" in a:
        flips["assign"] = call_flips(a["assign"], b["assign"])
    return {k: v for k, v in flips.items() if v}


def float32_results(name, data, seed):
    """float32 runs judged against float64 (align.compare); where float32 flipped a decision (a ReLU mask,
    an anchor's assignment) against float64 in any run, against the float64 replay of each run's own
    decisions (float32-events)."""
    t, p, (t_dec, p_dec) = one_step(name, "float32", data, seed)
    alt, _, (alt_dec, _) = one_step(name, "float32", data, seed, variant=True)
    t64, p64, (t64_dec, p64_dec) = one_step(name, "float64", data, seed)
    flips = {"torch_vs_float64": decision_flips(t_dec, t64_dec), "paddle_vs_float64": decision_flips(p_dec, p64_dec),
             "torch_variant_vs_float64": decision_flips(alt_dec, t64_dec),
             "torch_vs_paddle": decision_flips(t_dec, p_dec)}
    if not any(flips[k] for k in ("torch_vs_float64", "paddle_vs_float64", "torch_variant_vs_float64")):
        return compare_runs("float32", t, p, t64, p64, torch_variants=[(alt, t64)]), t, p, None
    ref_t, ref_p, _ = one_step(name, "float64", data, seed, replay=(t_dec, p_dec))
    ref_alt, _, _ = one_step(name, "float64", data, seed, replay=(alt_dec, p_dec))
    events = {f"{kind}_{who}": sum(flips[f"{who}_vs_float64" if who != "torch_vs_paddle" else who].get(kind, {}).values())
              for kind in ("relu", "assign") for who in ("torch", "paddle", "torch_vs_paddle")}
    events = {k: v for k, v in events.items() if v}
    results = OrderedDict(
        (k, check_float32_events(t[k], p[k], ref_t[k], ref_p[k], t64[k], p64[k], events,
                                 torch_variants=[(alt[k], ref_alt[k])]))
        for k in t if k in p)
    return results, t, p, flips


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
    flips = None
    if dtype == "float64":
        t, p, _ = one_step(name, dtype, data, seed)
        results = compare_runs(dtype, t, p)
    else:
        results, t, p, flips = float32_results(name, data, seed)
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
