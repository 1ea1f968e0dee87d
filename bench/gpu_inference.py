"""Heavy-model inference throughput (accounts/s) over a sweep of batch sizes, in process.

On CUDA: fp32, and with --half bf16 and fp16 autocast. On the CPU (``--device cpu``): fp32 and
int8 dynamic quantisation. Weights are random (throughput does not depend on them); shapes are
the conf's. Rows are moved to the device per batch, as stage 2 does.

    .venv/bin/python bench/gpu_inference.py --device cuda --rows 200000 --batch-sizes 256,1024,4096,16384 --half
    .venv/bin/python bench/gpu_inference.py --device cpu --rows 5000 --batch-sizes 64,256,1024
"""
from __future__ import annotations

import argparse
import contextlib
import time

from stage2_inference import N_TABULAR, synthetic_model, synthetic_rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--batch-sizes", default="256,1024,4096")
    ap.add_argument("--half", action="store_true", help="also bf16 and fp16 autocast (CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from botwatch.config import load_config
    from botwatch.models.heavy import HeavyConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here; run with --device cpu")
    conf = load_config("conf/local.yaml")
    cfg = HeavyConfig.from_mapping({**conf.section("heavy"), "device": args.device})
    nbr = [f"nbr_{c}" for c in conf["heavy.neighbor_features"]] + ["nbr_count"]
    pdf = synthetic_rows(args.rows, cfg.max_len, N_TABULAR, nbr)
    base = synthetic_model(cfg, N_TABULAR, nbr)
    variants = {"fp32": (base.to(args.device), None)}
    if args.device == "cpu":
        variants["int8"] = (base.quantize_dynamic(), None)
    elif args.half:
        variants["bf16"] = (base, torch.bfloat16)
        variants["fp16"] = (base, torch.float16)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; {args.rows} rows; max_len {cfg.max_len}")
    print("precision  batch  accounts/s")
    for label, (model, dtype) in variants.items():
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            ctx = (torch.autocast(device_type=args.device, dtype=dtype) if dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                model.predict(pdf.head(min(len(pdf), bs)), batch_size=bs)  # warm-up (kernels, allocator)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model.predict(pdf, batch_size=bs)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                secs = time.perf_counter() - start
            print(f"{label:9s} {bs:6d}  {args.rows / secs:10,.0f}")
    print("load average:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
