"""One command line over the alignment library: `python -m align <tool>` or `torch2paddle-align <tool>`.

    python -m align list                                   # every model, its family and the tools it runs
    python -m align forward --model retina_r50 [--dtype float32]
    python -m align loss --loss ghmc
    python -m align assign --assigner atss|tal              # PP-YOLOE's assigners, torch vs Paddle vs NumPy
    python -m align backward|train|metric --model M ...
    python -m align data | gate --regenerate | convert --model M --src A --dst B

Each subcommand takes the arguments of its tool (align/<tool>_diff.py, gate.py, convert.py: the same
definitions, align/cli_args.py); `python -m align <tool> -h` lists them.
"""
from __future__ import annotations

import importlib
import sys

from align import cli_args

TOOLS = {                                         # subcommand -> module with add_arguments/execute
    "forward": "align.forward_diff",
    "loss": "align.loss_diff",
    "assign": "align.assign_diff",
    "backward": "align.backward_diff",
    "train": "align.train_diff",
    "metric": "align.metric_diff",
    "data": "align.data_diff",
    "gate": "align.gate",
    "convert": "align.convert",
}


def list_models(args) -> int:
    from align import manifest, zoo
    gated = {}
    for check in manifest.checks():
        if check.model:
            gated.setdefault(check.model, set()).add(check.tool)
    print(f"{'model':18s} {'family':10s} {'tools':34s} description")
    for name in zoo.names():
        spec = zoo.get_spec(name)
        tools = ",".join(level + ("*" if level in gated.get(name, ()) else "") for level in spec.levels())
        print(f"{name:18s} {spec.family:10s} {tools:34s} {spec.description}")
    print("(* = in the CI gate's manifest)")
    return 0


def build_parser():
    p = cli_args.new_parser(__doc__, prog="python -m align")
    sub = p.add_subparsers(dest="tool", required=True, metavar="TOOL")
    ls = sub.add_parser("list", help="the zoo's models and the tools each runs")
    ls.set_defaults(execute=list_models)
    for name, module_name in TOOLS.items():
        module = importlib.import_module(module_name)
        doc = module.__doc__ or ""
        sp = sub.add_parser(name, help=doc.strip().splitlines()[0] if doc else name, description=doc,
                            formatter_class=p.formatter_class)
        cli_args.add_debug(sp)
        module.add_arguments(sp)
        sp.set_defaults(execute=module.execute)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    args.parser = p
    return cli_args.run_tool(args, args.execute)


if __name__ == "__main__":
    sys.exit(main())
