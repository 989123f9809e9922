"""Host-device synchronisations of one SFTLoss training call on CUDA, against the
wrapped loss alone: torch.cuda.set_sync_debug_mode('warn') reports each one (the
counts in docs/sft.md). Needs a GPU: python -m benchmarks.sync_check"""

import collections
import warnings

import torch
from pytorch_metric_learning import losses

import pml_sft
from pml_sft.upstream import sft_loss


def syncs(fn):
    sites = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        fn()
        torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            sites[f"{w.filename.split('site-packages/')[-1]}:{w.lineno}"] += 1
    return sites


torch.manual_seed(0)
x = torch.randn(64, 32, device="cuda", requires_grad=True)
y = torch.arange(16, device="cuda").repeat_interleave(4)
for name, build in [
    ("MultiSimilarityLoss alone", lambda: losses.MultiSimilarityLoss()),
    (
        "upstream SFTLoss",
        lambda: sft_loss.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=0),
    ),
    (
        "pml_sft.SFTLoss",
        lambda: pml_sft.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=0),
    ),
    (
        "pml_sft.SFTLoss, before its start",
        lambda: pml_sft.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=10),
    ),
    (
        "upstream SFTLoss, before its start",
        lambda: sft_loss.SFTLoss(losses.MultiSimilarityLoss(), warmup_iterations=10),
    ),
]:
    loss_fn = build()
    loss_fn(x, y).backward()  # warm-up call
    sites = syncs(lambda: loss_fn(x, y).backward())
    print(f"{name}: {sum(sites.values())} syncs")
    for site, n in sorted(sites.items()):
        print(f"    {n} x {site}")
