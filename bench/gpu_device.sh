#!/usr/bin/env bash
# The GPU machine's one prepared run (device tool): stage 2's worker tests, the inference sweep
# and the training check, each log under $OUT. Uses the machine's own python3 and torch; no Spark.
set -uo pipefail
export PYTHONPATH=lib:bench PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())" \
    2>&1 | tee -a "$OUT/gpu.txt"
python3 -m pytest --noconftest -q -p no:cacheprovider tests/test_stage2_worker.py 2>&1 | tail -5 | tee "$OUT/pytest.txt"
# One member (--ensemble 1), as the figures in BENCHMARKS.md were taken; the shipped 4-member model after it.
timeout 300 python3 bench/gpu_inference.py --device cuda --ensemble 1 --rows 200000 --batch-sizes 1024,4096,16384,65536 \
    --half --processes 1,4,8 \
    2>&1 | tee "$OUT/gpu_inference.txt"
timeout 120 python3 bench/gpu_inference.py --device cuda --rows 100000 --batch-sizes 16384 --half \
    2>&1 | tee "$OUT/gpu_inference_ensemble.txt"
timeout 200 python3 bench/gpu_train.py --ensemble 1 --rows 30000 --epochs 8 --cpu-epochs 1 2>&1 | tee "$OUT/gpu_train.txt"
timeout 60 python3 bench/gpu_inference.py --device cpu --ensemble 1 --rows 20000 --batch-sizes 1024 --threads 16 \
    2>&1 | tee "$OUT/cpu_inference.txt"
