"""The built-in multi-vendor emoji data set (downloaded from the npm registry)."""

from . import emoji
from .emoji_dataset import EmojiDataset
