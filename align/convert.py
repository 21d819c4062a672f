"""Convert weights between a zoo model's torch and Paddle checkpoints, strictly and losslessly.

    python -m align convert --model retina_r50 --src model.pth --dst model.pdparams
    python -m align convert --model resnet50 --src torchvision_resnet50.pth --dst r50.pdparams

The direction comes from the file types (.pdparams is Paddle; .pt/.pth/.bin/.ckpt are torch, else a zip
file is torch). Strict: the source must hold exactly the keys of the model, with the model's shapes; every
missing, unexpected and mis-shaped key is reported in one error (exit status 2). Values are copied
bit-exactly (Linear weights transposed), so torch -> Paddle -> torch gives back the same bytes. The library
is weights_convert (it knows no model names); this tool takes the layout from the zoo's twins.
"""
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
    cli_args.add_model(p, "forward")
    p.add_argument("--src", required=True, help="checkpoint to read (torch or Paddle)")
    p.add_argument("--dst", required=True, help="checkpoint to write (the other framework)")


def execute(args):
    from weights_convert.checkpoint_io import CheckpointError
    from weights_convert.convert import convert_file
    try:
        src_fw, dst_fw = convert_file(layout_for(args.model), args.src, args.dst)
    except CheckpointError as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    print(f"convert: {args.src} ({src_fw}) -> {args.dst} ({dst_fw}) for {args.model}")
    return 0


def main(argv=None):
    return cli_args.tool_main(__doc__, add_arguments, execute, argv)


if __name__ == "__main__":
    sys.exit(main())
