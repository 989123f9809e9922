"""The built-in multi-vendor emoji data set.

Class = one emoji; samples = its drawings by different vendors (Google Noto,
Twitter Twemoji, OpenMoji, Microsoft Fluent flat) plus its skin-tone variants where
present. Everything comes from the npm registry with the ordinary client
(``npm pack``), so it works on a machine that reaches only the package registries.

Licences (attribution in the README): Noto Emoji Apache-2.0, Twemoji CC-BY-4.0,
OpenMoji CC-BY-SA-4.0, Fluent Emoji MIT. Apple and Facebook drawings are not freely
licensed and are not used.

``prepare(cache_dir, image_size)`` downloads, renders and caches everything as one
``.npz`` (idempotent: a second call only loads it). ``class_split`` gives the fixed,
seeded, class-disjoint train/test (and validation) split.
"""

import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .npz_cache import cached_arrays

PACKAGES = {
    "google": "emoji-datasource-google@16.0.0",
    "twitter": "emoji-datasource-twitter@16.0.0",
    "openmoji": "@iconify-json/openmoji@1.2.29",
    "fluent": "@iconify-json/fluent-emoji-flat@1.2.6",
}
LICENSES = {
    "google": "Noto Emoji, Apache-2.0",
    "twitter": "Twemoji, CC-BY-4.0",
    "openmoji": "OpenMoji, CC-BY-SA-4.0",
    "fluent": "Fluent Emoji (flat), MIT",
}
MIN_SAMPLES_PER_CLASS = 3
CACHE_VERSION = 1


def tarball_name(spec):
    """File name ``npm pack`` gives a package spec."""
    name, version = spec.rsplit("@", 1)
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_packages(download_dir, packages=PACKAGES, npm="npm"):
    """``npm pack`` each package into ``download_dir`` unless it is already there."""
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for vendor, spec in packages.items():
        path = download_dir / tarball_name(spec)
        if not path.exists():
            # pack into a folder of this call's own, then an atomic rename, so that a
            # process preparing at the same time never reads a half-written tarball
            with tempfile.TemporaryDirectory(dir=download_dir) as private:
                try:
                    subprocess.run(
                        [npm, "pack", spec, "--silent"],
                        cwd=private,
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                except FileNotFoundError as e:
                    raise RuntimeError(
                        "npm is needed to fetch the emoji packages (Node.js's package "
                        "manager)"
                    ) from e
                packed = Path(private) / path.name
                if not packed.exists():
                    raise RuntimeError(f"npm pack {spec} did not produce {path.name}")
                packed.replace(path)
        paths[vendor] = path
    return paths


def normalize_code(code):
    """Codepoints as lowercase hex joined by '-', without variation selectors."""
    parts = [p for p in code.lower().replace("_", "-").split("-") if p and p != "fe0f"]
    return "-".join(parts)


def read_tar_members(path, wanted):
    """Bytes of the members of a .tgz whose names ``wanted(name)`` accepts."""
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                out[member.name] = tar.extractfile(member).read()
    return out


def emoji_catalogue(datasource_tgz):
    """Base emoji with their skin-tone variants, from emoji-datasource's emoji.json.

    Returns a list of dicts: code, name, category, variants (list of
    (code, image file name, {vendor: has image})).
    """
    members = read_tar_members(datasource_tgz, lambda n: n == "package/emoji.json")
    entries = json.loads(members["package/emoji.json"])
    catalogue = []
    for e in entries:
        variants = [(e["unified"], e["image"], e)]
        for v in (e.get("skin_variations") or {}).values():
            variants.append((v["unified"], v["image"], v))
        catalogue.append(
            dict(
                code=normalize_code(e["unified"]),
                name=e.get("name") or e.get("short_name"),
                category=e.get("category"),
                variants=[
                    (
                        normalize_code(u),
                        image,
                        {
                            vendor: bool(meta.get(f"has_img_{vendor}"))
                            for vendor in ("google", "twitter")
                        },
                    )
                    for u, image, meta in variants
                ],
            )
        )
    return sorted(catalogue, key=lambda c: c["code"])


def iconify_svgs(tgz):
    """{normalised code: svg text} from an @iconify-json package."""
    members = read_tar_members(
        tgz, lambda n: n in ("package/icons.json", "package/chars.json")
    )
    icons = json.loads(members["package/icons.json"])
    chars = json.loads(members["package/chars.json"])
    width, height = icons.get("width", 16), icons.get("height", 16)
    out = {}
    for code, name in chars.items():
        icon = icons["icons"].get(name)
        transform = ""
        if icon is None and name in icons.get("aliases", {}):
            alias = icons["aliases"][name]
            icon = icons["icons"].get(alias.get("parent"))
            if icon is not None and alias.get("hFlip"):
                transform = f' transform="translate({width} 0) scale(-1 1)"'
        if icon is None:
            continue
        w, h = icon.get("width", width), icon.get("height", height)
        out[normalize_code(code)] = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}"><g{transform}>{icon["body"]}</g></svg>'
        )
    return out


def svg_to_png(svg, size):
    try:
        import cairosvg
    except (ImportError, OSError) as e:
        raise RuntimeError(
            "rendering the OpenMoji and Fluent emoji needs cairosvg with the cairo "
            "library (pip install cairosvg; apt-get install libcairo2)"
        ) from e
    return cairosvg.svg2png(
        bytestring=svg.encode(), output_width=size, output_height=size
    )


def to_rgb_array(png_bytes, size):
    """Decode a PNG, composite it on white, resize to size x size, as uint8 RGB."""
    from PIL import Image

    image = Image.open(io.BytesIO(png_bytes)).convert("RGBA")
    if image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(background, image).convert("RGB"))


def render_all(paths, image_size, progress=True, max_classes=None):
    """Render every (class, sample) of the data set. Returns arrays and metadata."""
    from tqdm import tqdm

    catalogue = emoji_catalogue(paths["google"])
    pngs = {}
    for vendor in ("google", "twitter"):
        prefix = f"package/img/{vendor}/64/"
        for name, data in read_tar_members(
            paths[vendor], lambda n, p=prefix: n.startswith(p) and n.endswith(".png")
        ).items():
            pngs[(vendor, name[len(prefix) :])] = data
    svgs = {vendor: iconify_svgs(paths[vendor]) for vendor in ("openmoji", "fluent")}

    # choose classes with enough distinct drawings first, so rendering skips the rest
    classes = []
    for entry in catalogue:
        samples = []
        for code, image, has in entry["variants"]:
            for vendor in ("google", "twitter"):
                if has[vendor] and (vendor, image) in pngs:
                    samples.append((vendor, code, ("png", pngs[(vendor, image)])))
            for vendor in ("openmoji", "fluent"):
                if code in svgs[vendor]:
                    samples.append((vendor, code, ("svg", svgs[vendor][code])))
        if len(samples) >= MIN_SAMPLES_PER_CLASS:
            classes.append((entry, samples))
    if max_classes is not None:
        classes = classes[:max_classes]

    images, labels, vendors, codes = [], [], [], []
    iterator = tqdm(classes, desc="rendering emoji", disable=not progress)
    for label, (entry, samples) in enumerate(iterator):
        for vendor, code, (kind, data) in samples:
            png = data if kind == "png" else svg_to_png(data, max(image_size, 64))
            images.append(to_rgb_array(png, image_size))
            labels.append(label)
            vendors.append(vendor)
            codes.append(code)
    return dict(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        vendors=np.asarray(vendors),
        codes=np.asarray(codes),
        class_codes=np.asarray([e["code"] for e, _ in classes]),
        class_names=np.asarray([e["name"] for e, _ in classes]),
        class_categories=np.asarray([e["category"] or "" for e, _ in classes]),
    )


def cache_path(cache_dir, image_size, max_classes=None):
    suffix = f"_first{max_classes}" if max_classes else ""
    return Path(cache_dir) / f"emoji_v{CACHE_VERSION}_{image_size}px{suffix}.npz"


def prepare(cache_dir=".cache/pml_sft", image_size=32, max_classes=None, progress=True):
    """Download (npm pack), render and cache the data set; load it if cached.

    Returns the dict of arrays described in :func:`render_all`.
    """

    def build():
        packages = fetch_packages(Path(cache_dir) / "downloads")
        return render_all(packages, image_size, progress, max_classes)

    return cached_arrays(cache_path(cache_dir, image_size, max_classes), build)


def class_split(num_classes, seed=0, val_fraction=0.0):
    """Fixed class-disjoint split: a seeded half of the classes for training, the
    other half for testing; ``val_fraction`` of the training classes are held out
    for validation (for tuning, never the test classes).

    Returns (train_classes, val_classes, test_classes) as sorted int arrays.
    """
    order = np.random.RandomState(seed).permutation(num_classes)
    half = num_classes // 2
    train, test = order[:half], order[half:]
    num_val = int(round(len(train) * val_fraction))
    val, train = train[:num_val], train[num_val:]
    return np.sort(train), np.sort(val), np.sort(test)
