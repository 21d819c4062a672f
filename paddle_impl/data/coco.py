"""COCO-format detection data for Paddle: the dataset and a seeded loader (twin of torch_ref/data/coco.py).

Reading and decoding are shared (twin_common/coco_files.py); tensors are made by paddle_impl/data/transforms.py.
"""
import numpy as np
import paddle

from twin_common.coco_files import CocoRecords
from twin_common.sampling import epoch_order
from paddle_impl.data.transforms import Normalize, RandomHorizontalFlip, Resize, ToTensor, collate


class CocoDetection(paddle.io.Dataset):
    """Images and boxes of a COCO-format set (pycocotools), as numpy.

    Item: {'image': uint8 (H, W, 3) RGB, 'boxes': float64 (N, 4) x1y1x2y2, 'labels': int64 (N,) contiguous
    0..C-1 in sorted category-id order, 'image_id', 'orig_size': (H, W)}. Crowd boxes are skipped.
    """

    def __init__(self, root=None, ann_file=None, img_dir=None, filter_empty=False):
        self.records = CocoRecords(root, ann_file, img_dir, filter_empty)
        self.coco = self.records.coco
        self.cat_ids = self.records.cat_ids
        self.label_to_cat_id = self.records.label_to_cat_id
        self.img_ids = self.records.img_ids

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records.load(index)


class DetectionLoader:
    """Batches of a CocoDetection. Every pass draws, from one numpy Generator(seed), first the image order
    (a permutation when shuffle) and then one flip decision per position, so two loaders built with the
    same seed give the same batches, epoch after epoch."""

    def __init__(self, dataset, batch_size=2, seed=0, dtype="float32", short_side=800, max_size=1333,
                 flip_prob=0.5, shuffle=True, stride=32, drop_last=False):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.dataset, self.batch_size, self.stride = dataset, batch_size, stride
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.rng = np.random.default_rng(seed)
        self.to_tensor = ToTensor(dtype)
        self.resize = Resize(short_side, max_size)
        self.flip = RandomHorizontalFlip(flip_prob)
        self.normalize = Normalize()

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def prepare(self, index, flip):
        """One image through ToTensor -> Resize -> flip -> Normalize (mmdetection's order)."""
        return self.normalize(self.flip(self.resize(self.to_tensor(self.dataset[index])), flip))

    def __iter__(self):
        n = len(self.dataset)
        order = epoch_order(self.rng, n, self.shuffle)
        flips = self.flip.decide(self.rng, n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, n)
            yield collate([self.prepare(int(order[j]), flips[j]) for j in range(start, stop)], self.stride)


def build_loader(dataset, batch_size=2, seed=0, dtype="float32", short_side=800, max_size=1333,
                 flip_prob=0.5, shuffle=True, stride=32, drop_last=False):
    return DetectionLoader(dataset, batch_size, seed, dtype, short_side, max_size, flip_prob, shuffle,
                           stride, drop_last)
