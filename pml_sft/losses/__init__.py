from .checked_loss import CheckedLoss
from .class_covariance_sampling_loss import ClassCovarianceSamplingLoss
from .densely_anchored_sampling_loss import DenselyAnchoredSamplingLoss
from .embedding_expansion_loss import EmbeddingExpansionLoss
from .embedding_mixup_loss import EmbeddingMixupLoss
from .feature_transform_loss import (
    UNSUPPORTED_LOSSES,
    UNSUPPORTED_MINERS,
    FeatureTransformLoss,
)
from .feature_translation_loss import FeatureTranslationLoss
from .proxy_synthesis_loss import PROXY_PARAMETERS, ProxySynthesisLoss
from .sft_loss import SFTLoss
from .spherical_embedding_expansion_loss import SphericalEmbeddingExpansionLoss
from .symmetrical_synthesis_loss import SymmetricalSynthesisLoss
