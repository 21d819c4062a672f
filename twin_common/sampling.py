"""The seeded draws both twins' loaders make, from one NumPy Generator, so two loaders built with the same
seed see the same images in the same order with the same augmentation decisions."""
import numpy as np


def epoch_order(rng: np.random.Generator, n: int, shuffle: bool) -> np.ndarray:
    """The image order of one pass: a permutation when shuffling (one draw), else 0..n-1 (no draw)."""
    return rng.permutation(n) if shuffle else np.arange(n)


def flip_decisions(rng: np.random.Generator, n: int, prob: float) -> np.ndarray:
    """n flip decisions; always draws n numbers, so the stream does not depend on prob."""
    return rng.random(n) < prob
