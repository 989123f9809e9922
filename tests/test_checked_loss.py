"""What the plugin's wrappers check when they are built and watch while they run
(pml_sft/losses/checked_loss.py): schedules that cannot work, miners and losses
that are not built or not tested, moved and misspelt options, few or no samples
moved, and statistics that would read as measurements."""

import math
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners

import pml_sft

from .helpers import DEVICE


def batches(steps, labels_of, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        labels = labels_of(g)
        x = torch.randn(len(labels), d, generator=g).to(DEVICE).requires_grad_()
        yield x, labels.to(DEVICE)


def run(loss_fn, steps, labels_of):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, y in batches(steps, labels_of):
            loss_fn(x, y).backward()
    return [str(w.message) for w in caught]


def test_a_schedule_that_never_starts_is_refused():
    with pytest.raises(ValueError, match="augmentation would never start"):
        pml_sft.SFTLoss(
            losses.ContrastiveLoss(), total_iterations=100, warmup_iterations=200
        )


def test_calls_past_total_iterations_warn_once():
    loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), total_iterations=20)
    said = run(loss_fn, 30, lambda g: torch.arange(8).repeat_interleave(4))
    assert len([s for s in said if "more than total_iterations=20" in s]) == 1
    assert all("not in epochs" in s for s in said)


def test_few_samples_moved_warns_once_per_wrapper():
    # 300 classes, batches of 32: a few pairs per batch, so some calls augment
    # and most samples never move; the old watch (10 idle calls in a row) missed it
    loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    said = run(loss_fn, 60, lambda g: torch.randint(0, 300, (32,), generator=g))
    (message,) = [s for s in said if "SFTLoss" in s]
    assert "MPerClassSampler" in message
    assert "two or more samples" in message and "at least one other class" in message
    # a sampler that gives pairs: no warning
    loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    assert not run(loss_fn, 40, lambda g: torch.randperm(8, generator=g).repeat(4))


def test_one_class_only_is_named_as_the_cause():
    loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)
    said = run(loss_fn, 12, lambda g: torch.zeros(32, dtype=torch.long))
    (message,) = said
    assert "augmented nothing in its last 10 calls" in message
    assert "at least one other class" in message


@pytest.mark.parametrize(
    "value", [torch.tensor(True), torch.tensor([[10]]), np.array([10]), True, 10.0]
)
def test_counts_that_are_not_integers_are_refused(value):
    with pytest.raises(ValueError, match="total_iterations must be an int >= 0"):
        pml_sft.SFTLoss(losses.ContrastiveLoss(), total_iterations=value)


def test_integer_like_counts_are_taken():
    for value in (np.int64(10), torch.tensor(10), np.array(10)):
        loss_fn = pml_sft.SFTLoss(losses.ContrastiveLoss(), total_iterations=value)
        assert loss_fn.warmup_iterations == 5 and type(loss_fn.total_iterations) is int


def test_an_empty_batch_records_no_stale_statistics():
    loss_fn = pml_sft.SFTLoss(
        losses.ContrastiveLoss(), warmup_iterations=0, collect_stats=True
    )
    x = torch.randn(32, 8, device=DEVICE, requires_grad=True)
    loss_fn(x, torch.arange(8, device=DEVICE).repeat_interleave(4))
    assert loss_fn.num_augmented == 32 and loss_fn.mean_center_angle > 0
    empty = torch.randn(0, 8, device=DEVICE, requires_grad=True)
    loss_fn(empty, torch.zeros(0, dtype=torch.long, device=DEVICE))
    assert loss_fn.num_augmented == 0 and loss_fn.current_aug_weight == 1.0
    assert math.isnan(loss_fn.mean_center_angle)


def test_no_centre_statistics_before_augmentation_starts():
    loss_fn = pml_sft.SFTLoss(
        losses.ContrastiveLoss(), warmup_iterations=5, collect_stats=True
    )
    x = torch.randn(32, 8, device=DEVICE, requires_grad=True)
    loss_fn(x, torch.arange(8, device=DEVICE).repeat_interleave(4))
    assert loss_fn.num_augmented == 0 and math.isnan(loss_fn.mean_center_angle)


def test_methods_without_targets_record_no_num_targets():
    assert (
        "num_targets"
        in pml_sft.SFTLoss(losses.ContrastiveLoss(), warmup_iterations=0)._record_these
    )
    for wrapper in (
        pml_sft.EmbeddingExpansionLoss(losses.ContrastiveLoss(), warmup_iterations=0),
        pml_sft.SymmetricalSynthesisLoss(losses.ContrastiveLoss(), warmup_iterations=0),
        pml_sft.ProxySynthesisLoss(losses.ProxyAnchorLoss(4, 8), warmup_iterations=0),
    ):
        assert "num_targets" not in wrapper._record_these, type(wrapper).__name__
        assert "num_augmented" in wrapper._record_these


def test_miners_and_losses_are_checked_when_the_wrapper_is_built():
    for miner, said in (
        (miners.MultiSimilarityMiner, "the class MultiSimilarityMiner: build it"),
        ("ms", "got str 'ms'"),
        (losses.ContrastiveLoss(), "got ContrastiveLoss"),
    ):
        with pytest.raises(TypeError, match=said):
            pml_sft.SFTLoss(losses.ContrastiveLoss(), miner, total_iterations=10)

    class MyContrastive(losses.ContrastiveLoss):
        pass

    with pytest.raises(
        ValueError,
        match=r"derives from ContrastiveLoss, which is\)\. To try it anyway, "
        r"subclass SFTLoss and add 'MyContrastive' to its supported_losses\(\)",
    ):
        pml_sft.SFTLoss(MyContrastive(), total_iterations=10)

    class Tried(pml_sft.SFTLoss):  # the way out the message names
        @staticmethod
        def supported_losses():
            return [*pml_sft.SFTLoss.supported_losses(), "MyContrastive"]

    Tried(MyContrastive(), total_iterations=10)


@pytest.mark.parametrize(
    "wrapper,option,said",
    [
        (pml_sft.SFTLoss, "aug_weight", "pml_sft.contrib.AblationLoss"),
        (pml_sft.SFTLoss, "nearest_targets", "AblationSphericalFeatureTransform"),
        (pml_sft.SFTLoss, "centers", r"SphericalFeatureTransform\(centers=\.\.\.\)"),
        (pml_sft.SFTLoss, "reducer", "the wrapped loss"),
        (pml_sft.FeatureTranslationLoss, "synthetic_role", "contrib.AblationLoss"),
        (pml_sft.SFTLoss, "total_iteration", "did you mean 'total_iterations'"),
        (
            pml_sft.FeatureTranslationLoss,
            "warmup_iteration",
            r"^FeatureTranslationLoss\.__init__\(\) got an unexpected .* "
            r"'warmup_iterations'",
        ),
    ],
)
def test_moved_and_misspelt_options_are_named(wrapper, option, said):
    with pytest.raises(TypeError, match=said):
        wrapper(losses.ContrastiveLoss(), total_iterations=10, **{option: 1})


def test_moved_options_of_feature_transform_loss_are_named():
    with pytest.raises(TypeError, match="contrib.AblationLoss"):
        pml_sft.FeatureTransformLoss(
            losses.ContrastiveLoss(),
            pml_sft.SphericalFeatureTransform(),
            total_iterations=10,
            aug_weight=0.5,
        )


def test_classes_moved_to_contrib_are_named():
    with pytest.raises(AttributeError, match="moved to pml_sft.contrib"):
        pml_sft.DatasetClassCenters
    with pytest.raises(AttributeError, match="has no attribute 'Nothing'"):
        pml_sft.Nothing


def test_training_iterations_names_the_batch_size():
    data = torch.utils.data.TensorDataset(torch.zeros(100, 2), torch.zeros(100))
    with pytest.raises(ValueError, match="batch_size=200 is larger than the 100"):
        pml_sft.training_iterations(data, 200, 3)
    with pytest.raises(ValueError, match="batch_size must be an int"):
        pml_sft.training_iterations(data, 32.0, 3)
    assert pml_sft.training_iterations(data, np.int64(32), 3) == 9


def test_a_split_typo_fails_before_anything_is_fetched(tmp_path, monkeypatch):
    from pml_sft.datasets import emoji

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetched before the split was checked")

    monkeypatch.setattr(emoji, "prepare", no_fetch)
    with pytest.raises(ValueError, match="split must be one of"):
        pml_sft.EmojiDataset(str(tmp_path), split="tets", download=True)


def test_collect_stats_on_the_wrapper_switches_on_the_augmenters_statistics():
    augmenter = pml_sft.SphericalFeatureTransform(
        centers=pml_sft.BatchClassCenters(collect_stats=False), collect_stats=False
    )
    assert not augmenter.collect_stats and not augmenter.centers.collect_stats
    loss_fn = pml_sft.FeatureTransformLoss(
        losses.ContrastiveLoss(), augmenter, warmup_iterations=0, collect_stats=True
    )
    x = torch.randn(32, 8, device=DEVICE, requires_grad=True)
    loss_fn(x, torch.arange(8, device=DEVICE).repeat_interleave(4))
    recorded = augmenter._record_these_stats
    for name in ("num_augmented", "num_target_classes", "mean_center_angle"):
        assert name in recorded, name
    # each of the 32 rows draws one of the 7 other classes: the distinct targets
    # are 8 classes or fewer (7 is drawn now and then)
    assert 2 <= augmenter.num_target_classes <= 8 and augmenter.num_augmented == 32
    assert "num_centers" in augmenter.centers._record_these_stats
    assert augmenter.centers.num_centers == 8


def test_the_losses_inside_multiple_losses_are_checked_too():
    inner = losses.MultipleLosses([losses.ContrastiveLoss(), losses.NPairsLoss()])
    with pytest.raises(ValueError, match="cannot wrap NPairsLoss"):
        pml_sft.SFTLoss(inner, warmup_iterations=0)
    pml_sft.SFTLoss(
        losses.MultipleLosses([losses.ContrastiveLoss(), losses.TripletMarginLoss()]),
        warmup_iterations=0,
    )
