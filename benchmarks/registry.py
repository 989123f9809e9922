"""The benchmarks' losses and methods, one entry each; everything reads them.

A loss is its PML class and options (in powerful-benchmarker's config form), its
miner and the learning rate chosen for it on validation classes. A method is its
pml-sft wrapper, the wrapper's own options with their defaults, the three settings
the tuning tries (the default first), and the losses the family comparison runs it
on. The harness (``benchmarks.train``), the comparisons (``compare``, ``family``),
the tuning (``family_tuning``), the speed table (``family_speed``) and the
powerful-benchmarker configs (``python -m benchmarks.registry --write-pb-configs``)
are all built from these two tables, so a new method is one entry here (plus its
augmenter and a test).
"""

import argparse
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Callable, Optional

import torch
from pytorch_metric_learning import losses, miners

import pml_sft
from pml_sft.losses import PROXY_PARAMETERS

LR_FACTORS = (1.0, 0.5, 2.0)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A PML loss as the benchmarks train it.

    Args:
        spec: ``{class name: options}`` of the loss (a class of PML's ``losses``).
        miner: ``{class name: options}`` of its miner, or None.
        lr: the learning rate chosen on validation classes for the fast tier
            (benchmarks/results/pretrained_lr_tuning; normsoftmax takes
            MultiSimilarity's).
        proxies: whether the loss holds proxies (it then takes ``num_classes`` and
            ``embedding_size``, and its parameters train at the run's ``proxy_lr``).
    """

    spec: dict
    miner: Optional[dict] = None
    lr: float = 1e-3
    proxies: bool = False


def takes_proxy_options(loss):
    """Whether the loss ``loss`` has the proxies a method's ``proxy_only`` options
    act on (ProxyAnchor, NormalizedSoftmax, ProxyNCA; not the per-row losses with
    class weights, such as ArcFace)."""
    return next(iter(LOSSES[loss].spec)) in PROXY_PARAMETERS


@dataclasses.dataclass(frozen=True)
class Method:
    """A feature-space augmentation method (or the baseline, ``wrapper=None``).

    Args:
        label: its name in tables.
        wrapper: the pml-sft loss wrapper's class name.
        options: the run options of the method -> their defaults (each becomes a
            command-line flag of the harness, ``--num-points`` for ``num_points``).
        grid: the tuning's three settings, the default first (run options, or
            ``lr_factor``: the loss's chosen rate times this).
        losses: the losses the family comparison runs it on.
        kwargs: run option -> the wrapper's argument, where the names differ.
        build: a builder ``build(cfg, inner, miner, context)`` for a method whose
            objects a run's options choose (SFT and translation: the study's
            centres and ablations); None: ``wrapper(loss, miner, **options)``.
        description: one line for the generated configs.
        configs: losses it gets a powerful-benchmarker config for besides those of
            its comparison.
        proxy_only: options the wrapper takes with a proxy loss only (one of
            ``pml_sft.losses.PROXY_PARAMETERS``): left out of its arguments with
            another loss, where the wrapper would refuse them, and refused in a
            run that sets them there.
    """

    label: str
    wrapper: Optional[str]
    options: dict
    grid: tuple
    losses: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    build: Optional[Callable] = None
    description: str = ""
    configs: tuple = ()
    proxy_only: tuple = ()

    def wrapper_options(self, loss, options):
        """``options`` (run option -> value) as the wrapper's arguments for
        ``loss``."""
        proxies = takes_proxy_options(loss)
        return {
            self.kwargs.get(k, k): v
            for k, v in options.items()
            if proxies or k not in self.proxy_only
        }


LOSSES = {
    "multisimilarity": Loss(
        {"MultiSimilarityLoss": {"alpha": 2, "beta": 50, "base": 0.5}},
        miner={"MultiSimilarityMiner": {"epsilon": 0.1}},
        lr=3e-3,
    ),
    "triplet": Loss(
        {"TripletMarginLoss": {"margin": 0.1}},
        miner={"TripletMarginMiner": {"margin": 0.1, "type_of_triplets": "semihard"}},
        lr=3e-3,
    ),
    "contrastive": Loss(
        {"ContrastiveLoss": {"pos_margin": 0.0, "neg_margin": 0.5}}, lr=1e-2
    ),
    "proxyanchor": Loss(
        {"ProxyAnchorLoss": {"margin": 0.1, "alpha": 32}}, lr=3e-3, proxies=True
    ),
    "normsoftmax": Loss(
        {"NormalizedSoftmaxLoss": {"temperature": 0.05}}, lr=3e-3, proxies=True
    ),
    "arcface": Loss(
        {"ArcFaceLoss": {"margin": 28.6, "scale": 64}}, lr=1e-3, proxies=True
    ),
}
PAIR_LOSSES = ("multisimilarity", "triplet", "contrastive")
PROXY_LOSSES = ("proxyanchor", "normsoftmax")
MIX_LOSSES = ("multisimilarity", "contrastive", "normsoftmax")  # mixup, covariance

# the options of the SFT study (issue 11), beside the core: they choose the
# centres and the contrib classes (their defaults build the core classes)
STUDY_OPTIONS = {
    "centers": "batch",  # "batch", "ema", "dataset" (a full pass) or "proxies"
    "ema_momentum": 0.9,
    "center_every": 1,  # centers="dataset": epochs between full passes
    "target_pool": "batch",
    "nearest_targets": 0,  # 0: any other class; m: one of the m nearest
    "strength": 1.0,
    "consistent_only": False,
    "detach_augmented": False,
    "aug_weight": 1.0,
    "objective": "joint",  # "joint" or "separate"
    "synthetic_role": "any",  # "any", "partner" or "negative"
}
TARGETS_GRID = ({"num_targets": 1}, {"num_targets": 2}, {"num_targets": 4})
LR_GRID = tuple({"lr_factor": f} for f in LR_FACTORS)


def sft_objective(cfg, inner, miner, context):
    """SFT or translation with the run's study options: the core augmenter with
    its centres in FeatureTransformLoss, or the contrib classes where an ablation
    option is set."""
    from pml_sft.contrib import (
        AblationFeatureTranslation,
        AblationLoss,
        AblationSphericalFeatureTransform,
        DatasetClassCenters,
        ProxyClassCenters,
    )

    o = cfg.method_options()
    num_classes, size = context["num_classes"], cfg.embedding_size
    centers = {
        "batch": lambda: pml_sft.BatchClassCenters(),
        "ema": lambda: pml_sft.MovingAverageClassCenters(
            num_classes, size, momentum=o["ema_momentum"]
        ),
        "dataset": lambda: DatasetClassCenters(num_classes, size),
        "proxies": lambda: ProxyClassCenters(inner),
    }[o["centers"]]()
    options = dict(centers=centers, num_targets=o["num_targets"])
    options.update(target_pool=o["target_pool"], generator=context["generator"])
    ablated = {k: o[k] for k in ("strength", "consistent_only", "detach_augmented")}
    ablated["nearest_targets"] = o["nearest_targets"] or None
    if ablated == dict(
        strength=1.0,
        consistent_only=False,
        detach_augmented=False,
        nearest_targets=None,
    ):
        sft, translation = pml_sft.SphericalFeatureTransform, pml_sft.FeatureTranslation
    else:
        sft, translation = AblationSphericalFeatureTransform, AblationFeatureTranslation
        options.update(ablated)
    augmenter = (sft if cfg.method == "sft" else translation)(
        **options, collect_stats=True
    )
    roles = {k: o[k] for k in ("aug_weight", "objective", "synthetic_role")}
    schedule = context["schedule"]
    if roles == dict(aug_weight=1.0, objective="joint", synthetic_role="any"):
        return pml_sft.FeatureTransformLoss(inner, augmenter, miner, **schedule)
    return AblationLoss(inner, augmenter, miner, **roles, **schedule)


METHODS = {
    "none": Method("baseline", None, {}, LR_GRID, ()),
    "translation": Method(
        "translation",
        "FeatureTranslationLoss",
        {"num_targets": 1, **STUDY_OPTIONS},
        TARGETS_GRID,
        (*PAIR_LOSSES, *PROXY_LOSSES),
        build=sft_objective,
        description="translation x - c_i + c_j (the baseline SFT improves on)",
    ),
    "sft": Method(
        "SFT",
        "SFTLoss",
        {"num_targets": 1, **STUDY_OPTIONS},
        TARGETS_GRID,
        (*PAIR_LOSSES, *PROXY_LOSSES),
        build=sft_objective,
        description="Spherical Feature Transform (rotation c_i -> c_j)",
    ),
    "ee": Method(
        "Embedding Expansion",
        "EmbeddingExpansionLoss",
        {"num_points": 2},
        ({"num_points": 2}, {"num_points": 1}, {"num_points": 4}),
        PAIR_LOSSES,
        description="Embedding Expansion (points between every same-class pair)",
    ),
    "ss": Method(
        "Symmetrical Synthesis",
        "SymmetricalSynthesisLoss",
        {},
        LR_GRID,
        PAIR_LOSSES,
        description="Symmetrical Synthesis (each of a same-class pair reflected "
        "about the other)",
    ),
    "ps": Method(
        "Proxy Synthesis",
        "ProxySynthesisLoss",
        {"ps_alpha": 0.4, "ps_mu": 1.0},
        (
            {"ps_alpha": 0.4, "ps_mu": 1.0},
            {"ps_alpha": 0.4, "ps_mu": 0.5},
            {"ps_alpha": 1.0, "ps_mu": 1.0},
        ),
        PROXY_LOSSES,
        kwargs={"ps_alpha": "alpha", "ps_mu": "mu"},
        description="Proxy Synthesis (synthetic classes: Beta(alpha, alpha) mixes "
        "of samples and of their proxies)",
    ),
    "see": Method(
        "Spherical Embedding Expansion",
        "SphericalEmbeddingExpansionLoss",
        {"see_points": 16, "min_share": 0.04, "max_share": 0.4, "see_weight": 0.2},
        # the largest share expanded (the paper's threshold schedule, 0.4 -> 0.04,
        # as a share): an option every loss honours (see_weight weighs the proxy
        # losses' separate term only; a first grid over it ran MultiSimilarity
        # three times alike)
        ({"max_share": 0.4}, {"max_share": 0.2}, {"max_share": 0.8}),
        ("proxyanchor", "multisimilarity", "normsoftmax"),
        kwargs={"see_points": "num_points", "see_weight": "aug_weight"},
        proxy_only=("see_weight",),
        description="Spherical Embedding Expansion (points on the sphere around "
        "the class proxy or batch mean, at each expanded sample's angle)",
    ),
    "mixup": Method(
        "embedding mixup",
        "EmbeddingMixupLoss",
        {"mixup_alpha": 1.0},
        ({"mixup_alpha": 1.0}, {"mixup_alpha": 0.4}, {"mixup_alpha": 2.0}),
        MIX_LOSSES,
        kwargs={"mixup_alpha": "alpha"},
        description="embedding mixup (rows of two classes mixed, trained as both "
        "with the mixing weight)",
    ),
    "cov": Method(
        "class-covariance sampling",
        "ClassCovarianceSamplingLoss",
        {"cov_samples": 1, "cov_strength": 0.5},
        ({"cov_strength": 0.5}, {"cov_strength": 0.25}, {"cov_strength": 1.0}),
        MIX_LOSSES,
        kwargs={"cov_samples": "num_samples", "cov_strength": "strength"},
        description="class-covariance sampling (new samples of each class drawn "
        "from its estimated covariance)",
    ),
    "das": Method(
        "Densely Anchored Sampling",
        "DenselyAnchoredSamplingLoss",
        {"num_produce": 3},
        ({"num_produce": 3}, {"num_produce": 1}, {"num_produce": 5}),
        PAIR_LOSSES,
        description="Densely Anchored Sampling (detached copies scaled on each "
        "class's top dimensions and shifted by remembered same-class differences)",
    ),
}


def method_options():
    """Every method option -> its default, over all methods (options shared by
    methods, such as ``num_targets``, have one default)."""
    options = {}
    for method in METHODS.values():
        for name, default in method.options.items():
            if options.setdefault(name, default) != default:
                raise AssertionError(f"option {name} has two defaults")
    return options


def methods_taking(option):
    return [name for name, m in METHODS.items() if option in m.options]


def family_methods(loss):
    """The methods the family comparison runs on ``loss`` (besides the baseline)."""
    return tuple(n for n, m in METHODS.items() if loss in m.losses)


FAMILY_LOSSES = tuple(name for name in LOSSES if family_methods(name))


def build_spec(spec, module, **extra):
    """The object of a ``{class name: options}`` spec from ``module``."""
    ((name, options),) = spec.items()
    return getattr(module, name)(**options, **extra)


def build_loss(name, num_classes, embedding_size):
    """(loss, miner) of the loss ``name``."""
    entry = LOSSES[name]
    extra = (
        dict(num_classes=num_classes, embedding_size=embedding_size)
        if entry.proxies
        else {}
    )
    loss = build_spec(entry.spec, losses, **extra)
    miner = build_spec(entry.miner, miners) if entry.miner else None
    return loss, miner


def build_objective(cfg, num_classes, iterations_per_epoch, generator):
    """(loss, miner) a run trains: the plain loss and its miner, or the method's
    wrapper around them (the miner then mines the enlarged batch, inside it)."""
    inner, miner = build_loss(cfg.loss, num_classes, cfg.embedding_size)
    method = METHODS[cfg.method]
    if method.wrapper is None:
        return inner, miner
    schedule = dict(  # (the length too: SEE's share grows over it)
        total_iterations=cfg.epochs * iterations_per_epoch,
        warmup_iterations=int(round(cfg.warmup_epochs * iterations_per_epoch)),
        ramp_iterations=int(round(cfg.ramp_epochs * iterations_per_epoch)),
        collect_stats=True,
    )
    if method.build is not None:
        context = dict(num_classes=num_classes, generator=generator, schedule=schedule)
        return method.build(cfg, inner, miner, context), None
    cls = getattr(pml_sft, method.wrapper)
    kwargs = method.wrapper_options(cfg.loss, cfg.method_options())
    params = inspect.signature(cls).parameters
    if "miner" in params:
        kwargs["miner"] = miner
    elif miner is not None:
        raise ValueError(
            f"method {cfg.method!r} ({cls.__name__}) takes no miner; loss "
            f"{cfg.loss!r} has one"
        )
    for name, value in (
        ("num_classes", num_classes),
        ("embedding_size", cfg.embedding_size),
    ):
        if name in params:
            kwargs[name] = value
    if "generator" in params:
        kwargs["generator"] = generator
    built = cls(inner, **kwargs, **schedule)
    # what the augmenter needs of the embeddings (their size), before any run
    rows = torch.zeros(0, cfg.embedding_size)
    built.augmenter.check_inputs(rows, torch.zeros(0, dtype=torch.long))
    return built, None


def pb_config(loss_name, method_name):
    """The powerful-benchmarker ``config_loss_and_miners`` entry of a (loss,
    method) pair: the wrapper nests the loss and its miner; the schedule comes
    from the experiment (``SFTLossFactory`` fills ``total_iterations``)."""
    entry, method = LOSSES[loss_name], METHODS[method_name]
    loss = {name: dict(options) for name, options in entry.spec.items()}
    if entry.proxies:
        next(iter(loss.values()))["embedding_size"] = 128
    if method.wrapper is None:
        metric_loss, mining = loss, (
            {"tuple_miner": entry.miner} if entry.miner else {}
        )
    else:
        own = method.wrapper_options(
            loss_name,
            {k: v for k, v in method.options.items() if k not in STUDY_OPTIONS},
        )
        if (
            "embedding_size"
            in inspect.signature(getattr(pml_sft, method.wrapper)).parameters
        ):
            own = {"embedding_size": 128, **own}
        body = {**own, "loss": loss}
        if entry.miner:
            body["miner"] = entry.miner
        metric_loss, mining = {method.wrapper: body}, {}
    return {
        "loss_funcs": {"metric_loss": metric_loss},
        "sampler": {"MPerClassSampler": {"m": 4}},
        "mining_funcs": mining,
    }


def pb_file_name(loss_name, method_name):
    label = "baseline" if method_name == "none" else METHODS[method_name].label
    return f"{loss_name}_{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}.yaml"


def pb_pairs():
    """The (loss, method) pairs that get a powerful-benchmarker config: every
    method on the losses of its comparison and of its ``configs``, and the
    baselines, SFT and translation of every loss."""
    pairs = []
    for loss in LOSSES:
        for method, entry in METHODS.items():
            takes = (
                method in ("none", "sft", "translation")
                or loss in entry.losses
                or loss in entry.configs
            )
            if takes:
                pairs.append((loss, method))
    return pairs


def write_pb_configs(folder):
    """Write the generated config_loss_and_miners files into ``folder``."""
    import yaml

    folder = Path(folder)
    written = []
    for loss, method in pb_pairs():
        entry = METHODS[method]
        what = (
            "baseline, no feature-space augmentation"
            if method == "none"
            else (
                f"{entry.description}; the schedule comes from the experiment's length"
            )
        )
        if "embedding_size" in str(pb_config(loss, method)):
            what += " (embedding_size must match the embedder's output)"
        text = f"# {loss}: {what}. Generated by python -m benchmarks.registry.\n"
        text += yaml.safe_dump(pb_config(loss, method), sort_keys=False)
        path = folder / pb_file_name(loss, method)
        path.write_text(text)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write-pb-configs",
        default="benchmarks/powerful_benchmarker/configs/config_loss_and_miners",
        metavar="FOLDER",
    )
    args = parser.parse_args(argv)
    for path in write_pb_configs(args.write_pb_configs):
        print(path)


if __name__ == "__main__":
    main()
