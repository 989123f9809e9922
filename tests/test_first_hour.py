"""A researcher's first hour: no silent no-op, and the statistics that show it are
recorded by default."""

import warnings

import pytest
import torch
from pytorch_metric_learning import losses

import pml_sft

from .helpers import DEVICE


def _shuffled_batches(steps=15, classes=1000, batch=32, d=8):
    """Batches of a shuffled loader over many classes: (almost) no class twice."""
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        labels = torch.randperm(classes, generator=g)[:batch]
        yield torch.randn(batch, d, generator=g).to(DEVICE), labels.to(DEVICE)


@pytest.mark.parametrize("build", ["sft", "transform", "ee"])
def test_a_wrapper_that_augments_nothing_warns_once_naming_the_sampler(build):
    inner, start = losses.MultiSimilarityLoss(), dict(warmup_iterations=2)
    loss_fn = {
        "sft": lambda: pml_sft.SFTLoss(inner, **start),
        "transform": lambda: pml_sft.FeatureTransformLoss(
            inner, pml_sft.FeatureTranslation(), **start
        ),
        "ee": lambda: pml_sft.EmbeddingExpansionLoss(inner, **start),
    }[build]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in _shuffled_batches():
            loss_fn(x.requires_grad_(), y)
    said = [str(w.message) for w in caught if "augmented nothing" in str(w.message)]
    assert len(said) == 1 and "MPerClassSampler" in said[0]


def test_no_warning_while_it_augments_or_before_it_starts():
    loss_fn = pml_sft.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=100)
    x = torch.randn(16, 8, device=DEVICE, requires_grad=True)
    y = torch.arange(4, device=DEVICE).repeat_interleave(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(20):  # before its start: nothing to say
            loss_fn(x, torch.arange(16, device=DEVICE))
        loss_fn.warmup_iterations = 0
        for _ in range(20):
            loss_fn(x, y)
    assert loss_fn.num_augmented == 16


def test_num_augmented_and_the_weight_are_recorded_without_collect_stats():
    for loss_fn in (
        pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0),
        pml_sft.EmbeddingExpansionLoss(losses.ContrastiveLoss(), warmup_iterations=0),
    ):
        assert not loss_fn.collect_stats
        assert {"num_augmented", "current_aug_weight"} <= set(loss_fn._record_these)


def test_integer_like_counts_are_accepted():
    import numpy as np

    inner = losses.ContrastiveLoss()
    for count in (np.int64(4), torch.tensor(4)):
        loss_fn = pml_sft.SFTLoss(inner, num_targets=count // 2, total_iterations=count)
        assert (loss_fn.num_targets, loss_fn.warmup_iterations) == (2, 2)
        assert type(loss_fn.num_targets) is int
        assert pml_sft.DenselyAnchoredSampling(count, 8, num_produce=count).num_produce
        assert pml_sft.training_iterations(list(range(8)), 2, count) == 16
    for bad in (True, 2.5, "4"):
        with pytest.raises(ValueError, match="num_targets"):
            pml_sft.SFTLoss(inner, num_targets=bad, warmup_iterations=0)


def test_what_is_not_a_built_loss_is_refused_at_construction():
    for bad in ("ContrastiveLoss", losses.ContrastiveLoss):
        with pytest.raises((TypeError, ValueError), match="built loss|cannot wrap"):
            pml_sft.SFTLoss(bad, warmup_iterations=0)
    with pytest.raises(TypeError, match="built loss"):
        pml_sft.FeatureTransformLoss(
            losses.ContrastiveLoss,
            pml_sft.SphericalFeatureTransform(),
            total_iterations=4,
        )


def test_options_moved_to_contrib_are_named_as_such():
    with pytest.raises(TypeError, match="AblationSphericalFeatureTransform"):
        pml_sft.SphericalFeatureTransform(strength=0.5)
    with pytest.raises(TypeError, match="AblationFeatureTranslation"):
        pml_sft.FeatureTranslation(nearest_targets=3)
    assert (
        pml_sft.contrib.AblationSphericalFeatureTransform(strength=0.5).strength == 0.5
    )


def test_every_public_class_documents_its_arguments():
    import inspect

    for name in pml_sft.__all__:
        obj = getattr(pml_sft, name)
        if not inspect.isclass(obj):
            continue
        params = inspect.signature(obj.__init__).parameters
        if [p for p in params if p not in ("self", "args", "kwargs")]:
            doc = inspect.getdoc(obj) or ""
            assert "Args:" in doc or "Attributes:" in doc, name


def _public_api():
    """(dotted name, object) of every class and function pml_sft and
    pml_sft.functional export."""
    import inspect

    for module in (pml_sft, pml_sft.functional):
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.ismodule(obj):
                yield f"{module.__name__}.{name}", obj


# the catch-all parameters (*args, **kwargs) allowed, with or without a hint, where
# they cannot be avoided: name -> the parameter
CATCH_ALLS = {
    "pml_sft.RecallAtK": "kwargs",  # PML's AccuracyCalculator options, passed on
}


def _hint_cases():
    import inspect

    for name, obj in _public_api():
        yield pytest.param(obj, CATCH_ALLS.get(name), id=name)
        forward = getattr(obj, "forward", None) if inspect.isclass(obj) else None
        if forward is None:
            continue
        yield pytest.param(forward, None, id=f"{name}.forward")


@pytest.mark.parametrize("obj,catch_all", list(_hint_cases()))
def test_the_public_api_has_type_hints(obj, catch_all):
    """Every parameter of the exported classes (their constructor and forward) and
    functions has a type hint; self and catch-alls are allowed only as listed."""
    import inspect

    params = list(inspect.signature(obj).parameters.values())
    if params and params[0].name == "self":  # (a forward, unbound)
        params = params[1:]
    var_kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    catch_alls = [p.name for p in params if p.kind in var_kinds]
    assert catch_alls == ([catch_all] if catch_all else []), catch_alls
    missing = [
        p.name
        for p in params
        if p.annotation is inspect.Parameter.empty and p.kind not in var_kinds
    ]
    assert not missing, f"no type hint on {missing}"


TYPOS = [  # (class, positional arguments, typo, the option meant)
    ("EmbeddingExpansion", (), "num_point", "num_points"),
    ("SymmetricalSynthesis", (), "collect_stat", "collect_stats"),
    ("ProxySynthesis", (), "alpah", "alpha"),
    ("DenselyAnchoredSampling", (4, 8), "num_produces", "num_produce"),
    ("SphericalFeatureTransform", (), "num_target", "num_targets"),
    ("FeatureTranslation", (), "renormalise", "renormalize"),
    ("BatchClassCenters", (), "min_sample", "min_samples"),
    ("MovingAverageClassCenters", (4, 8), "momentun", "momentum"),
    ("RecallAtK", (), "recal_ks", "recall_ks"),
    ("contrib.AblationSphericalFeatureTransform", (), "num_target", "num_targets"),
    ("contrib.DatasetClassCenters", (4, 8), "min_sample", "min_samples"),
    ("SphericalFeatureTransform", (), "colour", None),
]


@pytest.mark.parametrize(
    "name,args,typo,meant", TYPOS, ids=[f"{t[0]}-{t[2]}" for t in TYPOS]
)
def test_a_keyword_typo_names_the_class_called_and_the_closest_option(
    name, args, typo, meant
):
    """Not the PML base (ModuleWithRecords, AccuracyCalculator) nor the pml_sft
    base that defines the constructor, on every Python (3.9's own message names
    no class)."""
    cls = pml_sft
    for part in name.split("."):
        cls = getattr(cls, part)
    with pytest.raises(TypeError) as caught:
        cls(*args, **{typo: 2})
    said = str(caught.value)
    expected = f"{cls.__name__}.__init__() got an unexpected keyword argument {typo!r}"
    assert said.startswith(expected), said
    if meant is None:
        assert said == expected
    else:
        assert said == f"{expected}; did you mean {meant!r}?"


@pytest.mark.parametrize(
    "wrapper,args",
    [
        ("EmbeddingExpansionLoss", ()),
        ("SymmetricalSynthesisLoss", ()),
        ("ProxySynthesisLoss", ()),
        ("DenselyAnchoredSamplingLoss", (4, 8)),
    ],
)
def test_a_family_wrapper_typo_names_the_wrapper(wrapper, args):
    inner = losses.ProxyAnchorLoss(4, 8)
    with pytest.raises(TypeError, match=rf"^{wrapper}\.__init__\(\) got an unexpected"):
        getattr(pml_sft, wrapper)(inner, *args, warmup_iteration=0)
