"""The icon-theme data set, built from fake Debian packages made here with
``dpkg-deb --build`` (no network): aliases, symbolic icons, byte-identical and
near-duplicate drawings, sizes, licences, splits and the Dataset."""

import io
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageDraw

import pml_sft
from pml_sft.datasets import icon_themes

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian tools)"
)

SHAPES = ["ellipse", "rectangle", "triangle", "cross", "bar"]


def drawing(shape, style, size=48):
    """A PNG: one shape per icon name, drawn in one style per theme (colour,
    place and decoration)."""
    image = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    d = ImageDraw.Draw(image)
    colours = [(200, 30, 30), (30, 160, 30), (30, 30, 200), (120, 60, 160)]
    colour = (colours + [(220, 120, 0)])[style]
    if style == 3:  # a dark tile with the shape cut out in white
        d.rectangle((0, 0, 47, 47), fill=(20, 20, 20))
        colour = (250, 250, 250)
    box = [(6, 6, 42, 42), (2, 2, 28, 28), (20, 20, 46, 46), (10, 4, 38, 44)]
    box = (box + [(2, 20, 26, 46)])[style]
    if shape == "ellipse":
        d.ellipse(box, fill=colour)
    elif shape == "rectangle":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(box[0], box[3]), (box[2], box[3]), (box[0], box[1])], fill=colour)
    elif shape == "cross":
        d.line([box[:2], box[2:]], fill=colour, width=6)
        d.line([(box[0], box[3]), (box[2], box[1])], fill=colour, width=6)
    else:
        d.rectangle((box[0], box[1], box[2], box[1] + 8), fill=colour)
    if style == 1:  # a frame
        d.rectangle((30, 30, 46, 46), outline=(0, 0, 0), width=3)
    if style == 4:  # a dot
        d.ellipse((34, 2, 46, 14), fill=(0, 0, 0))
    out = io.BytesIO()
    image.resize((size, size)).save(out, format="PNG")
    return out.getvalue()


SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
    '<circle cx="8" cy="8" r="{r}" fill="#{c}"/></svg>'
)


def build_package(tmp_path, package, theme, files, links=(), license="GPL-3+"):
    root = tmp_path / "trees" / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: fake icon theme\n"
    )
    doc = root / "usr/share/doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(f"Files: *\nLicense: {license}\n")
    for rel, data in files.items():
        path = root / "usr/share/icons" / theme / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, target in links:
        path = root / "usr/share/icons" / theme / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    deb = tmp_path / "debs" / f"{package}_1.0_all.deb"
    deb.parent.mkdir(exist_ok=True)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return deb


@pytest.fixture
def fake_themes(tmp_path, monkeypatch):
    themes = {"a-icon-theme": "A", "b-icon-theme": "B", "c-icon-theme": "C"}
    themes["d-icon-theme"] = "D"
    monkeypatch.setattr(icon_themes, "THEMES", themes)
    debs = {}
    for style, (package, theme) in enumerate(themes.items()):
        files = {}
        for shape in SHAPES:
            # a small and a large drawing: the large one is used
            files[f"16x16/apps/{shape}.png"] = drawing("bar", 3, 16)
            files[f"48x48/apps/{shape}.png"] = drawing(shape, style)
        files["48x48/apps/ellipse-symbolic.png"] = drawing("ellipse", 0)
        links = [("48x48/apps/alias-of-ellipse.png", "ellipse.png")]
        if theme == "D":  # D copies A's triangle byte for byte, and draws an SVG
            files["48x48/apps/triangle.png"] = drawing("triangle", 0)
            files["scalable/apps/cross.svg"] = SVG.format(r=3, c="804020").encode()
        debs[package] = build_package(tmp_path, package, theme, files, links)
    # a near-duplicate of A's rectangle (one pixel changed) in a fifth theme
    themes["e-icon-theme"] = "E"
    pixels = np.asarray(Image.open(io.BytesIO(drawing("rectangle", 0)))).copy()
    pixels[0, 0] = (9, 9, 9, 255)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    files = {f"48x48/apps/{s}.png": drawing(s, 4) for s in SHAPES if s != "rectangle"}
    files["48x48/apps/bar.png"] = drawing("ellipse", 2)  # = C's ellipse: two names
    files["48x48/apps/rectangle.png"] = out.getvalue()
    debs["e-icon-theme"] = build_package(
        tmp_path, "e-icon-theme", "E", files, license="CC-BY-SA-4.0"
    )
    return debs


def test_cleaning_rules_on_fake_packages(fake_themes):
    data = icon_themes.render_all(fake_themes, 24, progress=False, min_themes=3)
    names = list(data["class_names"])
    assert "alias-of-ellipse" not in names and "ellipse-symbolic" not in names
    per_class = {
        n: sorted(data["themes"][data["labels"] == i]) for i, n in enumerate(names)
    }
    assert per_class["triangle"] == ["A", "B", "C", "E"]  # D copies A: dropped
    assert per_class["rectangle"] == ["A", "B", "C", "D"]  # E's near-duplicate capped
    assert "E" not in per_class["bar"]  # E's bar is C's ellipse: dropped from both
    assert "C" not in per_class["ellipse"] and "E" in per_class["ellipse"]
    assert data["images"].shape[1:] == (24, 24, 3) and data["images"].dtype == np.uint8
    # the 48 px drawing was used, not the 16 px bar shared by every name
    bar_16 = icon_themes.render(drawing("bar", 3, 16), "png", 24)
    assert not any(np.array_equal(image, bar_16) for image in data["images"])
    assert "cross" in names and "D" in per_class["cross"]  # the SVG is rendered
    assert any("CC-BY-SA-4.0" in line for line in data["licenses"])
    assert any(line.startswith("near_duplicates=") for line in data["cleaning"])


def test_min_themes_and_caps(fake_themes):
    # after cleaning only "cross" keeps 5 themes (A, B, C, D's SVG, E)
    data = icon_themes.render_all(fake_themes, 16, progress=False, min_themes=5)
    assert list(data["class_names"]) == ["cross"]
    kept = icon_themes.render_all(
        fake_themes, 16, progress=False, min_themes=3, near_duplicate_cap=2
    )
    rectangle = list(kept["class_names"]).index("rectangle")
    assert (kept["labels"] == rectangle).sum() == 5  # A and its near-copy E both


def test_prepare_caches_and_dataset_splits(fake_themes, tmp_path, monkeypatch):
    calls = []

    def fetch(download_dir, *args, **kwargs):
        calls.append(download_dir)
        return fake_themes

    monkeypatch.setattr(icon_themes, "fetch_packages", fetch)
    monkeypatch.setattr(icon_themes, "MIN_THEMES", 3)
    with pytest.raises(ValueError, match="download=True"):
        pml_sft.IconThemesDataset(tmp_path / "data", image_size=16)
    everything = pml_sft.IconThemesDataset(
        tmp_path / "data", image_size=16, download=True
    )
    train = pml_sft.IconThemesDataset(tmp_path / "data", "train", image_size=16)
    test = pml_sft.IconThemesDataset(
        tmp_path / "data", "test", image_size=16, return_dict=True
    )
    assert len(calls) == 1  # the second and third use the cache
    assert len(train) + len(test) == len(everything)
    assert not set(train.labels) & set(test.labels)  # class-disjoint
    item = test[0]
    assert item["data"].size == (16, 16) and item["label"] in set(test.labels)


def test_fetch_packages_reuses_downloads_and_explains_failures(tmp_path):
    (tmp_path / "x-icon-theme_1.0_all.deb").write_bytes(b"")
    found = icon_themes.fetch_packages(tmp_path, ["x-icon-theme"], apt_get="false")
    assert found["x-icon-theme"].name == "x-icon-theme_1.0_all.deb"
    with pytest.raises(RuntimeError, match="apt-get download"):
        icon_themes.fetch_packages(tmp_path, ["y-icon-theme"], apt_get="false")
    with pytest.raises(RuntimeError, match="apt-get is needed"):
        icon_themes.fetch_packages(tmp_path, ["y-icon-theme"], apt_get="no-such-apt")


def test_folder_sizes():
    assert icon_themes.folder_size(["48x48", "apps"]) == 48
    assert icon_themes.folder_size(["apps", "64"]) == 64
    assert icon_themes.folder_size(["256x256@2x", "apps"]) == 256
    assert icon_themes.folder_size(["scalable", "apps"]) == icon_themes.SCALABLE_SIZE
    assert icon_themes.folder_size(["apps"]) == 0
