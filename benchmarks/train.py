"""Train one embedding model (baseline, +translation or +SFT) and evaluate it on
classes never seen in training.

    python -m benchmarks.train --loss multisimilarity --method sft --epochs 8

Writes ``<out>/<run name>/``: result.json (config, final metrics, learning curves,
timing), record-keeper logs (logs/*.csv, logs/logs.db) with the loss wrapper's SFT
statistics, and the trained weights (model.pt) for ``benchmarks.diagnostics``.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers
from pytorch_metric_learning.utils import common_functions as c_f
from tqdm import tqdm

import pml_sft
from pml_sft.contrib import (
    AblationFeatureTranslation,
    AblationLoss,
    AblationSphericalFeatureTransform,
    DatasetClassCenters,
    ProxyClassCenters,
)
from pml_sft.datasets import emoji, icon_themes

from .models import (
    BACKBONES,
    Embedder,
    build_trunk,
    freeze_batchnorm,
    input_normalization,
)

LOSSES = (
    "contrastive",
    "multisimilarity",
    "triplet",
    "proxyanchor",
    "normsoftmax",
    "arcface",
)
# none; translation and sft (any loss); ee and ss: Embedding Expansion and
# Symmetrical Synthesis (any loss); ps: Proxy Synthesis (proxy losses)
METHODS = ("none", "translation", "sft", "ee", "ss", "ps")
PROXY_SYNTHESIS_LOSSES = ("proxyanchor", "normsoftmax")
METRICS = (
    "recall_at_1",
    "recall_at_2",
    "recall_at_4",
    "recall_at_8",
    "mean_average_precision_at_r",
    "NMI",
)


@dataclasses.dataclass
class RunConfig:
    loss: str = "multisimilarity"
    method: str = "sft"
    seed: int = 0
    dataset: str = "emoji"
    dataset_root: str = "data"
    download: bool = False  # standard data sets: fetch them from their websites
    cache_dir: str = ".cache/pml_sft"
    image_size: int = 32
    max_classes: int = 0  # 0: all classes (emoji only)
    split: str = (
        "test"  # evaluate on "test" classes, or "val" (held-out training classes)
    )
    val_fraction: float = 0.2
    backbone: str = "small_cnn"
    width: int = 32
    pretrained: bool = False  # ImageNet weights (inputs then get ImageNet's mean/std)
    freeze_bn: bool = False  # trunk's BatchNorm: running stats and affine params fixed
    trunk_lr: float = 0.0  # learning rate of the trunk; 0: the same as lr
    # fast tier (efficientnet_lite0): train only blocks >= train_from_block (and the
    # head conv); the frozen blocks' output is computed once per image and cached,
    # for cached_copies randomly shifted copies of each training image
    train_from_block: int = 0
    cached_copies: int = 4
    embedding_size: int = 128
    batch_size: int = 128
    m_per_class: int = 4
    epochs: int = 6
    lr: float = 1e-3
    proxy_lr: float = 1e-1
    weight_decay: float = 1e-4
    # feature-space augmentation options (method translation / sft)
    centers: str = "batch"  # "batch", "ema", "dataset" (full pass) or "proxies"
    ema_momentum: float = 0.9
    center_every: int = 1  # centers="dataset": epochs between full passes
    num_targets: int = 1
    target_pool: str = "batch"
    nearest_targets: int = 0  # 0: any other class; m: one of the m nearest
    strength: float = 1.0
    consistent_only: bool = False
    aug_weight: float = 1.0
    objective: str = "joint"  # "joint" or "separate"
    warmup_epochs: float = 0.0
    ramp_epochs: float = 0.0
    # "epochs": warmup_epochs/ramp_epochs (the only start since the wrappers need a
    # stated schedule; the plateau start's results are in results/default_schedule)
    start: str = "epochs"
    # the family's own options (their papers' defaults): Embedding Expansion's
    # points per pair; Proxy Synthesis's Beta(alpha, alpha) and mu (synthetic
    # classes per real embedding)
    num_points: int = 2
    ps_alpha: float = 0.4
    ps_mu: float = 1.0
    synthetic_role: str = "any"  # "any", "partner" or "negative"
    detach_augmented: bool = False
    eval_every: int = 2
    eval_batch_size: int = 512
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    num_workers: int = 0
    progress: bool = True

    def name(self):
        parts = [self.dataset, self.loss, self.method]
        if self.method != "none":
            defaults = RunConfig()
            for key in (
                "centers",
                "center_every",
                "num_targets",
                "target_pool",
                "nearest_targets",
                "strength",
                "consistent_only",
                "aug_weight",
                "objective",
                "warmup_epochs",
                "ramp_epochs",
                "start",
                "synthetic_role",
                "detach_augmented",
                "num_points",
                "ps_alpha",
                "ps_mu",
            ):
                value = getattr(self, key)
                if value != getattr(defaults, key):
                    parts.append(f"{key}={value}")
        defaults = RunConfig()
        for key in (
            "backbone",
            "pretrained",
            "freeze_bn",
            "trunk_lr",
            "train_from_block",
            "cached_copies",
            "epochs",
            "lr",
            "proxy_lr",
            "image_size",
            "m_per_class",
        ):
            value = getattr(self, key)
            if value != getattr(defaults, key):  # default runs keep their names
                parts.append(f"{key}={value}")
        parts.append(f"split={self.split}")
        parts.append(f"seed={self.seed}")
        return "_".join(str(p) for p in parts)


class ImageTensorDataset(torch.utils.data.Dataset):
    """In-memory uint8 NHWC images, scaled to [0, 1] and normalised with ``mean`` and
    ``std`` (scalars or one per channel; the default suits trunks trained from
    scratch, pretrained ones take ImageNet's); training adds a random 2-pixel
    shift (reflect pad)."""

    MEAN, STD = 0.5, 0.25

    def __init__(self, images, labels, train, mean=MEAN, std=STD):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.labels = np.asarray(labels)
        self.label_tensor = torch.from_numpy(self.labels)
        self.train = train
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float().div_(255).sub_(self.mean).div_(self.std)
        if self.train:
            size = x.shape[-1]
            x = torch.nn.functional.pad(x[None], (2, 2, 2, 2), mode="reflect")[0]
            dx, dy = np.random.randint(0, 5, size=2)
            x = x[:, dy : dy + size, dx : dx + size]
        return x, self.label_tensor[i]


def relabel(labels):
    """Labels mapped to 0..C-1."""
    return np.unique(labels, return_inverse=True)[1]


def image_normalization(cfg):
    """(mean, std) of the emoji images: ImageNet's per channel for a pretrained
    backbone, ``ImageTensorDataset``'s default for one trained from scratch."""
    return input_normalization(
        cfg.backbone,
        cfg.pretrained,
        default=(ImageTensorDataset.MEAN, ImageTensorDataset.STD),
    )


BUILT_IN_DATASETS = {"emoji": emoji, "icons": icon_themes}


def built_in_splits(cfg):
    """The emoji or icon-theme data: (train, evaluation) with the fixed seeded
    class-disjoint split of the data set's module."""
    source = BUILT_IN_DATASETS[cfg.dataset]
    data = source.prepare(
        cfg.cache_dir, cfg.image_size, cfg.max_classes or None, progress=cfg.progress
    )
    num_classes = len(data["class_names"])
    train_c, val_c, test_c = source.class_split(
        num_classes,
        seed=0,
        val_fraction=cfg.val_fraction if cfg.split == "val" else 0.0,
    )
    eval_c = val_c if cfg.split == "val" else test_c
    train_mask = np.isin(data["labels"], train_c)
    eval_mask = np.isin(data["labels"], eval_c)
    mean, std = image_normalization(cfg)
    train = ImageTensorDataset(
        data["images"][train_mask],
        relabel(data["labels"][train_mask]),
        train=True,
        mean=mean,
        std=std,
    )
    evaluation = ImageTensorDataset(
        data["images"][eval_mask],
        data["labels"][eval_mask],
        train=False,
        mean=mean,
        std=std,
    )
    return train, evaluation


def standard_splits(cfg):
    from .data.standard import standard_split, validation_subset

    size = cfg.image_size
    if cfg.split == "val":  # held-out classes of the training split
        train_aug = standard_split(
            cfg.dataset, cfg.dataset_root, "train", size, train=True
        )
        train_eval = standard_split(
            cfg.dataset, cfg.dataset_root, "train", size, train=False
        )
        train_idx, val_idx = validation_subset(train_aug, cfg.val_fraction)
        labels = train_aug.labels
        return (
            IndexedDataset(train_aug, train_idx, relabel(labels[train_idx])),
            IndexedDataset(train_eval, val_idx, labels[val_idx]),
        )
    train = standard_split(
        cfg.dataset, cfg.dataset_root, "train", size, train=True, download=cfg.download
    )
    evaluation = standard_split(
        cfg.dataset, cfg.dataset_root, "test", size, train=False
    )
    return train, evaluation


class IndexedDataset(torch.utils.data.Dataset):
    """Rows ``indices`` of ``dataset`` with new labels."""

    def __init__(self, dataset, indices, labels):
        self.dataset, self.indices, self.labels = dataset, indices, np.asarray(labels)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]][0], int(self.labels[i])


def build_datasets(cfg):
    if cfg.dataset in BUILT_IN_DATASETS:
        return built_in_splits(cfg)
    return standard_splits(cfg)


def build_loss(cfg, num_classes):
    """(loss, miner) for the loss name; proxy losses keep parameters of their own."""
    size = cfg.embedding_size
    if cfg.loss == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5), None
    if cfg.loss == "multisimilarity":
        return (
            losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
            miners.MultiSimilarityMiner(epsilon=0.1),
        )
    if cfg.loss == "triplet":
        return (
            losses.TripletMarginLoss(margin=0.1),
            miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"),
        )
    if cfg.loss == "proxyanchor":
        return losses.ProxyAnchorLoss(num_classes, size, margin=0.1, alpha=32), None
    if cfg.loss == "normsoftmax":
        return losses.NormalizedSoftmaxLoss(num_classes, size, temperature=0.05), None
    if cfg.loss == "arcface":
        return losses.ArcFaceLoss(num_classes, size, margin=28.6, scale=64), None
    raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")


# the family's options and the one method that takes each
METHOD_OPTIONS = {"num_points": "ee", "ps_alpha": "ps", "ps_mu": "ps"}


def check_method_options(cfg):
    """Refuse a family option set away from its default on a method that ignores it."""
    defaults = RunConfig()
    for option, method in METHOD_OPTIONS.items():
        if getattr(cfg, option) != getattr(defaults, option) and cfg.method != method:
            raise ValueError(
                f"{option} is an option of method {method!r}; "
                f"method {cfg.method!r} does not take it"
            )


def build_objective(cfg, num_classes, iterations_per_epoch, generator):
    """The metric loss: the plain loss with its miner, or the feature-transform
    wrapper around it (the miner then mines the enlarged batch)."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    check_method_options(cfg)
    inner, miner = build_loss(cfg, num_classes)
    if cfg.method == "none":
        return inner, miner
    schedule = dict(
        warmup_iterations=int(round(cfg.warmup_epochs * iterations_per_epoch)),
        ramp_iterations=int(round(cfg.ramp_epochs * iterations_per_epoch)),
        collect_stats=True,
    )
    if cfg.start != "epochs":
        raise ValueError(
            f"start must be 'epochs', got {cfg.start!r} (the plateau start was "
            "removed: it rarely started, see benchmarks/results/default_schedule)"
        )
    if cfg.method in ("ee", "ss", "ps"):
        return family_objective(cfg, inner, miner, schedule), None
    if cfg.centers == "ema":
        centers = pml_sft.MovingAverageClassCenters(
            num_classes, cfg.embedding_size, momentum=cfg.ema_momentum
        )
    elif cfg.centers == "batch":
        centers = pml_sft.BatchClassCenters()
    elif cfg.centers == "dataset":  # fitted by run() every center_every epochs
        centers = DatasetClassCenters(num_classes, cfg.embedding_size)
    elif cfg.centers == "proxies":
        centers = ProxyClassCenters(inner)
    else:
        raise ValueError(
            "centers must be 'batch', 'ema', 'dataset' or 'proxies', "
            f"got {cfg.centers!r}"
        )
    options = dict(centers=centers, num_targets=cfg.num_targets)
    options.update(target_pool=cfg.target_pool, generator=generator)
    ablated = dict(
        nearest_targets=cfg.nearest_targets or None,
        strength=cfg.strength,
        consistent_only=cfg.consistent_only,
        detach_augmented=cfg.detach_augmented,
    )
    defaults = dict(
        nearest_targets=None,
        strength=1.0,
        consistent_only=False,
        detach_augmented=False,
    )
    if ablated == defaults:  # the core classes
        sft, translation = pml_sft.SphericalFeatureTransform, pml_sft.FeatureTranslation
    else:
        sft, translation = AblationSphericalFeatureTransform, AblationFeatureTranslation
        options.update(ablated)
    transform_class = sft if cfg.method == "sft" else translation
    transform = transform_class(**options, collect_stats=True)
    ablated = dict(
        aug_weight=cfg.aug_weight,
        objective=cfg.objective,
        synthetic_role=cfg.synthetic_role,
    )
    if ablated == dict(aug_weight=1.0, objective="joint", synthetic_role="any"):
        wrapped = pml_sft.FeatureTransformLoss(inner, transform, miner, **schedule)
    else:
        wrapped = AblationLoss(inner, transform, miner, **ablated, **schedule)
    return wrapped, None


def family_objective(cfg, inner, miner, schedule):
    """Embedding Expansion, Symmetrical Synthesis or Proxy Synthesis around the
    loss, with the run's options (default: the papers') and schedule."""
    if cfg.method == "ps":
        if cfg.loss not in PROXY_SYNTHESIS_LOSSES:
            raise ValueError(
                f"method 'ps' (Proxy Synthesis) takes the proxy losses "
                f"{PROXY_SYNTHESIS_LOSSES}, got {cfg.loss!r}"
            )
        return pml_sft.ProxySynthesisLoss(
            inner, alpha=cfg.ps_alpha, mu=cfg.ps_mu, **schedule
        )
    augmenter = (
        pml_sft.EmbeddingExpansion(cfg.num_points, collect_stats=True)
        if cfg.method == "ee"
        else pml_sft.SymmetricalSynthesis(collect_stats=True)
    )
    return pml_sft.FeatureTransformLoss(inner, augmenter, miner, **schedule)


class CachedFeatures(torch.utils.data.Dataset):
    """Cached inputs of the trained blocks, (copies, N, ...): each epoch reads one
    copy (a different random shift of every image), chosen by :meth:`set_epoch`."""

    def __init__(self, features, labels):
        self.features, self.labels = features, np.asarray(labels)
        self.label_tensor = torch.from_numpy(self.labels)
        self.copy = 0

    def set_epoch(self, epoch):
        self.copy = epoch % self.features.shape[0]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.features[self.copy, i], self.label_tensor[i]


def feature_cache_path(cfg, part):
    key = (
        f"{cfg.dataset}_{cfg.backbone}_pretrained={cfg.pretrained}_{cfg.image_size}px"
        f"_block{cfg.train_from_block}_split={cfg.split}_val={cfg.val_fraction}"
        f"_max={cfg.max_classes}_{part}"
    )
    return Path(cfg.cache_dir) / "features" / f"{key}.pt"


@torch.no_grad()
def stem_outputs(stem, dataset, copies, cfg, device):
    """(copies, N, ...) outputs of the frozen blocks (eval mode); copy c sees the
    random shifts drawn after seeding numpy with c (training images only)."""
    stem.eval()
    out = []
    for c in range(copies):
        np.random.seed(c)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.eval_batch_size, shuffle=False
        )
        batches = tqdm(
            loader,
            desc=f"caching frozen-block features ({copies} shifted copies: {c + 1})",
            disable=not cfg.progress,
        )
        out.append(torch.cat([stem(x.to(device)).float().cpu() for x, _ in batches]))
    return torch.stack(out)


def fingerprint(*datasets):
    """A short hash of what the runs train and evaluate on: the images (or the
    cached features of the frozen blocks) and the labels of ``datasets``. Caches
    rebuilt elsewhere (other package versions, another CPU) can differ; results
    are paired only when their fingerprints agree. Datasets read from files
    (the standard ones) contribute their labels only."""
    digest = hashlib.sha256()
    for dataset in datasets:
        for name in ("images", "features"):
            tensor = getattr(dataset, name, None)
            if tensor is not None:
                digest.update(tensor.contiguous().numpy().tobytes())
        digest.update(np.ascontiguousarray(dataset.labels).tobytes())
    return digest.hexdigest()[:12]


def check_fast_tier(cfg):
    if cfg.train_from_block and cfg.backbone != "efficientnet_lite0":
        raise ValueError(
            "train_from_block needs a backbone with blocks (efficientnet_lite0), "
            f"got {cfg.backbone!r}"
        )


def cached_datasets(cfg, trunk, train_set, eval_set, device):
    """The fast tier: (trained head, cached training set, cached evaluation set).
    The frozen blocks' outputs are computed once per configuration of the data and
    backbone and reused by every run (``<cache_dir>/features``)."""
    check_fast_tier(cfg)
    stem, head = trunk.split(cfg.train_from_block)
    cached = []
    for part, dataset, copies in (
        ("train", train_set, cfg.cached_copies),
        ("eval", eval_set, 1),
    ):
        path = feature_cache_path(cfg, f"{part}{copies}")
        if path.exists():
            features = torch.load(path, weights_only=True)
        else:
            features = stem_outputs(stem, dataset, copies, cfg, device)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(features, tmp)
            os.replace(tmp, path)
        cached.append(CachedFeatures(features, dataset.labels))
    return head, cached[0], cached[1]


def prepare_data(cfg):
    """Fetch and render the data and, for the fast tier, fill the feature cache:
    what every run of a comparison shares, done once before its workers start."""
    train_set, eval_set = build_datasets(cfg)
    if cfg.train_from_block:
        trunk = build_trunk(cfg.backbone, cfg.pretrained, cfg.width)
        cached_datasets(cfg, trunk, train_set, eval_set, torch.device(cfg.device))


@torch.no_grad()
def embed(trunk, embedder, dataset, cfg, device):
    trunk.eval()
    embedder.eval()
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.eval_batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
    )
    out, labels = [], []
    for x, y in loader:
        out.append(embedder(trunk(x.to(device))).float().cpu())
        labels.append(torch.as_tensor(y))
    trunk.train()
    embedder.train()
    return torch.nn.functional.normalize(torch.cat(out), dim=1), torch.cat(labels)


def evaluate(trunk, embedder, dataset, cfg, device):
    emb, labels = embed(trunk, embedder, dataset, cfg, device)
    calculator = pml_sft.RecallAtK(
        include=METRICS, recall_ks=(1, 2, 4, 8), device=torch.device("cpu")
    )
    acc = calculator.get_accuracy(emb, labels)
    return {k: float(acc[k]) for k in METRICS}


def record_children(obj):
    """record-keeper follows plain attributes only; this hands it the sub-modules
    (a wrapper's transform, its centre estimator, a loss's distance and reducer)."""
    if isinstance(obj, torch.nn.Module):
        return dict(obj.named_children())
    return {}


def make_record_keeper(folder):
    from record_keeper import RecordKeeper, RecordWriter

    return RecordKeeper(
        record_writer=RecordWriter(folder),
        attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
    )


def trainable_parameters(module):
    """The parameters that require grad (frozen BatchNorm ones do not)."""
    return [p for p in module.parameters() if p.requires_grad]


def run_dir_result(cfg, out_dir):
    """The saved result of a finished run of ``cfg`` in ``out_dir``, or None."""
    path = Path(out_dir) / cfg.name() / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def run(cfg, out_dir):
    """Train and evaluate one configuration; returns the result dict (also saved)."""
    if cfg.freeze_bn and not cfg.pretrained:
        raise ValueError(
            "freeze_bn keeps the BatchNorm statistics of pretrained weights; "
            "a trunk trained from scratch has none (use it with pretrained)"
        )
    check_fast_tier(cfg)
    run_dir = Path(out_dir) / cfg.name()
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # record-keeper logs the losses' and miners' statistics; PML collects them only
    # under its process-wide flag, so set it for this run and restore it afterwards
    collect_stats = c_f.COLLECT_STATS
    c_f.COLLECT_STATS = True
    try:
        return train_and_evaluate(cfg, run_dir)
    finally:
        c_f.COLLECT_STATS = collect_stats


def train_and_evaluate(cfg, run_dir):
    """The training loop of run(); saves result.json and model.pt in run_dir."""
    result_path = run_dir / "result.json"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = torch.device(cfg.device)

    train_set, eval_set = build_datasets(cfg)
    num_classes = int(np.max(train_set.labels)) + 1
    sampler = samplers.MPerClassSampler(
        train_set.labels,
        m=cfg.m_per_class,
        batch_size=cfg.batch_size,
        length_before_new_iter=len(train_set.labels),
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
    )
    iterations_per_epoch = len(loader)

    data_fingerprint = fingerprint(train_set, eval_set)
    trunk = build_trunk(cfg.backbone, cfg.pretrained, cfg.width).to(device)
    if cfg.train_from_block:
        trunk, train_set, eval_set = cached_datasets(
            cfg, trunk, train_set, eval_set, device
        )
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=True,
        )
        data_fingerprint += "/" + fingerprint(train_set, eval_set)
    if cfg.freeze_bn:
        freeze_batchnorm(trunk)  # the trunk only: the embedder's BatchNorm is new
    embedder = Embedder(trunk.output_size, cfg.embedding_size).to(device)
    generator = torch.Generator().manual_seed(cfg.seed + 1000)
    objective, miner = build_objective(
        cfg, num_classes, iterations_per_epoch, generator
    )
    objective = objective.to(device)
    param_groups = [
        {"params": trainable_parameters(trunk), "lr": cfg.trunk_lr or cfg.lr},
        {"params": trainable_parameters(embedder), "lr": cfg.lr},
    ]
    if len(list(objective.parameters())):
        param_groups.append(
            {"params": list(objective.parameters()), "lr": cfg.proxy_lr}
        )
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    record_keeper = make_record_keeper(str(run_dir / "logs"))

    curves = {"epoch": [], "train_loss": [], **{m: [] for m in METRICS}}
    iteration, start = 0, time.time()
    centers = getattr(getattr(objective, "augmenter", None), "centers", None)
    for epoch in range(1, cfg.epochs + 1):
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch - 1)
        if isinstance(centers, DatasetClassCenters) and (
            (epoch - 1) % cfg.center_every == 0
        ):  # a full pass over the training set
            centers.fit(*embed(trunk, embedder, train_set, cfg, device))
        losses_this_epoch = []
        bar = tqdm(loader, desc=f"{cfg.name()} epoch {epoch}", disable=not cfg.progress)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            embeddings = embedder(trunk(x))
            indices = miner(embeddings, y) if miner is not None else None
            loss = objective(embeddings, y, indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            losses_this_epoch.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if iteration % 10 == 1:  # iterations 1, 11, 21, ...
                record_keeper.update_records(
                    {
                        "loss_histories": {"metric_loss": loss.item()},
                        "loss_funcs": {"metric_loss": objective},
                        "mining_funcs": {"tuple_miner": miner} if miner else {},
                    },
                    iteration,
                    custom_attr_func=record_children,
                )
        curves["epoch"].append(epoch)
        curves["train_loss"].append(float(np.mean(losses_this_epoch)))
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            acc = evaluate(trunk, embedder, eval_set, cfg, device)
            record_keeper.update_records({"accuracies": acc}, epoch)
        else:
            acc = {m: None for m in METRICS}
        for m in METRICS:
            curves[m].append(acc[m])
        record_keeper.save_records()
    result = dict(
        config=dataclasses.asdict(cfg),
        name=cfg.name(),
        metrics={m: curves[m][-1] for m in METRICS},
        curves=curves,
        train_seconds=time.time() - start,
        num_train_classes=num_classes,
        num_train_samples=len(train_set.labels),
        num_eval_samples=len(eval_set.labels),
        num_eval_classes=int(len(np.unique(eval_set.labels))),
        iterations=iteration,
        data_fingerprint=data_fingerprint,
        cpu=device_description(device),
        commit=git_commit(),
    )
    torch.save(
        {"trunk": trunk.state_dict(), "embedder": embedder.state_dict()},
        run_dir / "model.pt",
    )
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, result_path)
    return result


def cpu_description():
    """The CPU's model, family and model number (Linux) and the vector instructions
    torch's kernels use: what makes the same run differ between machines."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model"):
                    fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break  # the first processor is enough
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model')})"
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def device_description(device):
    """What ran a run, for pairing runs (the ``cpu`` field of its result, a name
    kept for the rows already committed): ``cpu_description()`` on the CPU, the
    GPU's name and CUDA version on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    return cpu_description()


def git_commit():
    """The commit of the code that ran (best effort), for the results' provenance."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def add_config_arguments(parser, exclude=()):
    """One --option per RunConfig field (booleans take true/false)."""
    for field in dataclasses.fields(RunConfig):
        if field.name in exclude:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool or isinstance(field.default, bool):
            parser.add_argument(
                flag,
                type=lambda s: s.lower() in ("1", "true", "yes"),
                default=field.default,
            )
        else:
            kind = type(field.default)
            parser.add_argument(flag, type=kind, default=field.default)
    return parser


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and evaluate one run.")
    add_config_arguments(parser)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    out = args.__dict__.pop("out")
    cfg = RunConfig(**vars(args))
    if cfg.backbone not in BACKBONES:
        parser.error(f"--backbone must be one of {BACKBONES}")
    result = run(cfg, out)
    print(json.dumps(result["metrics"], indent=1))


if __name__ == "__main__":
    main()
