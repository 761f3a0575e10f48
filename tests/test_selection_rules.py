"""scripts/selection_rules.py: the epoch each rule picks from a dev curve, and what the held-out curve says of it."""

from __future__ import annotations

import json

from scripts.selection_rules import rule_scores


def _run(folder, split, dev, heldout, with_curve=True):
    folder.mkdir(parents=True)
    results = {"task": "eprstmt", "split": split, "val/acc": max(dev), "heldout/acc": 0.0,
               "dev_curve": [{"epoch": i + 1, "step": 4 * (i + 1), "val/acc": v} for i, v in enumerate(dev)]}
    if with_curve:
        results["heldout_curve"] = [{"epoch": i + 1, "step": 4 * (i + 1), "heldout/acc": v}
                                    for i, v in enumerate(heldout)]
    (folder / "results.json").write_text(json.dumps(results))


def test_each_rule_picks_its_epoch(tmp_path):
    #        epoch:   1     2     3     4     5
    dev = [0.50, 0.75, 0.50, 0.75, 0.625]
    heldout = [0.55, 0.60, 0.65, 0.70, 0.80]
    _run(tmp_path / "runs" / "0", "0", dev, heldout)
    _run(tmp_path / "runs" / "1", "1", dev, heldout, with_curve=False)
    scores, skipped = rule_scores([tmp_path / "runs"])
    assert skipped == [tmp_path / "runs" / "1"]
    picked = {name: (runs[("eprstmt", "0")].metric, runs[("eprstmt", "0")].dev) for name, runs in scores.items()}
    # smoothed dev (the epoch and the two before it): 0.5, 0.625, 0.583, 0.667, 0.625 -> epoch 4
    assert picked == {"best dev": (0.60, 0.75), "best dev, latest": (0.70, 0.75), "smoothed dev": (0.70, 0.75),
                      "last": (0.80, 0.625), "held-out best": (0.80, 0.625)}
