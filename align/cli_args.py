"""The argument definitions every tool shares, and the one way a tool's command line runs.

A tool module defines add_arguments(parser) and execute(args) -> exit status; `python align/<tool>.py` and
`python -m align <tool>` (align/cli.py) both parse with the same definitions. Bad arguments exit 2 (argparse)
before anything is computed.
"""
from __future__ import annotations

import argparse
from typing import Callable

from align.compare import DTYPES


def add_model(p: argparse.ArgumentParser, level: str, required: bool = True, default: str | None = None) -> None:
    """--model, its choices the zoo's models that `level`'s tool runs."""
    from align import zoo
    choices = zoo.names(level)
    suffix = f" (default: {default})" if default else ""
    p.add_argument("--model", required=required and default is None, default=default, choices=choices,
                   metavar="MODEL", help=f"one of: {', '.join(choices)}{suffix}")


def add_pair(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pair", metavar="FILE.py", help="your own pair: a Python file defining build_pair(dtype) -> "
                   "(torch_model, paddle_model, inputs) (align/pair_file.py; instead of --model)")


def model_or_pair(args: argparse.Namespace) -> None:
    """Exactly one of --model and --pair (exit 2 otherwise)."""
    if bool(getattr(args, "model", None)) == bool(getattr(args, "pair", None)):
        args.parser.error("give one of --model or --pair")


def add_save_tensors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-tensors", default="failing", choices=("failing", "all", "none"),
                   help="tensors the reprod_log files keep whole: the failing keys and the first divergence "
                        "(default), all, or none; the others keep their statistics")


def add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float64", choices=DTYPES,
                   help="float64 proves semantics, float32 measures rounding (default: float64)")


def add_seed(p: argparse.ArgumentParser, help: str = "seed of the NumPy generator behind inputs and weights") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="reports", help="report root (default: reports)")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="COCO-format set: root, image folder or instances json "
                                  "(default: the bundled synthetic set, generated under data/ on first use)")


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="torch checkpoint (state_dict) to load instead of the seeded init")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def new_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def tool_main(doc: str | None, add_arguments: Callable, execute: Callable, argv: list[str] | None = None,
              prog: str | None = None) -> int:
    """Parse argv with the tool's definitions, then run it (frameworks configured once, align.runtime)."""
    p = new_parser(doc, prog)
    add_arguments(p)
    args = p.parse_args(argv)
    args.parser = p
    return execute(args)
