"""The one registry of models the tools know by name: every --model choice, `list`, the gate's manifest and
the tests' parametrisation come from here.

One module per family under align/zoo/ (found by discovery: adding a family adds a module here and its twin
files, nothing else in align/). Each calls register(ModelSpec(...)) with all a tool needs: both builders,
default inputs, how outputs, detections and their float64 view are produced, the training spec, the metric
hook, the weight-conversion key rule and which checks the gate runs (GatePlan).

    from align.zoo import get_spec, build_models, names
    torch_model, paddle_model = build_models(get_spec("retina_r50"), weights=None, seed=0)
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

LEVELS = ("forward", "backward", "train", "metric")


@runtime_checkable
class Detector(Protocol):
    """What the tools use of a detector twin beyond its forward (both frameworks)."""

    detections_per_img: int

    def forward_with_detections(self, images: Any) -> dict: ...
    def predict(self, images: Any, image_sizes: list | None = None) -> list[dict]: ...
    def anchors(self, images: Any, cls_scores: Any) -> list: ...


@dataclass(frozen=True)
class TrainSpec:
    """How a model trains in train_diff and backward_diff (align/training.py runs it on both sides)."""

    build_torch_loss: Callable[[Any, int], Any]       # (torch model, num_classes) -> fresh loss module
    build_paddle_loss: Callable[[Any, int], Any]
    step_losses: Callable[[Any, Any, dict], dict]    # (model, loss, batch) -> {term: scalar tensor}
    recipe: Any                                       # align.training.Recipe
    no_decay: Callable[[str], bool]                   # parameter name -> excluded from weight decay
    head_init: Callable[[Any, int], Any] | None = None  # (torch model, seed): the family's own head init
    notes: str = ""                                   # what the report should say about the set-up
    # (model) -> the framework's EMA of the model (update(model), apply() -> {name: tensor}, state_dict())
    build_torch_ema: Callable[[Any], Any] | None = None
    build_paddle_ema: Callable[[Any], Any] | None = None
    # (loss, step, options) -> {name: number} logged that step: a schedule on the loss (the assigner switch)
    before_step: Callable[[Any, int, dict], dict] | None = None
    # (steps, options from the command line) -> the run's options (defaults filled in; part of the trajectory)
    options: Callable[[int, dict], dict] | None = None


@dataclass(frozen=True)
class GatePlan:
    """Which checks of a model the gate runs. limits: {"<level>:<dtype>": reason} for a check left out
    on purpose (the manifest lists it with its reason)."""

    forward: tuple = ("float64", "float32")
    deploy: tuple = ()                                # forward of the deployed twins (ModelSpec.deploy)
    isa_reruns: bool = True                           # float32 forward again under each align.manifest ISA cap
    backward: tuple = ("float64", "float32")
    train: tuple = ()
    train_steps: int = 10
    metric: tuple = ()
    limits: dict = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)    # {"<level>:<dtype>": {threshold name: value}}


def seeded_images(shape: tuple, seed: int) -> dict[str, np.ndarray]:
    """The default inputs: {"images": standard normal (N, 3, H, W)} from NumPy's generator(seed)."""
    return {"images": np.random.default_rng(seed).normal(0.0, 1.0, size=tuple(shape))}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build_torch: Callable[..., Any]
    build_paddle: Callable[..., Any]
    input_shape: tuple                                # (N, 3, H, W) of the default inputs
    kwargs: dict = field(default_factory=dict)        # passed to both builders
    family: str = ""
    make_inputs: Callable[[tuple, int], dict] = seeded_images
    # outputs(model, tensors) -> what forward_diff compares beyond the hooks (None: model(*tensors))
    outputs: Callable[[Any, dict], Any] | None = None
    # float64_view(torch_model, input_shape) -> view(records32, records64) for selecting outputs (NMS)
    float64_view: Callable[[Any, tuple], Callable] | None = None
    # float32_outputs(torch_model, inputs) -> outputs for float32 forward: the model's inner selections fixed to
    # the float64 torch run's (a two-stage detector's proposals), so that every run computes one function
    float32_outputs: Callable[[Any, dict], Callable] | None = None
    train: TrainSpec | None = None
    # predict(model, images, image_sizes) -> [{"boxes", "scores", "labels"}] per image: metric_diff's hook
    predict: Callable[[Any, Any, list], list] | None = None
    key_rule: Callable[[str], str | None] | None = None  # torch key -> Paddle key (None: weights_convert.rules)
    gate: GatePlan = GatePlan()
    # init(torch_model, seed): the seeded initial weights (None: align.seeded_init.seeded_init_torch)
    init: Callable[[Any, int], Any] | None = None
    # deploy(model, dtype) -> model: the inference form (e.g. RepVGG folds), in the model's own framework
    deploy: Callable[[Any, str], Any] | None = None
    # {parameter: why} of gradients zero by construction, judged as zero in float64 (align.backward)
    zero_gradients: dict = field(default_factory=dict)

    def levels(self) -> tuple:
        """The tools that can run this model."""
        return tuple(level for level in LEVELS if level in ("forward", "backward")
                     or (level == "train" and self.train) or (level == "metric" and self.predict))

    def inputs(self, seed: int = 0, shape: tuple | None = None) -> dict[str, np.ndarray]:
        return self.make_inputs(tuple(shape or self.input_shape), seed)

    def seeded_init(self, torch_model: Any, seed: int = 0) -> Any:
        from align.seeded_init import seeded_init_torch
        return (self.init or seeded_init_torch)(torch_model, seed)


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS and MODELS[spec.name] is not spec:
        raise ValueError(f"model {spec.name!r} is registered twice")
    MODELS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    MODELS.pop(name, None)


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def names(level: str | None = None) -> list[str]:
    """Registered model names, sorted; with a level, those whose tools include it."""
    if level is not None and level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    return sorted(n for n, s in MODELS.items() if level is None or level in s.levels())


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(names())}")
    return MODELS[name]


def build_twins(spec: ModelSpec, **overrides) -> tuple[Any, Any]:
    """(torch model, Paddle twin) of a spec, as built (no weights copied)."""
    kw = {**spec.kwargs, **overrides}
    return spec.build_torch(**kw), spec.build_paddle(**kw)


def build_models(spec: ModelSpec, weights: str | None = None, seed: int = 0, allow_nonfinite: bool = False,
                 cast: bool = False, **overrides) -> tuple[Any, Any]:
    """The torch model (seeded init or a torch checkpoint) and its Paddle twin holding the same weights.
    A checkpoint's NaN/Inf values and narrower or integer dtypes where the model holds floats are refused
    unless allow_nonfinite / cast (weights_convert.checkpoint_io.validate_state)."""
    import torch

    from weights_convert.checkpoint_io import load_torch, validate_state
    from weights_convert.convert import check_keys, layout_from_models
    from weights_convert.transfer import copy_torch_to_paddle

    torch_model, paddle_model = build_twins(spec, **overrides)
    if weights:
        state = load_torch(weights)
        layout = layout_from_models(torch_model, paddle_model, spec.key_rule)
        check_keys(state, layout.torch_shapes, f"{weights}")
        state = validate_state(state, weights, layout.torch_dtypes, allow_nonfinite, cast)
        torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    else:
        spec.seeded_init(torch_model, seed)
    copy_torch_to_paddle(torch_model, paddle_model, spec.key_rule)
    return torch_model, paddle_model


def build_pair(name: str, seed: int = 0, weights: str | None = None, allow_nonfinite: bool = False,
               cast: bool = False) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """(torch model, Paddle twin holding the torch model's weights, default inputs as NumPy arrays)."""
    spec = get_spec(name)
    torch_model, paddle_model = build_models(spec, weights, seed, allow_nonfinite, cast)
    return torch_model, paddle_model, spec.inputs(seed)


_discover()
