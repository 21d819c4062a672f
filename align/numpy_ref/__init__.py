"""Independent float64 NumPy references of the losses: values and hand-derived (analytic) gradients.

Each function returns (value, {input name: d sum(value) / d input}); reductions follow the losses
('none' is differentiated as the sum of its elements). Targets that the losses detach get zero gradients.
They are written from the definitions (mmdetection, torchvision, PaddleDetection), not from the twins, and
tests check the analytic gradients against finite differences.
"""
from .balanced_l1 import balanced_l1_loss  # noqa: F401
from .dfl import distribution_focal_loss  # noqa: F401
from .focal import sigmoid_focal_loss  # noqa: F401
from .giou import giou_loss  # noqa: F401
from .smooth_l1 import l1_loss, smooth_l1_loss  # noqa: F401
from .varifocal import varifocal_loss  # noqa: F401
