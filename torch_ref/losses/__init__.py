"""Detection losses, PyTorch reference twins of paddle_impl.losses (same names, same semantics)."""
from .aploss import APLoss, ap_loss
from .balanced_l1 import BalancedL1Loss, balanced_l1_loss
from .dfl import DFLoss, distribution_focal_loss
from .focal import FocalLoss, sigmoid_focal_loss
from .ghm import GHMC, GHMR
from .giou import GIoULoss, giou_loss
from .smooth_l1 import L1Loss, SmoothL1Loss, l1_loss, smooth_l1_loss
from .varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "BalancedL1Loss", "balanced_l1_loss", "DFLoss", "distribution_focal_loss", "FocalLoss", "sigmoid_focal_loss",
    "GHMC", "GHMR", "GIoULoss", "giou_loss", "L1Loss", "SmoothL1Loss", "l1_loss", "smooth_l1_loss",
    "VarifocalLoss", "varifocal_loss", "APLoss", "ap_loss",
]
