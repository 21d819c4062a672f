"""Convert weights between a zoo model's torch and Paddle checkpoints, strictly and losslessly.

    python -m align convert --model retina_r50 --src model.pth --dst model.pdparams
    python -m align convert --model resnet50 --src torchvision_resnet50.pth --dst r50.pdparams

The direction comes from the file types (.pdparams is Paddle; .pt/.pth/.bin/.ckpt/.tar are torch; another
suffix: a zip is torch, a pickle Paddle). No code from a checkpoint runs: torch files load with
weights_only=True, Paddle pickles with an unpickler that admits only arrays. Strict: the source must hold
exactly the keys of the model, with the model's shapes; every missing, unexpected and mis-shaped key is
reported in one error. Then the values: NaN/Inf (unless --allow-nonfinite) and integer, bool, float16 or
bfloat16 tensors where the model holds float32/float64 (unless --cast) are refused, naming the keys.
Values are copied bit-exactly (Linear weights transposed), so torch -> Paddle -> torch gives back the same
keys, shapes, dtypes and values (not the same file bytes: torch.save names the zip's inner folder at
random). Bad paths are refused before the model is built. Exit status: 0 converted, 2 refused (the reason
on stderr; one line for a bad path). The library is weights_convert (it knows no model names); this tool
takes the layout from the zoo's twins.
"""
import os
import sys
from functools import lru_cache
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align import cli_args, zoo  # noqa: E402


@lru_cache(maxsize=None)
def layout_for(model_name):
    """The expected keys and shapes of a zoo model on both sides."""
    from weights_convert.convert import layout_from_models
    spec = zoo.get_spec(model_name)
    return layout_from_models(*zoo.build_twins(spec), spec.key_rule)


def add_arguments(p):
    from weights_convert.checkpoint_io import KNOWN_SUFFIXES
    cli_args.add_model(p, "forward")
    p.add_argument("--src", required=True, help=f"checkpoint to read; suffixes {KNOWN_SUFFIXES}, "
                                                "else a zip is torch and a pickle Paddle")
    p.add_argument("--dst", required=True, help="checkpoint to write, of the other framework (a known suffix); "
                                                "written atomically, folders created")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN/Inf values (refused by default, naming the keys)")
    p.add_argument("--cast", action="store_true",
                   help="convert integer, bool, float16 and bfloat16 tensors to the model's float32/float64 "
                        "(refused by default, naming the keys); integer buffers such as num_batches_tracked "
                        "stay as they are")


def path_problem(src, dst):
    """Why src/dst cannot be converted (one line), or None: checked before any model is built."""
    from weights_convert.checkpoint_io import CheckpointError, framework_of
    if not os.path.isfile(src):
        return f"{src}: no such file" if not os.path.exists(src) else f"{src}: not a file"
    if os.path.isdir(dst):
        return f"{dst}: is a directory (give a file name)"
    try:
        src_fw, dst_fw = framework_of(src), framework_of(dst, must_exist=False)
    except CheckpointError as e:
        return str(e)
    if src_fw == dst_fw:
        return f"{src} and {dst} are both {src_fw} checkpoints: nothing to convert"
    problem = cli_args.cannot_write_under(os.path.dirname(os.path.abspath(dst)))   # atomic_path makes the rest
    return f"{dst}: {problem}" if problem else None


def _error(message):
    print(f"convert: error: {message}", file=sys.stderr)
    return 2


def execute(args):
    from weights_convert.checkpoint_io import CheckpointError
    from weights_convert.convert import convert_file
    problem = path_problem(args.src, args.dst)
    if problem:
        return _error(problem)
    try:
        src_fw, dst_fw = convert_file(layout_for(args.model), args.src, args.dst,
                                      allow_nonfinite=args.allow_nonfinite, cast=args.cast)
    except CheckpointError as e:
        return _error(e)
    except OSError as e:                       # the write failed after all (disk full, a race)
        return _error(f"{args.dst}: {e.strerror or e}")
    print(f"convert: {args.src} ({src_fw}) -> {args.dst} ({dst_fw}) for {args.model}")
    return 0


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
