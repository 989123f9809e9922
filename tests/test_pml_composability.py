"""Every loss, miner, reducer and distance PML exports, through the wrapper.

Parametrised from PML's own exports (see tests/compat_matrix.py), so a class PML
adds later is tested too, and fails here until it works or is refused on purpose.
"""

import pytest

import pml_sft
from pml_sft.augmenters.densely_anchored_sampling import PER_ROW_LOSSES

from . import compat_matrix as cm

SEE_REFUSED = pml_sft.SphericalEmbeddingExpansion.unsupported_losses
MIXUP_REFUSED = pml_sft.EmbeddingMixup.unsupported_losses


@pytest.mark.parametrize("wrapper", list(cm.WRAPPERS))
@pytest.mark.parametrize("name", list(cm.exported_losses()))
def test_loss(name, wrapper):
    outcome = cm.loss_outcome(name, wrapper)
    if name not in cm.SUPPORTED_LOSSES:  # refused by name, with the reason
        assert outcome == f"refused: {wrapper} {cm.refusal(name)}"
    elif wrapper == "SphericalEmbeddingExpansionLoss" and name in SEE_REFUSED:
        assert outcome == (
            "refused: SphericalEmbeddingExpansion cannot change the training signal "
            f"of {name}: {SEE_REFUSED[name]}"
        )
    elif wrapper == "EmbeddingMixupLoss" and name in MIXUP_REFUSED:
        assert outcome == (
            "refused: EmbeddingMixup cannot change the training signal "
            f"of {name}: {MIXUP_REFUSED[name]}"
        )
    elif wrapper == "DenselyAnchoredSamplingLoss" and name in PER_ROW_LOSSES:
        # its detached copies would only rescale these losses' gradients
        assert outcome == (
            f"refused: DenselyAnchoredSampling cannot change the training signal of "
            f"{name}: {PER_ROW_LOSSES[name]}"
        )
        inner = cm.build(cm.exported_losses()[name], cm.LOSS_KWARGS)
        augmenter = pml_sft.DenselyAnchoredSampling(cm.NUM_CLASSES, cm.EMBEDDING_SIZE)
        unchecked = pml_sft.FeatureTransformLoss(
            cm.build(cm.exported_losses()["ContrastiveLoss"], cm.LOSS_KWARGS),
            augmenter,
            warmup_iterations=0,
        )
        unchecked.loss = inner  # what the refusal prevents: no change of direction
        with pytest.raises(AssertionError, match="direction"):
            cm.check_trains(unchecked, steps=1, require_decrease=False)
    elif name in cm.KNOWN_PML_BUGS:
        inner = cm.build(cm.exported_losses()[name], cm.LOSS_KWARGS)
        with pytest.raises(Exception):  # fails without the wrapper too
            cm.check_trains(inner)
    else:
        assert outcome == "works"


@pytest.mark.parametrize("role", ["inner", "outer"])
@pytest.mark.parametrize("name", list(cm.exported_miners()))
def test_miner(name, role):
    outcome = cm.miner_outcome(name, role)
    if role == "inner" and name in cm.REFUSED_INNER_MINERS:
        assert outcome.startswith("refused") and "outer miner instead" in outcome
    else:
        assert outcome == "works"


@pytest.mark.parametrize("name", list(cm.exported_reducers()))
def test_reducer(name):
    assert cm.reducer_outcome(name).startswith("works")


@pytest.mark.parametrize(
    "name,kwargs",
    [(name, {}) for name in cm.exported_distances()]
    + [
        ("LpDistance", dict(normalize_embeddings=False)),
        ("LpDistance", dict(p=1)),
        ("LpDistance", dict(power=2)),
        ("DotProductSimilarity", dict(normalize_embeddings=True)),
    ],
)
def test_distance(name, kwargs):
    outcome = cm.distance_outcome(name, kwargs)
    if name in cm.NOT_APPLICABLE:
        assert outcome.startswith("not applicable")
    else:
        assert outcome == "works"


def test_every_export_is_classified():
    # each exported loss is either on the explicit list of supported losses (and
    # then in the matrix above as "works" or a known PML bug) or refused with a
    # reason; a loss PML adds later fails here until it is classified
    from pml_sft.upstream.sft_loss import UNSUPPORTED_LOSSES

    exported = set(cm.exported_losses())
    supported = set(cm.SUPPORTED_LOSSES)
    for wrapper in (pml_sft.SFTLoss, pml_sft.FeatureTransformLoss):
        assert set(wrapper.supported_losses()) == supported
    assert supported | set(UNSUPPORTED_LOSSES) == exported
    assert not supported & set(UNSUPPORTED_LOSSES)
    assert "SFTLoss" in exported and "SFTLoss" in UNSUPPORTED_LOSSES  # no nesting
    assert set(cm.KNOWN_PML_BUGS) <= supported
    # the generated lists hold the well-known classes of every kind
    assert {"ArcFaceLoss", "MultiSimilarityLoss", "ProxyAnchorLoss"} <= supported
    assert "MultiSimilarityMiner" in cm.exported_miners()
    assert "MeanReducer" in cm.exported_reducers()
    assert "CosineSimilarity" in cm.exported_distances()
