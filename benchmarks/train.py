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
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning import samplers, testers, trainers
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets
from tqdm import tqdm

import pml_sft
from pml_sft.datasets import emoji, icon_themes

from . import registry
from .models import BACKBONES, Embedder, build_trunk, input_normalization

LOSSES = tuple(registry.LOSSES)
METHODS = tuple(registry.METHODS)
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
    """One run. ``options`` holds the method's own options (``registry.METHODS``;
    missing ones take the method's defaults). A run is keyed by its whole
    configuration (:meth:`key`): a finished run is reused only when every field
    matches."""

    loss: str = "multisimilarity"
    method: str = "sft"
    seed: int = 0
    dataset: str = "emoji"
    dataset_root: str = "data"
    download: bool = False  # standard data sets: fetch them from their websites
    cache_dir: str = ".cache/pml_sft"
    image_size: int = 32
    max_classes: int = 0  # 0: all classes (emoji only)
    split: str = "test"  # evaluate on "test" classes, or "val" (held-out training ones)
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
    # the schedule of every method: no augmentation for warmup_epochs, then a ramp
    warmup_epochs: float = 0.0
    ramp_epochs: float = 0.0
    options: dict = dataclasses.field(default_factory=dict)
    eval_every: int = 2
    eval_batch_size: int = 512
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    num_workers: int = 0
    progress: bool = True  # display only: not part of the run's key

    @classmethod
    def make(cls, **settings):
        """A config from flat settings: RunConfig fields, and method options
        (``num_targets=2``), of which those the method does not take are left out
        (a comparison's shared options apply to the methods that take them);
        options set to None take the method's default."""
        fields = {f.name for f in dataclasses.fields(cls)}
        options = dict(settings.pop("options", None) or {})
        for name in [k for k in settings if k not in fields]:
            options[name] = settings.pop(name)
        for name in options:
            if name not in registry.method_options():
                raise TypeError(f"unknown run setting {name!r}")
        options = {k: v for k, v in options.items() if v is not None}
        cfg = cls(**settings)
        taken = (
            registry.METHODS[cfg.method].options
            if cfg.method in registry.METHODS
            else {}
        )
        cfg.options = {k: v for k, v in options.items() if k in taken}
        cfg.check()
        return cfg

    def check(self):
        """Clear errors for names the registry does not know."""
        if self.loss not in registry.LOSSES:
            raise ValueError(
                f"loss must be one of {tuple(registry.LOSSES)}, got {self.loss!r}"
            )
        if self.method not in registry.METHODS:
            raise ValueError(
                f"method must be one of {tuple(registry.METHODS)}, got {self.method!r}"
            )
        own = registry.METHODS[self.method].options
        unknown = sorted(set(self.options) - set(own))
        if unknown:
            raise ValueError(
                f"method {self.method!r} does not take {unknown}; its options: "
                f"{sorted(own)}"
            )
        proxy_only = set(registry.METHODS[self.method].proxy_only) & set(self.options)
        if proxy_only and not registry.takes_proxy_options(self.loss):
            raise ValueError(
                f"{sorted(proxy_only)} of method {self.method!r} act on a proxy "
                f"loss's proxies; loss {self.loss!r} has none"
            )

    def method_options(self):
        """The method's options: its defaults, updated by ``options``."""
        return {**registry.METHODS[self.method].options, **self.options}

    # where things are read from, and how they are shown: not what is trained
    NOT_IN_KEY = ("progress", "threads", "cache_dir", "dataset_root", "download")

    def identity(self):
        """Everything that makes the run what it is: every field but
        ``NOT_IN_KEY``, each as its declared type (``10`` and ``10.0`` epochs of
        warm-up are one run), with the method's options completed by their
        defaults, and no schedule for the baseline (it has none)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self.NOT_IN_KEY or f.name == "options":
                continue
            kind = type(f.default) if f.default is not dataclasses.MISSING else None
            out[f.name] = kind(value) if kind in (int, float, str) else value
        out["options"] = self.method_options()
        if self.method == "none":
            out["warmup_epochs"] = out["ramp_epochs"] = 0.0
        return out

    def key(self):
        """A hash of :meth:`identity`: runs share it only when every field agrees."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def name(self):
        """The run's folder name: readable, and unique by its key."""
        parts = [self.dataset, self.loss, self.method, self.split, f"seed={self.seed}"]
        return "_".join(str(p) for p in parts) + "_" + self.key()


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
    what every run of a comparison shares, done once before its workers start (and
    before a run that would fill the cache itself)."""
    if cfg.train_from_block and all(
        feature_cache_path(cfg, part).exists()
        for part in (f"train{cfg.cached_copies}", "eval1")
    ):
        return
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


def make_record_keeper(folder):
    """record-keeper writing CSV files and a database into ``folder`` (PML's
    ``logging_presets.get_record_keeper`` without its tensorboard writer)."""
    from record_keeper import RecordKeeper, RecordWriter

    return RecordKeeper(
        record_writer=RecordWriter(folder),
        attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
    )


def trainable_parameters(module):
    """The parameters that require grad (frozen BatchNorm ones do not)."""
    return [p for p in module.parameters() if p.requires_grad]


def run_dir_result(cfg, out_dir):
    """The saved result of a finished run of ``cfg`` in ``out_dir``, or None: only
    a run whose whole configuration matches counts."""
    path = Path(out_dir) / cfg.name() / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    stored = result.get("identity")
    return result if stored == json.loads(json.dumps(cfg.identity())) else None


def run(cfg, out_dir):
    """Train and evaluate one configuration; returns the result dict (also saved)."""
    if cfg.freeze_bn and not cfg.pretrained:
        raise ValueError(
            "freeze_bn keeps the BatchNorm statistics of pretrained weights; "
            "a trunk trained from scratch has none (use it with pretrained)"
        )
    check_fast_tier(cfg)
    registry.build_objective(cfg, 2, 1, None)  # a pair that cannot be built: now
    finished = run_dir_result(cfg, out_dir)
    if finished is not None:
        return finished
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.train_from_block:  # fill the feature cache first, so that this run
        prepare_data(cfg)  # starts from the same random state as those reading it
    run_dir = Path(out_dir) / cfg.name()
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt's logs
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.identity(), indent=1))
    # record-keeper logs the losses' and miners' statistics; PML collects them only
    # under its process-wide flag, so set it for this run and restore it afterwards
    collect_stats = c_f.COLLECT_STATS
    c_f.COLLECT_STATS = True
    try:
        return train_and_evaluate(cfg, run_dir)
    finally:
        c_f.COLLECT_STATS = collect_stats


def build_run(cfg, device):
    """Everything a run trains, seeded by ``cfg.seed`` in a fixed order (so every
    method of a seed starts from the same weights and sees the same batches):
    (models, objective, miner, optimizers, sampler, train_set, eval_set, info)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    train_set, eval_set = build_datasets(cfg)
    num_classes = int(np.max(train_set.labels)) + 1
    sampler = samplers.MPerClassSampler(
        train_set.labels,
        m=cfg.m_per_class,
        batch_size=cfg.batch_size,
        length_before_new_iter=len(train_set.labels),
    )
    info = dict(data_fingerprint=fingerprint(train_set, eval_set))
    trunk = build_trunk(cfg.backbone, cfg.pretrained, cfg.width).to(device)
    if cfg.train_from_block:
        trunk, train_set, eval_set = cached_datasets(
            cfg, trunk, train_set, eval_set, device
        )
        info["data_fingerprint"] += "/" + fingerprint(train_set, eval_set)
    if cfg.freeze_bn:  # the trainer keeps them in eval mode; their affine params:
        for module in trunk.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.requires_grad_(False)
    embedder = Embedder(trunk.output_size, cfg.embedding_size).to(device)
    generator = torch.Generator().manual_seed(cfg.seed + 1000)
    iterations_per_epoch = len(sampler) // cfg.batch_size
    objective, miner = registry.build_objective(
        cfg, num_classes, iterations_per_epoch, generator
    )
    objective = objective.to(device)
    # one AdamW per trained part, as PML's trainers name them
    parts = {
        "trunk": (trainable_parameters(trunk), cfg.trunk_lr or cfg.lr),
        "embedder": (trainable_parameters(embedder), cfg.lr),
        "metric_loss": (list(objective.parameters()), cfg.proxy_lr),
    }
    optimizers = {
        f"{name}_optimizer": torch.optim.AdamW(
            params, lr=lr, weight_decay=cfg.weight_decay
        )
        for name, (params, lr) in parts.items()
        if params
    }
    info.update(num_classes=num_classes, iterations_per_epoch=iterations_per_epoch)
    models = {"trunk": trunk, "embedder": embedder}
    return models, objective, miner, optimizers, sampler, train_set, eval_set, info


def named_children(obj):
    return dict(obj.named_children()) if isinstance(obj, torch.nn.Module) else {}


class Logging(logging_presets.HookContainer):
    """PML's ``HookContainer`` with its iteration log walking the loss functions
    through their sub-modules only: its own walk also copies every module's
    parameter and buffer dicts (a proxy loss's proxies, moving-average centres)
    at each log, 0.18 s a log at 5,000 classes."""

    def end_of_iteration_hook(self, trainer):
        if trainer.iteration % self.log_freq != 0:
            return
        iteration = trainer.get_global_iteration()
        losses = trainer.loss_tracker.losses
        self.record_keeper.update_records(
            losses, iteration, parent_name="loss_histories"
        )
        for funcs in (trainer.loss_funcs, trainer.mining_funcs):
            self.record_keeper.update_records(
                funcs,
                iteration,
                recursive_types=[torch.nn.Module],
                custom_attr_func=named_children,
            )


class RunHooks:
    """The trainer's hooks of one run: PML's ``HookContainer`` logging every 10
    iterations into record-keeper; the learning curves; a test with PML's
    ``GlobalEmbeddingSpaceTester`` every ``eval_every`` epochs and at the last; the
    next epoch's cached copy; the study's full-pass centres."""

    def __init__(self, cfg, run_dir, models, objective, data, device):
        self.cfg, self.models, self.device = cfg, models, device
        self.train_set, self.eval_set = data
        self.record_keeper = make_record_keeper(str(run_dir / "logs"))
        self.hooks = Logging(
            self.record_keeper,
            primary_metric="recall_at_1",
            save_models=False,
            log_freq=10,
        )
        self.tester = testers.GlobalEmbeddingSpaceTester(
            end_of_testing_hook=self.hooks.end_of_testing_hook,
            accuracy_calculator=pml_sft.RecallAtK(
                include=METRICS, recall_ks=(1, 2, 4, 8), device=torch.device("cpu")
            ),
            batch_size=cfg.eval_batch_size,
            dataloader_num_workers=0 if cfg.train_from_block else cfg.num_workers,
            data_device=device,
        )
        self.curves = {"epoch": [], "train_loss": [], **{m: [] for m in METRICS}}
        self.losses = []
        centers = getattr(getattr(objective, "augmenter", None), "centers", None)
        self.centers = centers if hasattr(centers, "fit") else None
        self.fit_centers()

    def fit_centers(self):
        if self.centers is not None:
            trunk, embedder = self.models["trunk"], self.models["embedder"]
            self.centers.fit(
                *embed(trunk, embedder, self.train_set, self.cfg, self.device)
            )

    def end_of_iteration(self, trainer):
        self.losses.append(trainer.losses["total_loss"].item())
        self.hooks.end_of_iteration_hook(trainer)

    def end_of_epoch(self, trainer):
        cfg, epoch = self.cfg, trainer.epoch
        self.curves["epoch"].append(epoch)
        self.curves["train_loss"].append(float(np.mean(self.losses)))
        self.losses.clear()
        acc = {m: None for m in METRICS}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            trunk, embedder = self.models["trunk"], self.models["embedder"]
            self.tester.test({"val": self.eval_set}, epoch, trunk, embedder)
            found = self.tester.all_accuracies["val"]
            acc = {m: float(found[f"{m}_level0"]) for m in METRICS}
        for m in METRICS:
            self.curves[m].append(acc[m])
        self.record_keeper.save_records()
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)  # the next epoch's shifted copy
        if epoch % cfg.options.get("center_every", 1) == 0:
            self.fit_centers()

    def best_epoch(self):
        return self.hooks.get_best_epoch_and_accuracy(self.tester, "val")[0]


def train_and_evaluate(cfg, run_dir):
    """Train with PML's ``MetricLossOnly`` and :class:`RunHooks`; saves
    result.json and model.pt in run_dir."""
    device = torch.device(cfg.device)
    models, objective, miner, optimizers, sampler, train_set, eval_set, info = (
        build_run(cfg, device)
    )
    hooks = RunHooks(cfg, run_dir, models, objective, (train_set, eval_set), device)
    trainer = trainers.MetricLossOnly(
        models=models,
        optimizers=optimizers,
        batch_size=cfg.batch_size,
        loss_funcs={"metric_loss": objective},
        mining_funcs={"tuple_miner": miner} if miner is not None else {},
        dataset=train_set,
        sampler=sampler,
        dataloader_num_workers=0 if cfg.train_from_block else cfg.num_workers,
        freeze_trunk_batchnorm=cfg.freeze_bn,
        iterations_per_epoch=info["iterations_per_epoch"],
        data_device=device,
        end_of_iteration_hook=hooks.end_of_iteration,
        end_of_epoch_hook=hooks.end_of_epoch,
    )
    start = time.time()
    trainer.train(num_epochs=cfg.epochs)
    result = dict(
        config=dataclasses.asdict(cfg),
        identity=cfg.identity(),
        key=cfg.key(),
        name=cfg.name(),
        metrics={m: hooks.curves[m][-1] for m in METRICS},
        curves=hooks.curves,
        best_epoch=hooks.best_epoch(),
        train_seconds=time.time() - start,
        num_train_classes=info["num_classes"],
        num_train_samples=len(train_set.labels),
        num_eval_samples=len(eval_set.labels),
        num_eval_classes=int(len(np.unique(eval_set.labels))),
        iterations=info["iterations_per_epoch"] * cfg.epochs,
        data_fingerprint=info["data_fingerprint"],
        cpu=device_description(device),
        commit=git_commit(),
    )
    torch.save({k: m.state_dict() for k, m in models.items()}, run_dir / "model.pt")
    tmp = run_dir / "result.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, run_dir / "result.json")
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


def parse_bool(text):
    return text.lower() in ("1", "true", "yes")


def add_config_arguments(parser, exclude=()):
    """One --option per RunConfig field (booleans take true/false), and one per
    method option of the registry (default None: the method's own default)."""
    for field in dataclasses.fields(RunConfig):
        if field.name in (*exclude, "options"):
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = parse_bool if isinstance(field.default, bool) else type(field.default)
        choices = {"loss": registry.LOSSES, "method": registry.METHODS}.get(field.name)
        parser.add_argument(flag, type=kind, default=field.default, choices=choices)
    group = parser.add_argument_group("method options (registry.METHODS)")
    for name, default in registry.method_options().items():
        if name in exclude:
            continue
        kind = parse_bool if isinstance(default, bool) else type(default)
        methods = ", ".join(registry.methods_taking(name))
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{methods} (default {default})",
        )
    return parser


def settings_from_args(args, parser, methods):
    """The flat run settings of parsed ``args`` (RunConfig fields and method
    options); an option set on the command line must be taken by one of
    ``methods``."""
    settings = dict(vars(args))
    for name in registry.method_options():
        if settings.get(name) is not None and not any(
            name in registry.METHODS[m].options for m in methods
        ):
            parser.error(
                f"--{name.replace('_', '-')} is an option of "
                f"{registry.methods_taking(name)}, not of {list(methods)}"
            )
    return settings


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and evaluate one run.")
    add_config_arguments(parser)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    out = args.__dict__.pop("out")
    settings = settings_from_args(args, parser, [args.method])
    if args.backbone not in BACKBONES:
        parser.error(f"--backbone must be one of {BACKBONES}")
    try:
        cfg = RunConfig.make(**settings)
        registry.build_objective(cfg, 2, 1, None)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    result = run(cfg, out)
    print(json.dumps(result["metrics"], indent=1))


if __name__ == "__main__":
    main()
