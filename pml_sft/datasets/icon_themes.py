"""The freedesktop icon themes in Debian's packages, as a metric-learning data set.

Class = an icon name of the freedesktop naming scheme (``document-save``,
``folder``, ...); samples = the drawings of that name by different themes (Adwaita,
Breeze, Papirus, Oxygen, Tango, ...). Theme style is a variation that every class
shares. Everything comes from Debian's archive with the ordinary client
(``apt-get download``) and is unpacked with ``dpkg-deb`` (no root, nothing
installed), so it works on a machine that reaches only the package registries.

Cleaning, in this order:

* one theme per package (its colour and dark/light variants are left out);
* aliases are dropped: a symlink names an icon another name already draws;
* symbolic (monochrome, ``-symbolic``) icons are dropped;
* per theme and name the largest drawing is used (scalable SVG first);
* byte-identical files: within a class only the first is kept, and a file drawn
  for two names is dropped from both;
* near-duplicates, which derived themes share: within a class, drawings whose
  perceptual hashes (``imagehash.phash`` of the rendered image) differ in at most
  ``NEAR_DUPLICATE_BITS`` of 64 bits are one group, and at most
  ``near_duplicate_cap`` drawings of a group are kept;
* classes keep at least ``min_themes`` drawings.

``prepare(cache_dir, image_size)`` downloads, renders and caches everything as one
``.npz`` (idempotent). ``class_split`` (the same as the emoji set's) gives the fixed,
seeded, class-disjoint train/test (and validation) split. The licences of the
packages are read from their Debian copyright files and kept in the cache
(``licenses``); the README lists them.
"""

import hashlib
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .emoji import class_split, svg_to_png, to_rgb_array  # noqa: F401 (re-exported)
from .npz_cache import cached_arrays

# Debian package -> the theme folder used (usr/share/icons/<theme>)
THEMES = {
    "adwaita-icon-theme": "Adwaita",
    "breeze-icon-theme": "breeze",
    "papirus-icon-theme": "Papirus",
    "oxygen-icon-theme": "oxygen",
    "tango-icon-theme": "Tango",
    "elementary-xfce-icon-theme": "elementary-xfce",
    "numix-icon-theme": "Numix",
    "faenza-icon-theme": "Faenza",
    "moka-icon-theme": "Moka",
    "mate-icon-theme": "mate",
    "gnome-icon-theme": "gnome",
    "suru-icon-theme": "suru",
    "deepin-icon-theme": "bloom",
    "lxde-icon-theme": "nuoveXT2",
    "faba-icon-theme": "Faba",
    "paper-icon-theme": "Paper",
    "obsidian-icon-theme": "Obsidian",
    "sugar-icon-theme": "sugar",
    "gnome-icon-theme-gartoon": "gartoon",
}
MIN_THEMES = 5
NEAR_DUPLICATE_BITS = 6
NEAR_DUPLICATE_CAP = 1
CACHE_VERSION = 1
SCALABLE_SIZE = 1024  # how "scalable" ranks against sized folders


def fetch_packages(download_dir, packages=tuple(THEMES), apt_get="apt-get"):
    """``apt-get download`` the packages missing from ``download_dir``; returns
    {package: .deb path}."""
    download_dir = Path(download_dir)
    download_dir.mkdir(parents=True, exist_ok=True)
    found = {p: sorted(download_dir.glob(f"{p}_*.deb")) for p in packages}
    missing = [p for p, paths in found.items() if not paths]
    if missing:
        # download into a folder of this call's own, then atomic renames, so that a
        # process preparing at the same time never reads a half-written package
        with tempfile.TemporaryDirectory(dir=download_dir) as private:
            try:
                subprocess.run(
                    [apt_get, "download", *missing],
                    cwd=private,
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            except FileNotFoundError as e:
                raise RuntimeError(
                    "apt-get is needed to fetch the icon themes (a Debian-based "
                    "system); or put the .deb files in " + str(download_dir)
                ) from e
            except subprocess.CalledProcessError as e:
                raise RuntimeError(
                    f"apt-get download {' '.join(missing)} failed; run apt-get "
                    "update, or put the .deb files in " + str(download_dir)
                ) from e
            for path in Path(private).glob("*.deb"):
                path.replace(download_dir / path.name)
        found = {p: sorted(download_dir.glob(f"{p}_*.deb")) for p in packages}
        still = [p for p, paths in found.items() if not paths]
        if still:
            raise RuntimeError(f"apt-get download did not produce {still}")
    return {p: paths[-1] for p, paths in found.items()}


def folder_size(parts):
    """The pixel size a theme folder path stands for: 48 for ``48x48/apps``,
    ``apps/48`` or ``48x48@2x``, SCALABLE_SIZE for ``scalable``; 0 if none."""
    if any(p.startswith("scalable") for p in parts):
        return SCALABLE_SIZE
    for part in parts:
        match = re.match(r"^(\d+)(x\d+)?(@\d+x?)?$", part)
        if match:
            return int(match.group(1))
    return 0


def theme_drawings(deb, theme, dpkg_deb="dpkg-deb"):
    """{icon name: (file bytes, "png" or "svg")} for one theme of a .deb: the
    largest drawing of each name, regular files only (symlinks are aliases)."""
    prefix = f"./usr/share/icons/{theme}/"
    best = {}
    with subprocess.Popen(
        [dpkg_deb, "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
    ) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = (
                    member.name if member.name.startswith("./") else "./" + member.name
                )
                if not (member.isfile() and name.startswith(prefix)):
                    continue
                stem, dot, ext = name.rpartition("/")[2].rpartition(".")
                if not dot or ext not in ("png", "svg") or stem.endswith("-symbolic"):
                    continue
                parts = name[len(prefix) :].split("/")[:-1]
                rank = (folder_size(parts), ext == "svg")
                if stem not in best or rank > best[stem][0]:
                    best[stem] = (rank, tar.extractfile(member).read(), ext)
    if proc.returncode:
        raise RuntimeError(f"dpkg-deb could not read {deb}")
    return {stem: (data, ext) for stem, (_, data, ext) in best.items()}


def package_license(deb, dpkg_deb="dpkg-deb"):
    """The licence names in the package's Debian copyright file (``License:``)."""
    package = Path(deb).name.split("_")[0]
    wanted = f"./usr/share/doc/{package}/copyright"
    with subprocess.Popen(
        [dpkg_deb, "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # (it stops reading early: a broken pipe)
    ) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = (
                    member.name if member.name.startswith("./") else "./" + member.name
                )
                if name == wanted and member.isfile():
                    text = tar.extractfile(member).read().decode("utf-8", "replace")
                    names = re.findall(r"^License:\s*(\S.*)$", text, re.MULTILINE)
                    return ", ".join(dict.fromkeys(n.strip() for n in names)) or "?"
    return "?"


def render(data, kind, size):
    """One drawing as a size x size uint8 RGB array on white."""
    png = data if kind == "png" else svg_to_png(data.decode("utf-8"), max(size, 64))
    return to_rgb_array(png, size)


def perceptual_hash(image):
    """64-bit perceptual hash (``imagehash.phash``) of an RGB array, as bools."""
    import imagehash
    from PIL import Image

    return imagehash.phash(Image.fromarray(image)).hash.reshape(-1)


def clean(drawings, min_themes=MIN_THEMES):
    """Classes from {theme: {name: (bytes, kind)}}, before rendering: byte-identical
    files dropped (within a class all but the first; across classes all), then the
    names drawn by at least ``min_themes`` themes. Returns {name: [(theme, bytes,
    kind), ...]} sorted by name, themes in THEMES order."""
    owners = {}
    for theme, names in drawings.items():
        for name, (data, _) in names.items():
            owners.setdefault(hashlib.sha256(data).hexdigest(), set()).add(name)
    classes = {}
    for theme, names in drawings.items():
        for name, (data, kind) in names.items():
            digest = hashlib.sha256(data).hexdigest()
            if len(owners[digest]) > 1:  # the same file under two names
                continue
            samples = classes.setdefault(name, [])
            if all(hashlib.sha256(d).hexdigest() != digest for _, d, _ in samples):
                samples.append((theme, data, kind))
    return {n: s for n, s in sorted(classes.items()) if len(s) >= min_themes}


def cap_near_duplicates(hashes, cap=NEAR_DUPLICATE_CAP, bits=NEAR_DUPLICATE_BITS):
    """Indices to keep of one class's (M, 64) bool hashes: greedy groups of
    drawings within ``bits`` of a group's first member, at most ``cap`` of each."""
    keep, groups = [], []  # groups: [first hash, count]
    for i, h in enumerate(hashes):
        for group in groups:
            if int((group[0] != h).sum()) <= bits:
                if group[1] < cap:
                    group[1] += 1
                    keep.append(i)
                break
        else:
            groups.append([h, 1])
            keep.append(i)
    return keep


def render_all(
    debs,
    image_size,
    progress=True,
    max_classes=None,
    min_themes=MIN_THEMES,
    near_duplicate_cap=NEAR_DUPLICATE_CAP,
):
    """Read, clean and render the data set from {package: .deb}. Returns arrays
    and metadata: images, labels, themes, class_names, licenses."""
    from tqdm import tqdm

    drawings = {}
    for package, deb in tqdm(debs.items(), desc="reading themes", disable=not progress):
        drawings[THEMES[package]] = theme_drawings(deb, THEMES[package])
    classes = clean(drawings, min_themes)
    images, labels, themes, names = [], [], [], []
    stats = dict(candidates=len(classes), near_duplicates=0, unreadable=0)
    iterator = tqdm(classes.items(), desc="rendering icons", disable=not progress)
    for name, samples in iterator:
        rendered = []
        for theme, data, kind in samples:
            try:
                rendered.append((theme, render(data, kind, image_size)))
            except Exception:  # a broken file in a theme: leave that drawing out
                stats["unreadable"] += 1
        hashes = [perceptual_hash(image) for _, image in rendered]
        keep = cap_near_duplicates(hashes, near_duplicate_cap)
        stats["near_duplicates"] += len(rendered) - len(keep)
        if len(keep) < min_themes:
            continue
        label = len(names)
        names.append(name)
        for i in keep:
            images.append(rendered[i][1])
            themes.append(rendered[i][0])
            labels.append(label)
        if max_classes is not None and len(names) == max_classes:
            break
    if not names:
        raise RuntimeError(f"no icon name is drawn by at least {min_themes} themes")
    licenses = [f"{p} ({THEMES[p]}): {package_license(d)}" for p, d in debs.items()]
    return dict(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        themes=np.asarray(themes),
        class_names=np.asarray(names),
        licenses=np.asarray(licenses),
        cleaning=np.asarray([f"{k}={v}" for k, v in stats.items()]),
    )


def cache_path(cache_dir, image_size, max_classes=None):
    suffix = f"_first{max_classes}" if max_classes else ""
    return Path(cache_dir) / f"icon_themes_v{CACHE_VERSION}_{image_size}px{suffix}.npz"


def prepare(cache_dir=".cache/pml_sft", image_size=32, max_classes=None, progress=True):
    """Download (apt-get download), read (dpkg-deb), clean, render and cache the
    data set; load it if cached. Returns the dict of :func:`render_all`."""

    def build():
        debs = fetch_packages(Path(cache_dir) / "downloads" / "debian")
        return render_all(debs, image_size, progress, max_classes)

    return cached_arrays(cache_path(cache_dir, image_size, max_classes), build)
