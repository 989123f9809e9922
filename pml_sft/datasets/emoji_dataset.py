import numpy as np
import torch
from PIL import Image

from . import emoji


class EmojiDataset(torch.utils.data.Dataset):
    """The emoji data set as a torch ``Dataset`` of PIL images.

    Prepares (downloads with npm, renders, caches under ``root``) on first use when
    ``download`` is True. ``split`` selects the fixed class-disjoint half of the
    classes: "train", "test" or "train+test" (all).

    Args:
        root: folder holding the cache (``root/emoji``).
        split: "train", "test" or "train+test".
        transform: applied to each PIL image.
        image_size: rendering size in pixels.
        max_classes: keep only the first classes (small experiments and tests).
        download: fetch and render when the cache is missing.
        return_dict: items are ``{"data": image, "label": label}`` (the format
            powerful-benchmarker expects) instead of ``(image, label)``.
    """

    def __init__(
        self,
        root,
        split="train+test",
        transform=None,
        image_size=32,
        max_classes=None,
        download=False,
        return_dict=False,
    ):
        cache_dir = f"{root}/emoji"
        path = emoji.cache_path(cache_dir, image_size, max_classes)
        if not path.exists() and not download:
            raise ValueError(
                f"{path} does not exist; pass download=True to fetch the emoji packages "
                "from the npm registry and render them"
            )
        data = emoji.prepare(cache_dir, image_size, max_classes, progress=False)
        train, _, test = emoji.class_split(len(data["class_codes"]))
        classes = {"train": train, "test": test, "train+test": None}
        if split not in classes:
            raise ValueError(f"split must be one of {sorted(classes)}, got {split!r}")
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
        image = Image.fromarray(self.images[i])
        if self.transform is not None:
            image = self.transform(image)
        label = int(self.labels[i])
        return {"data": image, "label": label} if self.return_dict else (image, label)
