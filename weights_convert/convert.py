"""Convert weights between a torch model and its Paddle twin, strictly and losslessly (the library; its
command line is `python -m align convert`, which knows the models by name):

    python -m align convert --model retina_r50 --src model.pth --dst model.pdparams
    python -m align convert --model resnet50 --src torchvision_resnet50.pth --dst r50.pdparams

The direction comes from the file types (.pdparams is Paddle; .pt/.pth/.bin/.ckpt/.tar are torch; another
suffix: a zip is torch, a pickle Paddle). Strict: the source must hold exactly the keys of the model, with
the model's shapes; every missing, unexpected and mis-shaped key is reported in one error (exit status 2).
Then validate_state refuses NaN/Inf values and integer/low-precision tensors in float slots (opt-ins:
allow_nonfinite, cast). Values are copied bit-exactly (Linear weights transposed), so torch -> Paddle ->
torch gives back the same keys, shapes, dtypes and values (not the same file bytes: torch.save names the
zip's inner folder at random).
"""
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from weights_convert.checkpoint_io import (
    CheckpointError,
    framework_of,
    load_checkpoint,
    save_checkpoint,
    validate_state,
)
from weights_convert.rules import linear_weight_keys, torch_key_to_paddle

KeyRule = Callable[[str], "str | None"]


@dataclass(frozen=True)
class ModelLayout:
    """Expected keys and shapes of one model in both frameworks."""
    torch_shapes: dict
    paddle_shapes: dict
    linear_keys: frozenset          # torch keys of Linear weights
    torch_dtypes: dict
    key_rule: KeyRule = torch_key_to_paddle   # torch key -> Paddle key (None: torch-only buffer)


def layout_from_models(torch_model: Any, paddle_model: Any, key_rule: KeyRule | None = None) -> ModelLayout:
    """Both twins' keys and shapes, checked to mirror each other under key_rule (default: rules.py)."""
    key_rule = key_rule or torch_key_to_paddle
    torch_state = torch_model.state_dict()
    torch_shapes = {k: tuple(v.shape) for k, v in torch_state.items()}
    paddle_shapes = {k: tuple(v.shape) for k, v in paddle_model.state_dict().items()}
    linear = linear_weight_keys(torch_model)
    expected = {}
    for k, shape in torch_shapes.items():
        pk = key_rule(k)
        if pk is not None:
            expected[pk] = shape[::-1] if k in linear else shape
    if expected != paddle_shapes:
        problems = _problems(paddle_shapes, expected, "in Paddle", "Paddle only")
        raise CheckpointError("the torch and Paddle models do not mirror each other (Paddle names):\n  "
                              + "\n  ".join(problems))
    return ModelLayout(torch_shapes, paddle_shapes, linear,
                       {k: str(v.dtype).replace("torch.", "") for k, v in torch_state.items()}, key_rule)


def _problems(shapes: dict, expected_shapes: dict, missing_label: str = "", unexpected_label: str = "") -> list[str]:
    """Every missing, unexpected and mis-shaped key of shapes ({key: shape}) against expected_shapes."""
    missing = sorted(set(expected_shapes) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected_shapes))
    misshaped = sorted(f"{k}: got {tuple(shapes[k])}, expected {tuple(expected_shapes[k])}"
                       for k in set(shapes) & set(expected_shapes) if tuple(shapes[k]) != tuple(expected_shapes[k]))
    problems = []
    if missing:
        problems.append(f"missing keys{' ' + missing_label if missing_label else ''} ({len(missing)}): "
                        f"{', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys{' (' + unexpected_label + ')' if unexpected_label else ''} "
                        f"({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    return problems


def check_keys(state, expected_shapes, what):
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key."""
    problems = _problems({k: tuple(v.shape) for k, v in state.items()}, expected_shapes)
    if problems:
        raise CheckpointError(f"{what} does not fit the model:\n  " + "\n  ".join(problems))


def torch_to_paddle(state: dict, layout: ModelLayout, what: str = "torch checkpoint") -> dict:
    check_keys(state, layout.torch_shapes, what)
    out = {}
    for k, v in state.items():
        pk = layout.key_rule(k)
        if pk is not None:
            out[pk] = np.asarray(v.T if k in layout.linear_keys else v, order="C")
    return out


def paddle_to_torch(state: dict, layout: ModelLayout, what: str = "Paddle checkpoint") -> dict:
    check_keys(state, layout.paddle_shapes, what)
    out = {}
    for k in layout.torch_shapes:                   # the torch model's own key order
        pk = layout.key_rule(k)
        if pk is None:                              # num_batches_tracked: not stored by Paddle
            out[k] = np.zeros(layout.torch_shapes[k], dtype=np.dtype(layout.torch_dtypes[k]))
        else:
            v = state[pk]
            out[k] = np.asarray(v.T if k in layout.linear_keys else v, order="C")
    return out


def paddle_dtypes(layout: ModelLayout) -> dict:
    """{Paddle key: dtype name}: the torch model's dtypes under the key rule (the twins mirror each other)."""
    return {layout.key_rule(k): dt for k, dt in layout.torch_dtypes.items() if layout.key_rule(k) is not None}


def convert_file(layout: ModelLayout, src: str, dst: str, allow_nonfinite: bool = False,
                 cast: bool = False) -> tuple[str, str]:
    """Convert src to dst (direction from the file types) for the model of `layout`; returns (src framework,
    dst framework). Keys and shapes are checked first, then the values (validate_state)."""
    src_fw, dst_fw = framework_of(src), framework_of(dst, must_exist=False)
    if src_fw == dst_fw:
        raise CheckpointError(f"{src} and {dst} are both {src_fw} checkpoints: nothing to convert")
    _, state = load_checkpoint(src)
    if src_fw == "torch":
        check_keys(state, layout.torch_shapes, f"{src} (torch)")
        state = validate_state(state, src, layout.torch_dtypes, allow_nonfinite, cast)
        out = torch_to_paddle(state, layout, what=f"{src} (torch)")
    else:
        check_keys(state, layout.paddle_shapes, f"{src} (Paddle)")
        state = validate_state(state, src, paddle_dtypes(layout), allow_nonfinite, cast)
        out = paddle_to_torch(state, layout, what=f"{src} (Paddle)")
    save_checkpoint(out, dst, dst_fw)
    return src_fw, dst_fw
