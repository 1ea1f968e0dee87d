"""Heavy-model inference throughput (accounts/s) over a sweep of batch sizes, in process.

On CUDA: fp32, and with --half bf16 and fp16 autocast. On the CPU (``--device cpu``): fp32 and
int8 dynamic quantisation. Weights are random (throughput does not depend on them); shapes are
the conf's. Two figures per row:

- worker path: ``botwatch.scoring.worker.score_partitions`` over 10,000-row batches (Arrow's
  default batch in ``mapInPandas``) -- the code a Spark worker runs, host-side tensor building
  and length-sorted encoder batches included;
- model only: the forward pass over tensors already on the device, length-sorted like the worker.

No pyspark is needed, so it runs on a GPU host without Spark:

    PYTHONPATH=lib:bench python3 bench/gpu_inference.py --device cuda --rows 200000 --batch-sizes 1024,4096,16384 --half
    .venv/bin/python bench/gpu_inference.py --device cpu --rows 5000 --batch-sizes 256,1024
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

from stage2_inference import N_TABULAR, heavy_config, synthetic_model, synthetic_rows

ARROW_BATCH = 10_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--half", action="store_true", help="also bf16 and fp16 autocast (CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--processes", default="", help="e.g. 1,4,8: that many worker processes (Spark tasks) "
                    "sharing the device, fp32 worker path, each scoring --rows / N rows")
    ap.add_argument("--process-batch", type=int, default=4096)
    ap.add_argument("--ensemble", type=int, default=None, help="heavy model members (default: conf heavy.ensemble)")
    args = ap.parse_args()

    import torch

    from botwatch.config import load_config
    from botwatch.models.heavy import LENGTH
    from botwatch.scoring.worker import HeavyArtifact, InferenceSettings, score_partitions

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; run with --device cpu")
    conf = load_config("conf/local.yaml")
    cfg = heavy_config(conf, args.device, args.ensemble)
    nbr = [f"nbr_{c}" for c in conf["heavy.neighbor_features"]] + ["nbr_count"]
    pdf = synthetic_rows(args.rows, cfg.max_len, N_TABULAR, nbr)
    parts = [pdf.iloc[i:i + ARROW_BATCH] for i in range(0, len(pdf), ARROW_BATCH)]
    base = synthetic_model(cfg, N_TABULAR, nbr)
    artifact = HeavyArtifact.from_folder(base.save(tempfile.mkdtemp(prefix="bench-gpu-")), version=1)
    variants = {"fp32": None}
    if not cuda:
        variants["int8"] = None
    elif args.half:
        variants.update(bf16=torch.bfloat16, fp16=torch.float16)
    device = torch.device(args.device)
    # Length-sorted, like the worker's encoder batches.
    host = base.tensors(pdf)
    order = torch.argsort(host[LENGTH], stable=True)
    on_device = {k: v[order].to(device) for k, v in host.items()}
    model = base.to(device).model.eval()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, warm_up) -> float:
        warm_up()  # kernels, allocator, model load
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; torch {torch.__version__}; {args.rows} rows; max_len {cfg.max_len}; "
          f"mean sequence length {float(on_device[LENGTH].float().mean()):.1f}")
    print("precision  batch  worker accounts/s  model-only accounts/s" + ("  peak GPU MiB" if cuda else ""))
    for label, dtype in variants.items():
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            settings = InferenceSettings(batch_size=bs, device=args.device, quantize_cpu=label == "int8",
                                         torch_threads=args.threads)
            worker_rate = args.rows / timed(*[lambda p=p, s=settings, d=dtype: _drain(score_partitions(
                p, artifact, s, ["account_id"]), args.device, d) for p in (parts, parts[:1])])
            model_rate = float("nan") if label == "int8" else args.rows / timed(
                lambda b=bs, d=dtype: _forward(model, on_device, b, device, d),
                lambda b=bs, d=dtype: _forward(model, on_device, b, device, d))
            peak = f"  {torch.cuda.max_memory_allocated() / 2**20:12,.0f}" if cuda else ""
            print(f"{label:9s} {bs:6d}  {worker_rate:17,.0f}  {model_rate:21,.0f}{peak}")
    for n_proc in [int(p) for p in args.processes.split(",") if p]:
        rate = _shared_device(n_proc, args, artifact.path)
        print(f"{n_proc} worker processes sharing {args.device}, fp32, batch {args.process_batch}: "
              f"{rate:,.0f} accounts/s in all")
    if cuda:
        # The worker's scores on CUDA (fp32, bf16) against the same model's on the CPU in fp32.
        check = parts[:2]
        fp32_cpu = InferenceSettings(device="cpu", quantize_cpu=False)
        cpu = _drain(score_partitions(check, artifact, fp32_cpu, ["account_id"]), "cpu", None)
        for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            gpu = _drain(score_partitions(check, artifact, InferenceSettings(device="cuda"), ["account_id"]), "cuda",
                         dtype)
            print(f"worker scores, cuda {label} vs cpu fp32 on {len(cpu):,} rows: max |difference| "
                  f"{abs(gpu - cpu).max():.2e}")
    print("load average:", open("/proc/loadavg").read().strip())


def _one_process(rank: int, n_rows: int, args, folder: str, barrier, results) -> None:
    import torch

    from botwatch.config import load_config
    from botwatch.models.heavy import HeavyConfig
    from botwatch.scoring.worker import HeavyArtifact, InferenceSettings, score_partitions

    torch.set_num_threads(1)  # as a Spark task's worker (cascade.torch_threads)
    conf = load_config("conf/local.yaml")
    cfg = HeavyConfig.from_mapping(conf.section("heavy"))
    nbr = [f"nbr_{c}" for c in conf["heavy.neighbor_features"]] + ["nbr_count"]
    pdf = synthetic_rows(n_rows, cfg.max_len, N_TABULAR, nbr, seed=rank)
    parts = [pdf.iloc[i:i + ARROW_BATCH] for i in range(0, len(pdf), ARROW_BATCH)]
    artifact = HeavyArtifact.from_folder(folder, version=1)
    settings = InferenceSettings(batch_size=args.process_batch, device=args.device, quantize_cpu=False,
                                 torch_threads=1)
    _drain(score_partitions(parts[:1], artifact, settings, ["account_id"]), args.device, None)  # warm-up
    barrier.wait(timeout=180)
    start = time.perf_counter()
    _drain(score_partitions(parts, artifact, settings, ["account_id"]), args.device, None)
    results.put(time.perf_counter() - start)


def _shared_device(n_proc: int, args, folder: str) -> float:
    """Accounts/s of ``n_proc`` processes running the worker path at once on one device."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n_proc), ctx.Queue()
    n_rows = args.rows // n_proc
    procs = [ctx.Process(target=_one_process, args=(r, n_rows, args, folder, barrier, results))
             for r in range(n_proc)]
    for p in procs:
        p.start()
    slowest = max(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    return n_rows * n_proc / slowest


def _autocast(device: str, dtype):
    import torch

    return torch.autocast(device_type=device, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _drain(frames, device: str, dtype):
    """All scores of the worker's output frames (under autocast to ``dtype`` when given)."""
    import numpy as np

    with _autocast(device, dtype):
        return np.concatenate([f["stage2_score"].to_numpy() for f in frames])


def _forward(model, tensors: dict, batch_size: int, device, dtype) -> None:
    import torch

    from botwatch.models.heavy import LENGTH, _slice

    with _autocast(device.type, dtype), torch.inference_mode():
        for start in range(0, len(tensors[LENGTH]), batch_size):
            model(_slice(tensors, slice(start, start + batch_size), device))


if __name__ == "__main__":
    main()
