"""The heavy model alone on inputs cached by ``bench/cascade.py`` (its --work folder): one training per
JSON spec of HeavyConfig overrides (conf ``heavy`` + these), held-out PR-AUC / recall at 95 % precision
per bot family. For seed and setting sweeps without Spark (torch CPU, 1 thread).

    .venv/bin/python bench/heavy_sweep.py /tmp/cascade_bench '{"seed": 1}' '{"seed": 1, "dense_dropout": 0.5}'
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    import torch

    from botwatch import tables as t
    from botwatch.config import load_config
    from botwatch.evaluation.metrics import pr_auc
    from botwatch.models.heavy import HeavyConfig, train_heavy
    from botwatch.models.heavy_inputs import neighbor_columns
    from botwatch.training_heavy import family_metrics

    work, specs = Path(sys.argv[1]), sys.argv[2:] or ["{}"]
    meta = json.loads((work / "cols.json").read_text())
    cols, nbr = meta["cols"], neighbor_columns(meta["nbr"])
    data = {n: pd.read_parquet(work / f"{n}.parquet") for n in ("train", "valid", "heldout")}
    held = data["heldout"]
    fam = held[t.FAMILY].fillna("human").to_numpy()
    torch.set_num_threads(1)
    conf = load_config("conf/local.yaml")

    def summary(score) -> str:
        m = family_metrics(fam, score, conf["train.target_precision"])
        per_family = " ".join(
            f"{f}={m[f'family_{f}_pr_auc']:.3f}/{m[f'family_{f}_recall_at_p']:.3f}"
            for f in t.BOT_FAMILIES if f"family_{f}_pr_auc" in m
        )
        return f"all bots {pr_auc((fam != 'human').astype(int), score):.3f}; PR-AUC/recall@p: {per_family}"

    scores = []
    for spec in specs:
        cfg = HeavyConfig.from_mapping({**conf.section("heavy"), "device": "cpu", "num_threads": 1, **json.loads(spec)})
        t0 = time.perf_counter()
        model = train_heavy(data["train"], data["valid"], cols, nbr, label_col=t.LABEL, weight_col=t.WEIGHT, config=cfg)
        score = model.predict(held)
        scores.append(score)
        print(f"{spec}: {time.perf_counter() - t0:.0f} s, best epoch {model.best_epoch}/{len(model.history)}, "
              f"{summary(score)}", flush=True)
    if len(scores) > 1:  # what averaging the runs' scores would give (a seed ensemble, when specs differ by seed)
        print(f"mean of the {len(scores)} runs' scores: {summary(sum(scores) / len(scores))}", flush=True)


if __name__ == "__main__":
    main()
