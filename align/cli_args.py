"""The argument definitions every tool shares, and the one way a tool's command line runs.

A tool module defines add_arguments(parser) and execute(args) -> exit status; `python align/<tool>.py` and
`python -m align <tool>` (align/cli.py) both parse with the same definitions. Bad arguments exit 2 (argparse)
before anything is computed: paths are checked for what they must be (an --out that can be written, a
--data or --weights that exists), numbers for their range. An expected error later on (a ValueError or an
OSError: a bad file, a checkpoint that does not fit) is one line on stderr and exit 2; --debug shows the
traceback. SIGTERM ends a tool like Ctrl-C does, so its temporary files are removed.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
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
    p.add_argument("--seed", type=seed_int, default=0, help=help)


def add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="reports", type=writable_dir, help="report root (default: reports)")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=existing_path,
                   help="COCO-format set: root, image folder or instances json "
                        "(default: the bundled synthetic set, generated under data/ on first use)")


def add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=existing_file,
                   help="torch checkpoint (state_dict) to load instead of the seeded init")
    p.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf values in --weights")
    p.add_argument("--cast", action="store_true",
                   help="cast integer, float16 or bfloat16 tensors of --weights to the model's float dtype "
                        "(refused by default)")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


seed_int = nonnegative_int          # a NumPy seed: an integer >= 0


def writable_dir(text: str) -> str:
    """A folder that is, or can be created, and written: not a file, its nearest existing ancestor writable."""
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    problem = cannot_write_under(path)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {problem}")
    return text


def cannot_write_under(path: str) -> str | None:
    """Why `path` (a folder, or a file to be written) cannot be created under its nearest existing ancestor,
    or None. A real write tells more than os.access, which says yes to root even on a read-only mount."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe!r} is a file"
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        return f"cannot write in {probe!r} ({e.strerror or type(e).__name__})"
    return None


def existing_path(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file" if os.path.exists(text) else
                                         f"{text!r} does not exist")
    return text


def exit_cleanly_on_signals() -> None:
    """SIGTERM raises SystemExit like SIGINT raises KeyboardInterrupt, so `finally` blocks and the atomic
    writers remove their temporary files (twin_common/atomic.py, align/report_folder.py, align/store.py)."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block): `prog: error: message`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (-h lists the arguments)\n")


def new_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug(p)
    return p


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def run_tool(args: argparse.Namespace, execute: Callable) -> int:
    """execute(args), an expected error (ValueError, OSError) as one line on stderr and exit 2."""
    exit_cleanly_on_signals()
    try:
        return execute(args)
    except (ValueError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        prog = args.parser.prog if getattr(args, "parser", None) else "align"
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


def tool_main(doc: str | None, add_arguments: Callable, execute: Callable, argv: list[str] | None = None,
              prog: str | None = None) -> int:
    """Parse argv with the tool's definitions, then run it (frameworks configured once, align.runtime)."""
    p = new_parser(doc, prog)
    add_arguments(p)
    args = p.parse_args(argv)
    args.parser = p
    return run_tool(args, execute)
