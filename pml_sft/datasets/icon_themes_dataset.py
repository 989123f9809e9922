from . import icon_themes
from .rendered_dataset import RenderedDataset


class IconThemesDataset(RenderedDataset):
    """The freedesktop icon themes of Debian's packages as a torch ``Dataset`` of PIL
    images: class = an icon name, sample = one theme's drawing of it
    (:mod:`pml_sft.datasets.icon_themes` says how it is cleaned).

    Prepares (``apt-get download``, ``dpkg-deb``, renders, caches under ``root``) on
    first use when ``download`` is True. ``split`` selects the fixed class-disjoint
    half of the classes: "train", "test" or "train+test" (all).

    Args:
        root: folder holding the cache (``root/icon_themes``).
        split: "train", "test" or "train+test".
        transform: applied to each PIL image.
        image_size: rendering size in pixels.
        max_classes: keep only the first classes (small experiments and tests).
        download: fetch and render when the cache is missing (a corrupt cache is
            built anew).
        return_dict: items are ``{"data": image, "label": label}`` (the format
            powerful-benchmarker expects) instead of ``(image, label)``.
    """

    source = icon_themes
    folder = "icon_themes"
    fetched_with = "the icon-theme packages, with apt-get download"
