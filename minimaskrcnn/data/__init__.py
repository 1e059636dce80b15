"""Data: COCO-format instance segmentation, augmentation, batching, the synthetic shapes set.

* ``CocoDataset`` (coco.py) - images + COCO json via pycocotools -> (image, target) pairs
* ``from_folder`` (coco.py) - the data set of a folder with images/ and annotations.json
* ``Compose``, ``RandomHorizontalFlip``, ``hflip`` (transforms.py)
* ``DataLoader``, ``collate`` (loader.py) - seeded shuffling, list batches, optional prefetch
* ``shapes`` (shapes.py) - ``minimaskrcnn shapes``: the synthetic data set writer
"""

from .coco import CocoDataset, from_folder
from .loader import DataLoader, collate
from .transforms import Compose, RandomHorizontalFlip, hflip

__all__ = [
    "CocoDataset",
    "from_folder",
    "DataLoader",
    "collate",
    "Compose",
    "RandomHorizontalFlip",
    "hflip",
]
