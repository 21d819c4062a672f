"""PP-YOLOE family: s/m/l/x from one table of depth and width multipliers (torch_ref/detectors/ppyoloe.py and
its Paddle twin, PaddleDetection 2.6's names, so released ppyoloe_crn_*_300e_coco.pdparams load as they are).

Spec: ../shared/specs/ppyoloe.md. Forward alignment covers every module, the decoded scores and boxes and the
post-processed detections (PaddleDetection's multi-class NMS); --deploy aligns the RepVGG-folded twins.
"""
from align import frameworks
from align.detections import detector_outputs, selection_values
from align.seeded_init import seeded_init_torch
from align.selections import DetectionView
from align.zoo import GatePlan, ModelSpec, register

# scale: (depth_mult, width_mult), configs/ppyoloe/ppyoloe_crn_{s,m,l,x}_300e_coco.yml
SCALES = {"s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}
# multiples of 32, at least 96 px (ATSS needs 9 anchors on the stride-32 level), H != W to catch transposes
INPUT_SHAPE = (2, 3, 128, 160)


def _torch_ppyoloe(**kw):
    from torch_ref.detectors.ppyoloe import PPYOLOE
    return PPYOLOE(**kw)


def _paddle_ppyoloe(**kw):
    from paddle_impl.detectors.ppyoloe import PPYOLOE
    return PPYOLOE(**kw)


def detection_view(torch_model, shape):
    cfg = torch_model.nms_cfg
    return DetectionView(selection_values(), cfg["score_threshold"], cfg["nms_threshold"], cfg["keep_top_k"])


def seeded_init(model, seed=0):
    """Seeded weights everywhere but proj_conv, which keeps its fixed bin values (never trained)."""
    seeded_init_torch(model, seed)
    model.yolo_head.init_proj()
    return model


def deploy(model, dtype):
    """RepVGG deploy form, folded in float64 in the model's framework, then held in dtype."""
    fw = frameworks.of(model)
    fw.cast(model, "float64").convert_to_deploy()
    return fw.cast(model, dtype)


_FLOAT32_LIMIT = "float32 is gated on s and l (the same blocks at other widths and depths); CI time"
_BACKWARD_LIMIT = "backward is gated on ppyoloe_s (the same blocks at other widths and depths); CI time"
BOTH = ("float64", "float32")


def _gate(scale):
    """All four scales forward in float64; s and l in float32 (with the ISA reruns); s backward and deployed."""
    float32, small = scale in ("s", "l"), scale == "s"
    limits = {} if float32 else {"forward:float32": _FLOAT32_LIMIT}
    if not small:
        limits.update({"backward:float64": _BACKWARD_LIMIT, "backward:float32": _BACKWARD_LIMIT})
    return GatePlan(forward=BOTH if float32 else ("float64",), isa_reruns=float32, deploy=BOTH if small else (),
                    backward=BOTH if small else (), limits=limits)


for _scale, (_depth, _width) in SCALES.items():
    register(ModelSpec(
        f"ppyoloe_{_scale}", f"PP-YOLOE-{_scale} (CSPResNet, CustomCSPPAN, ET-head; depth {_depth}, width {_width})",
        _torch_ppyoloe, _paddle_ppyoloe, INPUT_SHAPE, kwargs={"depth_mult": _depth, "width_mult": _width},
        family="ppyoloe", outputs=detector_outputs, float64_view=detection_view, init=seeded_init, deploy=deploy,
        gate=_gate(_scale)))
