"""Heavy-model training on CUDA: seconds per epoch against the CPU, run-to-run reproducibility on
CUDA with the same seed, CUDA-trained scores against the same model loaded on the CPU, and
whether a planted sequence-only signal is learned (PR-AUC on held-out rows).

Bots are a share of the synthetic rows whose events come at one fixed gap bucket in a narrow
band of hours; the dense features carry no signal, so only the GRU can find them. No pyspark:

    PYTHONPATH=lib:bench python3 bench/gpu_train.py --rows 30000 --epochs 8 --cpu-epochs 1
    .venv/bin/python bench/gpu_train.py --device cpu --rows 2000 --epochs 2 --cpu-epochs 0
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np
from stage2_inference import N_TABULAR, heavy_config, synthetic_rows


def planted(n: int, max_len: int, nbr: list[str], seed: int):
    """Synthetic heavy inputs with a 20 % bot share marked only in their sequences."""
    from botwatch import tables as t

    pdf = synthetic_rows(n, max_len, N_TABULAR, nbr, seed=seed)
    rng = np.random.default_rng(seed + 1)
    has_events = pdf[t.SEQ_EVENT_TYPE].notna().to_numpy()
    bot = has_events & (rng.random(n) < 0.2)
    dtb, sin, cos = (pdf[c].tolist() for c in (t.SEQ_DT_BUCKET, t.SEQ_HOUR_SIN, t.SEQ_HOUR_COS))
    for i in np.flatnonzero(bot):
        k = len(dtb[i])
        angle = rng.normal(0.5, 0.8, k)  # around 02:00 UTC, widely
        regular = rng.random(k) < 0.4  # 64-127 s apart, 40 % of the time
        dtb[i] = np.where(regular, 6, dtb[i]).astype(np.int32)
        sin[i], cos[i] = np.sin(angle), np.cos(angle)
    # Whole columns: pandas' .at would store a one-item array as a 0-d array.
    pdf[t.SEQ_DT_BUCKET], pdf[t.SEQ_HOUR_SIN], pdf[t.SEQ_HOUR_COS] = dtb, sin, cos
    pdf[t.LABEL] = bot.astype(int)
    return pdf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--rows", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cpu-epochs", type=int, default=1, help="epochs timed on the CPU for comparison (0: skip)")
    ap.add_argument("--ensemble", type=int, default=None, help="heavy model members (default: conf heavy.ensemble)")
    args = ap.parse_args()

    import torch
    from sklearn.metrics import average_precision_score

    from botwatch import tables as t
    from botwatch.config import load_config
    from botwatch.models.heavy import HeavyConfig, load_heavy, train_heavy

    conf = load_config("conf/local.yaml")
    nbr = [f"nbr_{c}" for c in conf["heavy.neighbor_features"]] + ["nbr_count"]
    tab = [f"f{i}" for i in range(N_TABULAR)]
    base = heavy_config(conf, args.device, args.ensemble, epochs=args.epochs, patience=args.epochs)
    pdf = planted(args.rows, base.max_len, nbr, seed=0)
    n_train, n_valid = int(0.6 * len(pdf)), int(0.2 * len(pdf))
    train, valid, test = pdf[:n_train], pdf[n_train:n_train + n_valid], pdf[n_train + n_valid:]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{name}; torch {torch.__version__}; {os.cpu_count()} CPU cores; {len(train)} train / {len(valid)} "
          f"valid / {len(test)} test rows; bot share {pdf[t.LABEL].mean():.3f}; batch {base.batch_size}; "
          f"max_len {base.max_len}")

    def fit(config: HeavyConfig):
        start = time.perf_counter()
        model = train_heavy(train, valid, tab, nbr, weight_col=None, config=config)
        secs = time.perf_counter() - start
        return model, secs / len(model.history)

    first, per_epoch = fit(base)
    scores = first.predict(test)
    print(f"{args.device}: {per_epoch:.2f} s/epoch over {len(first.history)} epochs (best {first.best_epoch}); "
          f"test PR-AUC {average_precision_score(test[t.LABEL], scores):.3f}")
    again, _ = fit(base)
    print(f"{args.device}: same seed twice, max |score difference| {np.abs(again.predict(test) - scores).max():.2e}")
    folder = first.save(tempfile.mkdtemp(prefix="bench-gpu-train-"))
    on_cpu = load_heavy(folder, device="cpu").predict(test)
    print(f"saved on {args.device}, loaded on the CPU: max |score difference| {np.abs(on_cpu - scores).max():.2e}")
    if args.cpu_epochs:
        _, cpu_epoch = fit(dataclasses.replace(base, device="cpu", epochs=args.cpu_epochs, patience=args.cpu_epochs))
        print(f"cpu ({torch.get_num_threads()} threads): {cpu_epoch:.2f} s/epoch; "
              f"{args.device} is {cpu_epoch / per_epoch:.1f}x faster")
    print("load average:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
