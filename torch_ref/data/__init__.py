from torch_ref.data.coco import CocoDetection, DetectionLoader, build_loader
from torch_ref.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Normalize, RandomHorizontalFlip, Resize,
                                       ToTensor, collate)

__all__ = ["CocoDetection", "DetectionLoader", "build_loader", "IMAGENET_MEAN", "IMAGENET_STD", "Normalize",
           "RandomHorizontalFlip", "Resize", "ToTensor", "collate"]
