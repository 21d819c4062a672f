"""Two-stage RoI heads: RoI feature extraction and the box branch (Libra R-CNN)."""
