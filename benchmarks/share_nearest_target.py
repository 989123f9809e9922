"""The share of synthetic samples that lie nearest to their target's centre, per
variant, from the record-keeper logs of finished runs (the transform's
``share_nearest_target`` statistic, logged every 10 iterations).

    python -m benchmarks.share_nearest_target runs/study_multisimilarity
"""

import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def variant_name(run_dir):
    """What sets the run apart, from its config.json: the data set, loss and
    method, then every setting away from the defaults but the seed."""
    from .train import RunConfig

    config = json.loads((run_dir / "config.json").read_text())
    default = RunConfig(method=config["method"]).identity()
    parts = [config["dataset"], config["loss"], config["method"]]
    for key, value in sorted({**config, **config.pop("options")}.items()):
        expected = default["options"].get(key, default.get(key))
        if key not in ("dataset", "loss", "method", "seed", "options") and (
            value != expected
        ):
            parts.append(f"{key}={value}")
    return "_".join(str(p) for p in parts)


def shares(folder):
    """variant -> [(mean share while augmenting, first logged, last logged)] per run."""
    rows = defaultdict(list)
    for path in sorted(Path(folder).glob("*/logs/*SphericalFeatureTransform.csv")):
        variant = variant_name(path.parent.parent)
        with open(path) as f:
            active = [
                float(r["share_nearest_target"])
                for r in csv.DictReader(f)
                if float(r["num_augmented"]) > 0
            ]
        if active:
            rows[variant].append((statistics.mean(active), active[0], active[-1]))
    return rows


def main(argv=None):
    (folder,) = sys.argv[1:] if argv is None else argv
    for variant, runs in sorted(shares(folder).items()):
        mean, first, last = (statistics.mean(r[i] for r in runs) for i in range(3))
        print(
            f"{variant:70s} runs={len(runs)} mean share {mean:.3f} "
            f"first {first:.3f} last {last:.3f}"
        )


if __name__ == "__main__":
    main()
