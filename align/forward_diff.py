"""Does the Paddle twin compute the same function as the torch model? Which layer diverges first?

    python align/forward_diff.py --model retina_r50 [--dtype float32|float64] [--weights TORCH_CKPT]
                                 [--out DIR] [--seed N] [--input-shape N,3,H,W]
    python align/forward_diff.py --list

Builds the torch model (seeded init, or --weights), converts its weights into the Paddle twin, feeds
identical seeded inputs, runs both in eval mode and compares every named submodule's output, the head
outputs, the anchors and the post-processed detections. Writes DIR/<model>/forward/{torch.npy, paddle.npy,
diff.txt, summary.json}; exit status 0 iff the check passed (2 for bad arguments or weights).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align.detections import float64_detection_view, pad_detections  # noqa: E402
from align.forward import align_forward  # noqa: E402
from align.report import worst_key  # noqa: E402
from align.runtime import configure_frameworks  # noqa: E402
from align.zoo import MODELS, build_models, get_spec  # noqa: E402


def detector_outputs(to_numpy):
    def outputs_fn(model, tensors):
        res = model.forward_with_detections(tensors["images"])
        res["detections"] = pad_detections(res["detections"], to_numpy, model.detections_per_img)
        return res
    return outputs_fn


def _torch_np(t):
    return t.detach().cpu().numpy()


def _paddle_np(t):
    return t.numpy()


def seeded_inputs(shape, seed):
    return {"images": np.random.default_rng(seed).normal(0.0, 1.0, size=shape)}


def run(model, dtype="float64", out="reports", weights=None, seed=0, input_shape=None):
    spec = get_spec(model)
    torch_model, paddle_model = build_models(spec, weights, seed)
    shape = tuple(input_shape or spec.input_shape)
    inputs = seeded_inputs(shape, seed)
    view = None
    if spec.outputs == "detector":
        t_fn, p_fn = detector_outputs(_torch_np), detector_outputs(_paddle_np)
        coder = torch_model.box_coder
        view = lambda r32, r64: float64_detection_view(r32, r64, shape[-2:], coder.means, coder.stds)  # noqa: E731
    else:
        t_fn = lambda m, t: m(t["images"])  # noqa: E731
        p_fn = lambda m, t: m(t["images"])  # noqa: E731
    out_dir = Path(out) / model / "forward"
    return align_forward(torch_model, paddle_model, inputs, dtype, str(out_dir), t_fn, p_fn,
                         check=f"forward:{model}",
                         extra={"model": model, "seed": seed, "weights": weights or "seeded init"},
                         float64_view=view)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS))
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--weights", help="torch checkpoint (state_dict) to load instead of the seeded init")
    p.add_argument("--out", default="reports", help="report root (default: reports)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-shape", help="N,3,H,W (default: the model's own)")
    p.add_argument("--list", action="store_true", help="list the available models")
    args = p.parse_args(argv)
    if args.list:
        for name in sorted(MODELS):
            print(f"{name:16s} {MODELS[name].description}")
        return 0
    if not args.model:
        p.error("--model is required (or --list)")
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
            assert len(shape) == 4 and shape[1] == 3
        except (ValueError, AssertionError):
            p.error(f"--input-shape must be N,3,H,W, got {args.input_shape!r}")
    configure_frameworks()
    from weights_convert.checkpoint_io import CheckpointError
    start = time.perf_counter()
    try:
        summary = run(args.model, args.dtype, args.out, args.weights, args.seed, shape)
    except CheckpointError as e:
        print(f"forward_diff: error: {e}", file=sys.stderr)
        return 2
    worst = worst_key(summary)
    print(f"forward_diff {args.model} {args.dtype}: {'PASSED' if summary['passed'] else 'FAILED'} "
          f"({summary['num_keys']} tensors, worst max_rel {worst[1]:.3e} at {worst[0]}, "
          f"first divergence: {summary['first_divergence']}, {time.perf_counter() - start:.1f}s)")
    print(f"report: {Path(args.out) / args.model / 'forward'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
