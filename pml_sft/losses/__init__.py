from .feature_transform_loss import UNSUPPORTED_LOSSES, FeatureTransformLoss
from .feature_translation_loss import FeatureTranslationLoss
from .sft_loss import SFTLoss
