"""Framework-free helpers that both twins, weights_convert and align may import (and that import none of them):
COCO records, atomic file writes, the seeded draws both twins' samplers share."""
