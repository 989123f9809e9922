"""CUB-200-2011, Cars196 and Stanford Online Products through PML's dataset classes,
which implement the conventional class-disjoint splits (CUB classes 1-100 train /
101-200 test, Cars 1-98 / 99-196, SOP's Ebay_train.txt / Ebay_test.txt).

They download from the data sets' websites (``download=True``), so they need
internet; the loading code is tested on tiny fake folder trees in the real layouts.
"""

import numpy as np
import torch
import torchvision.transforms as T
from pytorch_metric_learning import datasets as pml_datasets

from ..models import IMAGENET_MEAN, IMAGENET_STD

DATASETS = {
    "cub200": pml_datasets.CUB,
    "cars196": pml_datasets.Cars196,
    "sop": pml_datasets.StanfordOnlineProducts,
}


def train_transform(image_size):
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.16, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size):
    return T.Compose(
        [
            T.Resize(int(round(image_size * 256 / 224))),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class RelabeledDataset(torch.utils.data.Dataset):
    """A dataset whose labels are mapped to 0..C-1 (in sorted order of the originals),
    as classification-style losses need."""

    def __init__(self, dataset, labels):
        self.dataset = dataset
        original = np.asarray(labels)
        self.classes, self.labels = np.unique(original, return_inverse=True)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image, _ = self.dataset[i]
        return image, int(self.labels[i])


def standard_split(name, root, split, image_size=224, train=False, download=False):
    """The ``split`` ("train" or "test") of a standard data set, labels 0..C-1."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    transform = train_transform(image_size) if train else eval_transform(image_size)
    dataset = DATASETS[name](
        root=root, split=split, transform=transform, download=download
    )
    return RelabeledDataset(dataset, dataset.labels)


def validation_subset(dataset, fraction, seed=0):
    """Split a relabelled training set by class into (train, val) subsets."""
    classes = np.unique(dataset.labels)
    order = np.random.RandomState(seed).permutation(classes)
    val_classes = set(order[: int(round(len(classes) * fraction))].tolist())
    is_val = np.array([label in val_classes for label in dataset.labels])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
