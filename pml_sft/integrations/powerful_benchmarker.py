"""powerful-benchmarker 0.9.33 with pml-sft, on pytorch-metric-learning 2.x.

powerful-benchmarker's last metric-learning release (0.9.33, 2020) pins
pytorch-metric-learning 0.9.92 and record-keeper 0.9.29. Installed with ``--no-deps``
beside PML 2.x it needs the small fixes in :data:`COMPATIBILITY_FIXES`, applied by
:func:`apply_compatibility_fixes` (idempotent). Nothing of powerful-benchmarker is
copied: the fixes wrap or replace single attributes at run time.

Usage::

    from powerful_benchmarker import runners
    from pml_sft.integrations import powerful_benchmarker as pb_sft

    runner = runners.SingleExperimentRunner(root_config_folder=..., dataset_root=...)
    pb_sft.register(runner)   # applies the fixes, registers pml-sft's classes
    runner.run()

In YAML, the wrappers nest an inner loss (and optionally a miner, or for
``FeatureTransformLoss`` an augmenter with its class centres); ``num_classes`` reaches
the inner loss and moving-average centres, and ``total_iterations`` (the schedule) is
the experiment's length unless the config sets a schedule::

    loss_funcs:
      metric_loss:
        FeatureTransformLoss:
          loss:
            MultiSimilarityLoss: {alpha: 2, beta: 50, base: 0.5}
          miner:
            MultiSimilarityMiner: {epsilon: 0.1}
          augmenter:
            SphericalFeatureTransform:
              centers:
                MovingAverageClassCenters: {embedding_size: 128, momentum: 0.9}
              num_targets: 1
"""

import copy
import functools
import inspect
import types

import torch

from .. import augmenters, centers, datasets, losses, utils
from ..upstream import sft_loss

try:
    import powerful_benchmarker  # noqa: F401
    from powerful_benchmarker.factories import LossFactory, MinerFactory
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pml_sft.integrations.powerful_benchmarker needs powerful-benchmarker 0.9.33; "
        "install it with benchmarks/powerful_benchmarker/install.sh (it must not "
        "downgrade pytorch-metric-learning)"
    ) from e


# ----------------------------------------------------------------------------------
# Compatibility fixes: powerful-benchmarker 0.9.33 on PML 2.x and record-keeper 0.9.32
# ----------------------------------------------------------------------------------


def _fix_identity():
    """PML 2.0 removed ``common_functions.Identity``; powerful-benchmarker registers it
    as a model and uses it to strip the trunk's last layer and as a default embedder.
    ``torch.nn.Identity`` is the same module."""
    from pytorch_metric_learning.utils import common_functions as pml_cf

    if not hasattr(pml_cf, "Identity"):
        pml_cf.Identity = torch.nn.Identity


def _fix_record_keeper_save_figures():
    """PML 2.x's ``logging_presets.get_record_keeper`` no longer takes
    ``save_figures``, which powerful-benchmarker passes; it is dropped."""
    from powerful_benchmarker.factories import record_keeper_factory
    from pytorch_metric_learning.utils import logging_presets

    original = logging_presets.get_record_keeper
    if getattr(original, "_pml_sft_fixed", False):
        return

    @functools.wraps(original)
    def get_record_keeper(*args, save_figures=None, **kwargs):
        return original(*args, **kwargs)

    get_record_keeper._pml_sft_fixed = True
    logging_presets.get_record_keeper = get_record_keeper
    record_keeper_factory.logging_presets = logging_presets


def _fix_record_keeper_parent_name():
    """record-keeper 0.9.32 renamed ``update_records``'s
    ``input_group_name_for_non_objects`` to ``parent_name``; the old name is
    translated."""
    from record_keeper import RecordKeeper

    original = RecordKeeper.update_records
    if getattr(original, "_pml_sft_fixed", False):
        return

    @functools.wraps(original)
    def update_records(self, *args, input_group_name_for_non_objects=None, **kwargs):
        if input_group_name_for_non_objects is not None:
            kwargs["parent_name"] = input_group_name_for_non_objects
        return original(self, *args, **kwargs)

    update_records._pml_sft_fixed = True
    RecordKeeper.update_records = update_records


def _fix_splits_to_eval():
    """PML 2.x testers take ``splits_to_eval`` as ``[(query_split, [reference
    splits])]`` and name record groups after the reference splits of the last test;
    powerful-benchmarker passes split names and names groups before any test. A name
    means the split compared to itself, as its old default ``reference_set:
    compared_to_self`` did (PML 2.x dropped ``reference_set``, so the shipped configs
    leave it out). Three places are adapted: ``BaseTester.test`` and
    ``HookContainer.get_splits_to_eval`` / ``record_group_name`` (which also meets
    powerful-benchmarker's record-keeper-less "dummy" hooks)."""
    from pytorch_metric_learning.testers import BaseTester
    from pytorch_metric_learning.utils.logging_presets import HookContainer

    if getattr(BaseTester.test, "_pml_sft_fixed", False):
        return
    original_test = BaseTester.test
    original_get_splits = HookContainer.get_splits_to_eval
    original_group_name = HookContainer.record_group_name

    def as_names(splits):
        return (
            None
            if splits is None
            else [s[0] if isinstance(s, tuple) else s for s in splits]
        )

    @functools.wraps(original_test)
    def test(
        self,
        dataset_dict,
        epoch,
        trunk_model,
        embedder_model=None,
        splits_to_eval=None,
        *args,
        **kwargs,
    ):
        if splits_to_eval is not None:
            splits_to_eval = [
                (s, [s]) if isinstance(s, str) else s for s in splits_to_eval
            ]
        return original_test(
            self,
            dataset_dict,
            epoch,
            trunk_model,
            embedder_model,
            splits_to_eval,
            *args,
            **kwargs,
        )

    @functools.wraps(original_get_splits)
    def get_splits_to_eval(self, tester, dataset_dict, epoch, input_splits_to_eval):
        return original_get_splits(
            self, tester, dataset_dict, epoch, as_names(input_splits_to_eval)
        )

    @functools.wraps(original_group_name)
    def record_group_name(self, tester, split_name):
        tester.reference_split_names.setdefault(split_name, [split_name])
        if self.record_keeper is not None:
            return original_group_name(self, tester, split_name)
        # powerful-benchmarker's "dummy" hooks have no record keeper, hence no
        # hash map of shortened group names to consult
        self.record_keeper = types.SimpleNamespace(hash_map={})
        try:
            return original_group_name(self, tester, split_name)
        finally:
            self.record_keeper = None

    test._pml_sft_fixed = True
    BaseTester.test = test
    HookContainer.get_splits_to_eval = get_splits_to_eval
    HookContainer.record_group_name = record_group_name


def experiment_iterations(parser):
    """The number of training iterations of the current split scheme of a
    powerful-benchmarker experiment, as PML's trainer will run them:
    ``num_epochs_train`` (a whole number, or one per split scheme) times the
    trainer's ``iterations_per_epoch``, or, when that is unset or 0, the length of
    the dataloader PML builds from the training set, batch size and the
    experiment's sampler (:func:`pml_sft.training_iterations`). None when the
    config does not say (the wrappers then refuse to build without a schedule)."""
    epochs = parser.args.num_epochs_train
    if isinstance(epochs, dict):
        epochs = epochs.get(parser.split_manager.curr_split_scheme_name)
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    trainer = next(iter((parser.args.trainer or {}).values()), {}) or {}
    per_epoch, batch_size = trainer.get("iterations_per_epoch"), trainer.get(
        "batch_size"
    )
    if not (isinstance(epochs, int) and epochs >= 1) or not (per_epoch or batch_size):
        return None
    dataset = parser.split_manager.get_dataset("train", "train")
    sampler = getattr(parser, "sampler", None)  # built before the losses
    return utils.training_iterations(
        dataset, batch_size, epochs, sampler, per_epoch or None
    )


def _pass_training_length_to_losses():
    """powerful-benchmarker gives the loss factory only ``num_classes``; the wrappers'
    schedule needs the length of training too (``total_iterations``, from
    :func:`experiment_iterations`), which :class:`SFTLossFactory` passes on."""
    from powerful_benchmarker.api_parsers.getter_and_setter import GetterAndSetter

    if getattr(GetterAndSetter, "_pml_sft_total_iterations", False):
        return
    original = GetterAndSetter.default_kwargs_loss_funcs

    def default_kwargs_loss_funcs(self):
        kwargs = original(self)
        kwargs["total_iterations"] = lambda: experiment_iterations(self)
        return kwargs

    GetterAndSetter.default_kwargs_loss_funcs = default_kwargs_loss_funcs
    GetterAndSetter._pml_sft_total_iterations = True


COMPATIBILITY_FIXES = {
    "Identity": _fix_identity,
    "save_figures": _fix_record_keeper_save_figures,
    "parent_name": _fix_record_keeper_parent_name,
    "splits_to_eval": _fix_splits_to_eval,
    "total_iterations": _pass_training_length_to_losses,
}
"""Name -> fix. Two more live outside the code: gdown is pinned to 4.7.3 (gdown 5
dropped ``cached_download.assert_md5sum``, imported by powerful-benchmarker's data
sets) in benchmarks/powerful_benchmarker/requirements.txt, and the shipped configs use
:class:`~pml_sft.RecallAtK` with ``k: max_bin_count`` (PML 2.x's AccuracyCalculator
defaults to all neighbours, which makes MAP@R slow, and has no Recall@K)."""


def apply_compatibility_fixes():
    """Apply every fix in :data:`COMPATIBILITY_FIXES` (safe to call repeatedly)."""
    for fix in COMPATIBILITY_FIXES.values():
        fix()


# ----------------------------------------------------------------------------------
# Factories and registration
# ----------------------------------------------------------------------------------


def _needs(cls, name):
    return name in inspect.signature(cls.__init__).parameters


class SFTLossFactory(LossFactory):
    """powerful-benchmarker's LossFactory, able to build pml-sft's loss wrappers.

    For a pml-sft wrapper (:class:`~pml_sft.SFTLoss`, ``FeatureTranslationLoss``,
    :class:`~pml_sft.FeatureTransformLoss` and the family's) the nested ``loss`` is built by this factory with
    ``num_classes`` passed on (ArcFace, ProxyAnchor, ... need it), ``miner`` by the
    MinerFactory, ``augmenter`` (with its ``centers``) from the registered pml-sft
    classes (``num_classes`` filled in for MovingAverageClassCenters, and for
    wrappers that take it, such as DenselyAnchoredSamplingLoss), and the
    schedule from the experiment's length (``total_iterations``: epochs times
    iterations per epoch) unless the config sets one. Statistics are collected
    (``collect_stats: True``) unless the config says otherwise, so the record-keeper
    logs show them. Every other loss is built as before.
    """

    def _create_general(self, loss_type, num_classes=None, total_iterations=None):
        loss, params = self.getter.get(
            "loss", yaml_dict=loss_type, return_uninitialized=True
        )
        if not (inspect.isclass(loss) and issubclass(loss, sft_loss.SFTLoss)):
            return super()._create_general(loss_type, num_classes)
        params = copy.deepcopy(params)
        if _needs(loss, "num_classes") and "num_classes" not in params:
            params["num_classes"] = num_classes  # DenselyAnchoredSamplingLoss
        if "loss" not in params:
            raise ValueError(f"{loss.__name__} needs a nested 'loss' in its config")
        params["loss"] = self.create(
            params["loss"], kwargs={"num_classes": num_classes}
        )
        if params.get("miner"):
            params["miner"] = MinerFactory(getter=self.getter).create(params["miner"])
        if params.get("augmenter"):
            transform, t_params = self.getter.get(
                "feature_augmenter",
                yaml_dict=params["augmenter"],
                return_uninitialized=True,
            )
            t_params = copy.deepcopy(t_params)
            if t_params.get("centers"):
                t_params["centers"] = self._centers(t_params["centers"], num_classes)
            t_params.setdefault("collect_stats", params.get("collect_stats", True))
            params["augmenter"] = transform(**t_params)
        params.setdefault("collect_stats", True)
        schedule = ("total_iterations", "warmup_iterations", "ramp_iterations")
        if total_iterations and not any(k in params for k in schedule):
            params["total_iterations"] = total_iterations
        return loss(**params)

    def _centers(self, spec, num_classes):
        cls, params = self.getter.get(
            "class_centers", yaml_dict=spec, return_uninitialized=True
        )
        params = copy.deepcopy(params)
        if _needs(cls, "num_classes") and "num_classes" not in params:
            params["num_classes"] = num_classes
        return cls(**params)


class PowerfulBenchmarkerFormat:
    """A built-in data set in powerful-benchmarker's dataset format (dict items,
    ``root``/``transform``/``download`` arguments, all classes: the split manager
    splits them)."""

    def __init__(
        self, root, transform=None, download=False, image_size=32, max_classes=None
    ):
        super().__init__(
            root,
            split="train+test",
            transform=transform,
            image_size=image_size,
            max_classes=max_classes,
            download=download,
            return_dict=True,
        )


class EmojiDataset(PowerfulBenchmarkerFormat, datasets.EmojiDataset):
    """The emoji data set for powerful-benchmarker."""


class IconThemesDataset(PowerfulBenchmarkerFormat, datasets.IconThemesDataset):
    """The icon-theme data set for powerful-benchmarker."""


def register(runner):
    """Apply the compatibility fixes and register pml-sft's classes with a
    powerful-benchmarker runner: the loss wrappers (type "loss"), augmenters
    ("feature_augmenter"), class-centre estimators ("class_centers"),
    :class:`SFTLossFactory` ("factory"), :class:`~pml_sft.RecallAtK`
    ("accuracy_calculator") and the emoji and icon-theme data sets ("dataset")."""
    apply_compatibility_fixes()
    for cls in (
        losses.FeatureTransformLoss,
        losses.SFTLoss,
        losses.FeatureTranslationLoss,
        losses.EmbeddingExpansionLoss,
        losses.SymmetricalSynthesisLoss,
        losses.ProxySynthesisLoss,
        losses.DenselyAnchoredSamplingLoss,
        losses.SphericalEmbeddingExpansionLoss,
        losses.EmbeddingMixupLoss,
        losses.ClassCovarianceSamplingLoss,
    ):
        runner.register("loss", cls)
    for cls in (
        augmenters.SphericalFeatureTransform,
        augmenters.FeatureTranslation,
        augmenters.EmbeddingExpansion,
        augmenters.SymmetricalSynthesis,
        augmenters.DenselyAnchoredSampling,
        augmenters.SphericalEmbeddingExpansion,
        augmenters.EmbeddingMixup,
        augmenters.ClassCovarianceSampling,
    ):
        runner.register("feature_augmenter", cls)
    for cls in (centers.BatchClassCenters, centers.MovingAverageClassCenters):
        runner.register("class_centers", cls)
    runner.register("factory", SFTLossFactory)
    runner.register("accuracy_calculator", utils.RecallAtK)
    runner.register("dataset", EmojiDataset)
    runner.register("dataset", IconThemesDataset)
    return runner
