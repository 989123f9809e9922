"""examples/train_with_sft.py runs end to end on its tiny data (the emoji flag needs
the npm download and is run by hand)."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_with_sft.py"


def test_train_with_sft_runs_and_augments_from_half_way(capsys):
    spec = importlib.util.spec_from_file_location("train_with_sft", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    seen, accuracy = example.main(["--epochs", "4"])
    weights = [weight for _, weight, _, _ in seen]
    assert len(seen) == 12 and weights[:6] == [0.0] * 6 and weights[-1] == 1.0
    assert all(augmented > 0 for _, weight, augmented, _ in seen if weight > 0)
    # the centre angle is a measurement only where samples were moved
    assert all((angle == angle) == (augmented > 0) for _, _, augmented, angle in seen)
    assert 0 <= accuracy["recall_at_1_level0"] <= 1
    assert "test classes never seen in training" in capsys.readouterr().out
