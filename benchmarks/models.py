"""Backbones for the benchmarks: a small CNN trained from scratch (CPU default) and
torchvision ResNet-18/50 and GoogLeNet (BN-Inception-style) for GPU users."""

import torch
import torchvision


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


BACKBONES = ("small_cnn", "resnet18", "resnet50", "googlenet")


def build_trunk(name, pretrained=False, width=64):
    """The trunk; ``pretrained`` downloads ImageNet weights (needs internet)."""
    if name == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights")
        return SmallCNN(width)
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    return _torchvision_trunk(name, pretrained)


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
