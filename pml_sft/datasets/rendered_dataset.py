import os
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from . import npz_cache


class RenderedDataset(torch.utils.data.Dataset):
    """A built-in data set (rendered once and cached as ``.npz``) as a torch
    ``Dataset`` of PIL images, with the fixed class-disjoint split of its module.
    Subclasses name the module (``source``: ``prepare``, ``cache_path``,
    ``class_split``), the cache folder and how it is fetched."""

    source = None  # the data set's module
    folder = None  # the cache lives in root/folder
    fetched_with = None  # e.g. "npm", for the error message

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = "train+test",
        transform: Optional[Callable[[Any], Any]] = None,
        image_size: int = 32,
        max_classes: Optional[int] = None,
        download: bool = False,
        return_dict: bool = False,
    ):
        if max_classes is not None and not (
            type(max_classes) is int and max_classes >= 1
        ):
            raise ValueError(
                f"max_classes must be None or an int >= 1: {max_classes!r}"
            )
        splits = ("train", "test", "train+test")
        if split not in splits:  # before anything is fetched
            raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
        cache_dir = f"{root}/{self.folder}"
        path = self.source.cache_path(cache_dir, image_size, max_classes)
        if download and path.is_file() and not npz_cache.readable(path):
            path.unlink()  # a corrupt cache: download=True builds it anew
        if not path.exists() and not download:
            raise ValueError(
                f"{path} does not exist; pass download=True to fetch it "
                f"({self.fetched_with}) and render it"
            )
        data = self.source.prepare(cache_dir, image_size, max_classes, progress=False)
        labels, names = data["labels"], data["class_names"]
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(names):
            raise ValueError(
                f"the data set cache {path} holds labels from {labels.min()} to "
                f"{labels.max()} for {len(names)} class names: delete it and build "
                "it again (download=True)"
            )
        train, _, test = self.source.class_split(len(data["class_names"]))
        classes = {"train": train, "test": test, "train+test": None}
        keep = (
            np.ones(len(data["labels"]), dtype=bool)
            if classes[split] is None
            else np.isin(data["labels"], classes[split])
        )
        self.images = data["images"][keep]
        self.labels = data["labels"][keep]
        self.class_names = data["class_names"]
        self.transform = transform
        self.return_dict = return_dict

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image  # (the "datasets" extra: only the images need it)

        image = Image.fromarray(self.images[i])
        if self.transform is not None:
            image = self.transform(image)
        label = int(self.labels[i])
        return {"data": image, "label": label} if self.return_dict else (image, label)
