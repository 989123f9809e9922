from . import emoji
from .rendered_dataset import RenderedDataset


class EmojiDataset(RenderedDataset):
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

    source = emoji
    folder = "emoji"
    fetched_with = "the emoji packages, from the npm registry"
