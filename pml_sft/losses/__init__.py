from .feature_transform_loss import (
    UNSUPPORTED_LOSSES,
    UNSUPPORTED_MINERS,
    FeatureTransformLoss,
)
from .feature_translation_loss import FeatureTranslationLoss
from .sft_loss import SFTLoss
