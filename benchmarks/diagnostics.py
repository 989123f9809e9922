"""How spherical-homoscedastic are the classes of a trained model, and how far apart
do rotation (SFT) and translation put a moved feature?

    python -m benchmarks.diagnostics --run runs/comparison/<run name>

Reads the run's model.pt and result.json, embeds its evaluation classes and reports:

* per-class spread: mean angle (degrees) between a class's samples and its centre;
* covariance similarity: every class is moved onto one common centre (the normalised
  mean of all centres) by rotation and by translation, and the class covariances are
  compared (mean relative Frobenius distance over class pairs; lower = more alike,
  i.e. the transform's homoscedasticity assumption holds better); the covariances
  left in place are shown for reference;
* rotation-vs-translation gap: for each sample and a random other class, the angle
  between the rotated and the (renormalised) translated feature, against the angle
  between the two centres.

Writes diagnostics.json and diagnostics.png next to the run (or to --out).
"""

import argparse
import json
from pathlib import Path

import torch

from pml_sft.functional import rotate, translate

from .models import Embedder, build_trunk
from .train import RunConfig, build_datasets, cached_datasets, embed


def class_centers(emb, labels):
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), emb.shape[1], dtype=emb.dtype).index_add_(
        0, inverse, emb
    )
    return classes, inverse, torch.nn.functional.normalize(sums, dim=1)


def spread_degrees(emb, inverse, centres):
    cos = (emb * centres[inverse]).sum(1).clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cos))
    per_class = torch.zeros(len(centres), dtype=emb.dtype).index_add_(
        0, inverse, angles
    )
    counts = torch.bincount(inverse, minlength=len(centres)).to(emb.dtype)
    return per_class / counts


def covariance_dissimilarity(emb, inverse, centres, moved_to, transform, min_samples):
    """Mean relative Frobenius distance between the covariances of classes moved to
    ``moved_to`` with ``transform`` ("rotation", "translation" or "none")."""
    counts = torch.bincount(inverse, minlength=len(centres))
    keep = (counts >= min_samples).nonzero().squeeze(1)
    covs = []
    for k in keep.tolist():
        x = emb[inverse == k]
        src = centres[k].expand_as(x)
        dst = moved_to.expand_as(x)
        if transform == "rotation":
            x = rotate(x, src, dst)
        elif transform == "translation":
            x = translate(x, src, dst)
        x = x - x.mean(0, keepdim=True)
        covs.append((x.T @ x / (len(x) - 1)).reshape(-1))
    covs = torch.stack(covs)
    norms = covs.norm(dim=1)
    gram = covs @ covs.T
    sq = (norms[:, None] ** 2 + norms[None, :] ** 2 - 2 * gram).clamp_min(0)
    rel = sq.sqrt() / (norms[:, None] * norms[None, :]).sqrt()
    upper = torch.triu_indices(len(covs), len(covs), offset=1)
    return float(rel[upper[0], upper[1]].mean()), len(covs)


def batch_center_error(emb, inverse, centres, m=4, draws=5, seed=0):
    """Angle (degrees) between the centre of m random samples of a class (what
    BatchClassCenters sees with m samples per class per batch) and the centre of all
    its samples, for classes with at least 2m samples."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(inverse, minlength=len(centres))
    angles = []
    for k in (counts >= 2 * m).nonzero().squeeze(1).tolist():
        members = (inverse == k).nonzero().squeeze(1)
        for _ in range(draws):
            pick = members[torch.randperm(len(members), generator=g)[:m]]
            estimate = torch.nn.functional.normalize(emb[pick].sum(0), dim=0)
            angles.append(
                torch.rad2deg(torch.acos((estimate @ centres[k]).clamp(-1, 1)))
            )
    return torch.stack(angles) if angles else torch.zeros(0, dtype=emb.dtype)


def rotation_translation_gap(emb, inverse, centres, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = len(centres)
    offset = torch.randint(1, k, (len(emb),), generator=g)
    target = (inverse + offset) % k
    src, dst = centres[inverse], centres[target]
    rotated = rotate(emb, src, dst)
    translated = translate(emb, src, dst)
    gap = torch.rad2deg(torch.acos((rotated * translated).sum(1).clamp(-1, 1)))
    center_angle = torch.rad2deg(torch.acos((src * dst).sum(1).clamp(-1, 1)))
    return gap, center_angle


def diagnose(emb, labels, min_samples=8, seed=0):
    emb = torch.nn.functional.normalize(emb.double(), dim=1)
    _, inverse, centres = class_centers(emb, labels)
    common = torch.nn.functional.normalize(centres.mean(0), dim=0)
    spread = spread_degrees(emb, inverse, centres)
    covariance = {}
    for transform in ("none", "translation", "rotation"):
        covariance[transform], num_classes = covariance_dissimilarity(
            emb, inverse, centres, common, transform, min_samples
        )
    gap, center_angle = rotation_translation_gap(emb, inverse, centres, seed)
    center_error = batch_center_error(emb, inverse, centres, seed=seed)
    return {
        "num_samples": len(emb),
        "num_classes": len(centres),
        "spread_degrees": {
            "mean": float(spread.mean()),
            "median": float(spread.median()),
            "p10": float(spread.quantile(0.1)),
            "p90": float(spread.quantile(0.9)),
        },
        "covariance_dissimilarity": covariance,
        "covariance_classes": num_classes,
        "rotation_translation_gap_degrees": {
            "mean": float(gap.mean()),
            "median": float(gap.median()),
            "p90": float(gap.quantile(0.9)),
        },
        "center_angle_degrees": {"mean": float(center_angle.mean())},
        "batch_center_error_degrees": {
            "m": 4,
            "classes": int(len(center_error) // 5),
            "mean": float(center_error.mean()) if len(center_error) else float("nan"),
        },
        "_arrays": {
            "spread": spread.numpy(),
            "gap": gap.numpy(),
            "center_angle": center_angle.numpy(),
        },
    }


def plot(report, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = report["_arrays"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].hist(arrays["spread"], bins=40, color="tab:blue")
    axes[0].set_xlabel("class spread: mean angle to centre (deg)")
    axes[0].set_ylabel("classes")
    cov = report["covariance_dissimilarity"]
    axes[1].bar(
        list(cov), list(cov.values()), color=["grey", "tab:orange", "tab:green"]
    )
    axes[1].set_ylabel("mean relative distance\nbetween class covariances")
    axes[1].set_title("moved to a common centre by")
    axes[2].scatter(arrays["center_angle"], arrays["gap"], s=2, alpha=0.3)
    axes[2].set_xlabel("angle between source and target centre (deg)")
    axes[2].set_ylabel("rotated vs translated (deg)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_run(run_dir, device="cpu"):
    """(config, trunk, embedder, evaluation set) of a finished run. For a fast-tier
    run (``train_from_block``) the trunk is the trained head and the evaluation set
    holds the frozen blocks' cached outputs, as in training."""
    run_dir = Path(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    cfg = RunConfig(**result["config"])
    cfg.progress = False
    weights = torch.load(run_dir / "model.pt", map_location=device)
    train_set, eval_set = build_datasets(cfg)
    if cfg.train_from_block:
        trunk = build_trunk(cfg.backbone, cfg.pretrained, cfg.width)
        trunk, _, eval_set = cached_datasets(
            cfg, trunk, train_set, eval_set, torch.device(device)
        )
    else:
        trunk = build_trunk(cfg.backbone, False, cfg.width)
    trunk.load_state_dict(weights["trunk"])
    embedder = Embedder(trunk.output_size, cfg.embedding_size)
    embedder.load_state_dict(weights["embedder"])
    return cfg, trunk.to(device), embedder.to(device), eval_set


def markdown(report, name):
    s, cov, gap = (
        report["spread_degrees"],
        report["covariance_dissimilarity"],
        report["rotation_translation_gap_degrees"],
    )
    return "\n".join(
        [
            f"## Diagnostics: {name}",
            "",
            f"{report['num_samples']} samples of {report['num_classes']} evaluation classes.",
            "",
            "| measure | value |",
            "| --- | --- |",
            f"| class spread, mean angle to centre (deg): mean / median / p10 / p90 | "
            f"{s['mean']:.1f} / {s['median']:.1f} / {s['p10']:.1f} / {s['p90']:.1f} |",
            f"| covariance dissimilarity, left in place | {cov['none']:.3f} |",
            f"| covariance dissimilarity, translated to a common centre | {cov['translation']:.3f} |",
            f"| covariance dissimilarity, rotated to a common centre | {cov['rotation']:.3f} |",
            f"| rotated vs translated feature (deg): mean / median / p90 | "
            f"{gap['mean']:.1f} / {gap['median']:.1f} / {gap['p90']:.1f} |",
            f"| angle between source and target centres (deg), mean | "
            f"{report['center_angle_degrees']['mean']:.1f} |",
            f"| batch-centre error: centre of 4 samples vs of the whole class (deg), "
            f"mean over {report['batch_center_error_degrees']['classes']} classes | "
            f"{report['batch_center_error_degrees']['mean']:.1f} |",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", required=True, help="a run folder (model.pt, result.json)"
    )
    parser.add_argument(
        "--out", help="folder for diagnostics.json/png (default: the run)"
    )
    parser.add_argument("--min-samples", type=int, default=8)
    args = parser.parse_args(argv)
    cfg, trunk, embedder, eval_set = load_run(args.run)
    emb, labels = embed(trunk, embedder, eval_set, cfg, torch.device("cpu"))
    report = diagnose(emb, labels, args.min_samples)
    out = Path(args.out or args.run)
    out.mkdir(parents=True, exist_ok=True)
    plot(report, out / "diagnostics.png", cfg.name())
    text = markdown(report, cfg.name())
    (out / "diagnostics.json").write_text(
        json.dumps({k: v for k, v in report.items() if k != "_arrays"}, indent=1)
    )
    (out / "diagnostics.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
