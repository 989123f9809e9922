"""The built-in data sets: multi-vendor emoji (npm registry) and freedesktop icon
themes (Debian's packages)."""

from . import emoji, icon_themes
from .emoji_dataset import EmojiDataset
from .icon_themes_dataset import IconThemesDataset
