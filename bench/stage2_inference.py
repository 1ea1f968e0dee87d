"""Stage-2 throughput: accounts/s of the heavy model through Spark (``score_heavy``:
repartition + mapInPandas, model loaded once per Python worker) against in-process torch on the
same rows and the same model, on the CPU.

The model has the conf's sizes (GRU over up to ``max_len`` events, the stage-1 feature count as
tabular inputs); its weights are random — throughput does not depend on them. Spark's input
frame is cached first, so the timing is scoring, not building the frame from pandas.

    .venv/bin/python bench/stage2_inference.py --rows 20000 --set spark.master=local[2]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd

N_TABULAR = 70


def synthetic_rows(n: int, max_len: int, n_tab: int, nbr_cols: list[str], seed: int = 0) -> pd.DataFrame:
    """Rows of heavy inputs with sequence lengths like the platform's (many short, some full).

    Array cells are numpy arrays (int32 and float64), as ``mapInPandas`` hands Spark's arrays over.
    """
    from botwatch import tables as t

    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 40, n), max_len)
    lengths[rng.random(n) < 0.15] = 0
    et, dtb, hs, hc = [], [], [], []
    for n_ev in lengths:
        if n_ev == 0:
            et.append(None), dtb.append(None), hs.append(None), hc.append(None)
            continue
        a = rng.uniform(0, 2 * np.pi, n_ev)
        et.append(rng.integers(1, 6, n_ev).astype(np.int32))
        dtb.append(rng.integers(0, 20, n_ev).astype(np.int32))
        hs.append(np.sin(a))
        hc.append(np.cos(a))
    data = {t.ACCOUNT_ID: np.arange(n, dtype=np.int64), t.SEQ_EVENT_TYPE: et, t.SEQ_DT_BUCKET: dtb,
            t.SEQ_HOUR_SIN: hs, t.SEQ_HOUR_COS: hc}
    for i in range(n_tab):
        data[f"f{i}"] = rng.normal(size=n)
    for c in nbr_cols:
        data[c] = rng.normal(size=n)
    return pd.DataFrame(data)


def heavy_config(conf, device: str, ensemble: int | None = None, **knobs):
    """Conf's heavy settings on ``device``; ``ensemble`` (members) overrides the conf's when given."""
    from botwatch.models.heavy import HeavyConfig

    extra = {"ensemble": ensemble} if ensemble is not None else {}
    return HeavyConfig.from_mapping({**conf.section("heavy"), "device": device, **extra, **knobs})


def synthetic_model(config, n_tab: int, nbr_cols: list[str]):
    """An untrained heavy model of the conf's shape (every ensemble member) with a fitted standardiser."""
    from botwatch.models.heavy import Standardizer, TrainedHeavy, build_model

    tab = [f"f{i}" for i in range(n_tab)]
    std = Standardizer(tab + nbr_cols, np.zeros(n_tab + len(nbr_cols)), np.ones(n_tab + len(nbr_cols)))
    import torch

    torch.manual_seed(0)
    return TrainedHeavy(build_model(n_tab, len(nbr_cols), config).eval(), std, tab, nbr_cols, config)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ensemble", type=int, default=None, help="heavy model members (default: conf heavy.ensemble)")
    ap.add_argument("--set", action="append", default=["spark.master=local[2]", "spark.ui_enabled=false"])
    args = ap.parse_args()

    import torch

    from botwatch import tables as t
    from botwatch.config import load_config
    from botwatch.scoring.stage2 import score_heavy
    from botwatch.scoring.worker import HeavyArtifact, InferenceSettings, score_batch
    from botwatch.spark import get_spark

    conf = load_config("conf/local.yaml", args.set)
    cfg = heavy_config(conf, "cpu", args.ensemble)
    nbr = [f"nbr_{c}" for c in conf["heavy.neighbor_features"]] + ["nbr_count"]
    pdf = synthetic_rows(args.rows, cfg.max_len, N_TABULAR, nbr)
    model = synthetic_model(cfg, N_TABULAR, nbr)
    folder = model.save(tempfile.mkdtemp(prefix="bench-heavy-"))
    artifact = HeavyArtifact.from_folder(folder, version=1, threshold=0.5)
    batch = conf["cascade.batch_size"]
    cores = 2
    mean_len = pdf[t.SEQ_EVENT_TYPE].map(lambda a: 0 if a is None else len(a)).mean()
    print(f"{args.rows} rows, mean sequence length {mean_len:.1f}, max_len {cfg.max_len}, batch {batch}, "
          f"{cfg.ensemble} member(s)")

    results = {}
    # In process: the same code path as a Spark worker (length-sorted encoder batches), and, for
    # reference, TrainedHeavy.predict in row order (every batch padded to its longest sequence).
    for label, threads, quant in (("in-process fp32, 1 thread", 1, False), (f"in-process fp32, {cores} threads",
                                  cores, False), ("in-process int8, 1 thread", 1, True)):
        torch.set_num_threads(threads)
        m = model.quantize_dynamic() if quant else model
        best = min(_time(lambda m=m: score_batch(m, pdf, batch)) for _ in range(args.repeats))
        results[label] = args.rows / best
    torch.set_num_threads(1)
    results["in-process fp32 predict() in row order, 1 thread"] = args.rows / min(
        _time(lambda: model.predict(pdf, batch_size=batch)) for _ in range(args.repeats))
    spark = get_spark(conf, app_name="bench-stage2")
    df = spark.createDataFrame(pdf).repartition(cores).cache()
    df.count()
    for quant in (False, True):
        settings = InferenceSettings(batch_size=batch, device="cpu", quantize_cpu=quant, torch_threads=1,
                                     partitions=cores, embedding_cache=False)
        # A new query each run: collecting the same DataFrame again reuses its shuffle output, and the
        # scoring (map side of the aggregation's shuffle) would be skipped.
        def run(settings=settings):
            return score_heavy(df, artifact, settings).agg({t.STAGE2_SCORE: "sum"}).collect()

        _time(run)  # warm the workers (model load)
        best = min(_time(run) for _ in range(args.repeats))
        results[f"Spark mapInPandas {'int8' if quant else 'fp32'}, {cores} tasks x 1 thread"] = args.rows / best
    for k, v in results.items():
        print(f"  {k}: {v:,.0f} accounts/s")
    ref = max(results[f"in-process fp32, {cores} threads"], results["in-process fp32, 1 thread"])
    spark_fp32 = results[f"Spark mapInPandas fp32, {cores} tasks x 1 thread"]
    print(f"gap (best in-process fp32 / Spark fp32): {ref / spark_fp32:.2f}x")
    print("load average:", open("/proc/loadavg").read().strip())
    spark.stop()


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
