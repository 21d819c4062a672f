"""Two-stage RoI heads: RoI feature extraction and the box branch (Libra R-CNN; twin of torch_ref/roi_heads)."""
