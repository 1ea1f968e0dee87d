"""The cascade on a simulated platform: does the heavy model earn its cost, and how much scoring
compute does the cascade save against heavy-on-everyone, at what recall loss?

1. With Spark (once; cached as Parquet under --work): the heavy inputs of the point-in-time
   training rows at --train-date (train / valid / golden, as ``train_heavy_stage`` builds them)
   and of every account at --eval-date that is in no training or validation row (held out),
   with truth families.
2. In process: the heavy model (conf ``heavy`` + --set overrides) and an XGBoost with the
   stage-1 hyper-parameters are trained on the same rows (early stopping on valid); a second
   XGBoost is distilled from the heavy model (soft targets, cascade weights).
3. Held-out report: PR-AUC and recall at 95 % precision per bot family (family vs humans, truth).
4. Cascade: the flag threshold is chosen on the held-out accounts' stage-1 scores against the
   heavy model's would-be actions at its operating threshold (picked as training picks it, on
   validation reweighted to the population's bot share, ``--prevalence``; as ``calibrate_flag_threshold``
   does on D's accounts); then compute is timed in process: stage 1 on everyone + heavy on the
   flagged vs heavy on everyone (torch CPU, 1 thread, float model).

    .venv/bin/python bench/cascade.py --warehouse /tmp/plat --train-date 2026-01-14 \
        --eval-date 2026-01-18 --work /tmp/cascade_bench
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_inputs(args, conf) -> None:
    from pyspark.sql import functions as F

    from botwatch import tables as t
    from botwatch.delta_io import read_table
    from botwatch.models.stage1 import feature_columns
    from botwatch.spark import get_spark
    from botwatch.training import TrainParams, training_rows
    from botwatch.training_heavy import inputs_for

    spark = get_spark(conf, app_name="bench-cascade")
    wh, hs = args.warehouse, conf.section("heavy")
    train, valid, golden = training_rows(spark, wh, args.train_date, TrainParams.from_conf(conf.section("train")))
    cols = feature_columns(train)
    truth = read_table(spark, wh, t.TRUTH).select(t.ACCOUNT_ID, t.FAMILY)
    for name, rows in (("train", train), ("valid", valid), ("golden", golden)):
        keep = [c for c in (t.ACCOUNT_ID, t.RUN_DATE, t.LABEL, t.WEIGHT) if c not in cols]
        (inputs_for(spark, wh, rows.select(*keep, *cols), cols, hs).join(truth, t.ACCOUNT_ID, "left")
         .toPandas().to_parquet(args.work / f"{name}.parquet"))
    seen = train.select(t.ACCOUNT_ID).union(valid.select(t.ACCOUNT_ID)).distinct()
    held = read_table(spark, wh, t.FEATURES).where(F.col(t.RUN_DATE) == F.lit(args.eval_date))
    held = held.join(seen, t.ACCOUNT_ID, "left_anti")
    (inputs_for(spark, wh, held.select(t.ACCOUNT_ID, t.RUN_DATE, *cols), cols, hs).join(truth, t.ACCOUNT_ID, "left")
     .toPandas().to_parquet(args.work / "heldout.parquet"))
    (args.work / "cols.json").write_text(json.dumps({"cols": cols, "nbr": hs["neighbor_features"]}))
    spark.stop()


def xgb_fit(train, valid, cols, xgb_conf, target=None):
    import xgboost as xgb

    from botwatch import tables as t

    kw = dict(n_estimators=xgb_conf["n_estimators"], max_depth=xgb_conf["max_depth"],
              learning_rate=xgb_conf["learning_rate"], subsample=xgb_conf["subsample"],
              colsample_bytree=xgb_conf["colsample_bytree"], min_child_weight=xgb_conf["min_child_weight"],
              reg_lambda=xgb_conf["reg_lambda"], early_stopping_rounds=xgb_conf["early_stopping_rounds"],
              random_state=0, n_jobs=1, eval_metric="logloss")
    ytr = train[t.LABEL] if target is None else target[0]
    yva = valid[t.LABEL] if target is None else target[1]
    model = (xgb.XGBClassifier(**kw) if target is None else xgb.XGBRegressor(objective="binary:logistic", **kw))
    model.fit(train[cols].astype(float), ytr, sample_weight=train[t.WEIGHT],
              eval_set=[(valid[cols].astype(float), yva)], sample_weight_eval_set=[valid[t.WEIGHT]], verbose=False)
    if target is None:
        return lambda df: model.predict_proba(df[cols].astype(float))[:, 1]
    return lambda df: model.predict(df[cols].astype(float))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--train-date", type=dt.date.fromisoformat, required=True)
    ap.add_argument("--eval-date", type=dt.date.fromisoformat, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="conf overrides, e.g. heavy.epochs=20")
    ap.add_argument("--prevalence", type=float, default=None,
                    help="bot share the heavy threshold is picked for (what the monitor would estimate); default: "
                         "conf train.prevalence, or train.prevalence_fallback when it is auto")
    args = ap.parse_args()

    import torch
    from tests.conftest import TEST_SETTINGS
    from tests.helpers import PLATFORM_SETTINGS

    from botwatch import tables as t
    from botwatch.cascade import choose_flag_threshold
    from botwatch.config import load_config
    from botwatch.evaluation.metrics import operating_threshold, pr_auc
    from botwatch.models.heavy import HeavyConfig, train_heavy
    from botwatch.models.heavy_inputs import neighbor_columns
    from botwatch.training import TrainParams, conf_prevalence, population_threshold, validation_weights
    from botwatch.training_heavy import family_metrics

    overrides = TEST_SETTINGS + PLATFORM_SETTINGS + [f"warehouse={args.warehouse}"] + args.set
    conf = load_config("conf/local.yaml", overrides)
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "heldout.parquet").exists():
        t0 = time.perf_counter()
        build_inputs(args, conf)
        print(f"inputs built in Spark in {time.perf_counter() - t0:.0f} s")
    meta = json.loads((args.work / "cols.json").read_text())
    cols, nbr = meta["cols"], neighbor_columns(meta["nbr"])
    data = {n: pd.read_parquet(args.work / f"{n}.parquet") for n in ("train", "valid", "golden", "heldout")}
    print({n: len(d) for n, d in data.items()}, "held-out bots by family:",
          data["heldout"][t.FAMILY].value_counts().to_dict())

    torch.set_num_threads(1)
    cfg = HeavyConfig.from_mapping({**conf.section("heavy"), "device": "cpu"})
    t0 = time.perf_counter()
    heavy = train_heavy(data["train"], data["valid"], cols, nbr, label_col=t.LABEL, weight_col=t.WEIGHT, config=cfg)
    print(f"heavy trained in {time.perf_counter() - t0:.0f} s, best epoch {heavy.best_epoch}/{len(heavy.history)}")
    xgb_conf = conf.section("train")["xgb"]
    stage1 = xgb_fit(data["train"], data["valid"], cols, xgb_conf)
    tp = conf["train.target_precision"]
    wl, wt = conf["cascade.distill_label_weight"], conf["cascade.distill_teacher_weight"]
    soft = [(wl * d[t.LABEL] + wt * heavy.predict(d)) / (wl + wt) for d in (data["train"], data["valid"])]
    student = xgb_fit(data["train"], data["valid"], cols, xgb_conf, target=soft)

    held = data["heldout"]
    fam = held[t.FAMILY].fillna("human").to_numpy()
    y = (fam != "human").astype(int)
    s_heavy, s_xgb, s_student = heavy.predict(held), stage1(held), student(held)
    rows = []
    for name, s in (("heavy", s_heavy), ("xgboost", s_xgb), ("xgboost distilled", s_student)):
        m = family_metrics(fam, s, tp)
        rows.append({"model": name, "all_pr_auc": pr_auc(y, s), **m})
    report = pd.DataFrame(rows).set_index("model").T
    print("\nHeld-out accounts at", args.eval_date, "(truth families; family vs humans):")
    print(report.to_string(float_format=lambda v: f"{v:.3f}"))

    # int8 dynamic quantisation (the CPU path's default): how far do scores move?
    s_q = heavy.quantize_dynamic().predict(held, batch_size=1024)
    diff = np.abs(s_q - s_heavy)
    print(f"\nint8 vs fp32 heavy scores on {len(held)} held-out accounts: mean |diff| {diff.mean():.5f}, "
          f"max {diff.max():.5f}, PR-AUC fp32 {pr_auc(y, s_heavy):.4f} vs int8 {pr_auc(y, s_q):.4f}")
    # The cascade: heavy's would-be actions at its operating threshold, picked as training picks it
    # (validation reweighted to the population's bot share), and at the labels' own bot share before it.
    valid_y, valid_s = data["valid"][t.LABEL].to_numpy(), heavy.predict(data["valid"])
    if args.prevalence is not None:
        prevalence = args.prevalence
    else:
        prevalence = conf_prevalence(TrainParams.from_conf(conf.section("train")))[0]
    weights = validation_weights(data["valid"], prevalence)
    rules = {
        f"validation reweighted to bot share {prevalence} (as training picks it)":
            population_threshold(valid_y, valid_s, weights, tp)[0],
        "validation labels' own bot share": operating_threshold(valid_y, valid_s, tp),
    }
    acts_of = {}
    for rule, heavy_thr in rules.items():
        acts = s_heavy >= heavy_thr if heavy_thr is not None else s_heavy >= np.quantile(s_heavy, 0.97)
        acts_of[rule] = acts
        print(f"\nheavy threshold {heavy_thr} ({rule}): heavy-on-everyone actions {int(acts.sum())} of {len(held)}, "
              f"{int((acts & (y == 1)).sum())} of them bots")
        if heavy_thr is not None:
            flips = int(((s_q >= heavy_thr) != acts).sum())
            print(f"int8 changes {flips} of {len(held)} action decisions at that threshold")
        for name, s1 in (("xgboost", s_xgb), ("xgboost distilled", s_student)):
            for budget in sorted({conf["cascade.budget"], 0.05, 0.15, 0.20}):
                c = choose_flag_threshold(s1, acts, keep_share=conf["cascade.keep_share"], budget=budget)
                print(f"  stage 1 = {name}, budget {budget:.2f}: flagged {c.flagged_share:.3f}, recall kept "
                      f"{c.recall_kept:.3f} (lost {c.recall_lost:.3f}), budget binds: {c.budget_binds}")
                print("    " + _truth_recall(acts, s1 >= c.threshold, fam))
    acts = acts_of[next(iter(rules))]
    # Compute: torch CPU, 1 thread, float model; stage 1 in process too.
    choice = choose_flag_threshold(s_student, acts, keep_share=conf["cascade.keep_share"],
                                   budget=conf["cascade.budget"])
    flagged = held[s_student >= choice.threshold]
    reps = max(1, 20000 // max(len(held), 1))
    big = pd.concat([held] * reps, ignore_index=True)
    big_flagged = pd.concat([flagged] * reps, ignore_index=True)
    t_all = _timed(lambda: heavy.predict(big, batch_size=1024))
    t_s1 = _timed(lambda: student(big))
    t_flag = _timed(lambda: heavy.predict(big_flagged, batch_size=1024)) if len(big_flagged) else 0.0
    print(f"\ncompute on {len(big)} rows: heavy on everyone {t_all:.2f} s; cascade {t_s1 + t_flag:.2f} s "
          f"(stage 1 {t_s1:.2f} s + heavy on {len(big_flagged)} flagged {t_flag:.2f} s): "
          f"{t_all / (t_s1 + t_flag):.1f}x less at recall loss {choice.recall_lost:.3f}")
    print("load average:", open("/proc/loadavg").read().strip())


def _truth_recall(acts: np.ndarray, flagged: np.ndarray, fam: np.ndarray) -> str:
    """Against the simulator's truth: the bots heavy-on-everyone actions and those the cascade still
    actions (flagged and actioned), and the lost actions by family (a lost human is a false positive
    the cascade avoids, not a bot missed)."""
    bot = fam != "human"
    caught, kept = int((acts & bot).sum()), int((acts & flagged & bot).sum())
    lost = pd.Series(fam[acts & ~flagged]).value_counts().to_dict()
    return (f"true-bot recall: heavy on everyone {caught / bot.sum():.4f}, cascade {kept / bot.sum():.4f} "
            f"({caught - kept} of {caught} bots lost, {(caught - kept) / max(caught, 1):.3f}); "
            f"lost actions by family {lost}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
