#!/usr/bin/env bash
# Every GPU check of fl in one command, for a person (or a CI runner) with a CUDA GPU. No network:
# the model folder and the GLUE folder come from the arguments.
#
#   bash bench/gpu_check.sh <MiniLM folder> <GLUE folder> [out folder]
#   bash bench/gpu_check.sh /tmp/minilm .gpu/glue "$OUT"          # after `python3 .gpu/unpack.py`
#
# 1. pytest -m cuda: simulation == torchrun on one GPU, the NCCL relay (client rank owns the GPU,
#    rank 0 on the CPU) against gloo, both KD placements, kill + resume bit-identical on the GPU and
#    resumed on the CPU, the layout recorded.
# 2. python -m bench.gpu: fl vs plain examples/s, round time for 1/2/4 client ranks per GPU, collective
#    bandwidth per backend, peak GPU memory per rank, a BERT-base-sized model; report in <out>/reports.
# Logs and reports go to <out> (default ./gpu-check); a summary is printed at the end.
# Needs fl's dependencies in the GPU's python, `datasets` included: an offline image without it can
# install the wheels of datasets, dill and multiprocess (pip download them where there is a network).
set -uo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash bench/gpu_check.sh <model folder> <GLUE folder> [out folder]" >&2
  exit 2
fi
model=$1
glue=$2
out=${3:-gpu-check}
mkdir -p "$out/reports"
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$root"
python - <<'PY' || { echo "error: no CUDA device is visible; run this on a GPU machine" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print("GPU:", torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "| torch", torch.__version__)
PY
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda.py tests/test_layout.py > "$out/pytest-cuda.log" 2>&1
tests=$?
python -m bench.gpu --model "$model" --data-dir "$glue" --out "$out/reports" > "$out/bench-gpu.log" 2>&1
bench=$?
echo "== summary =="
tail -n 3 "$out/pytest-cuda.log"
echo "pytest -m cuda exit code: $tests (log: $out/pytest-cuda.log)"
if [[ -f "$out/reports/gpu.md" ]]; then
  sed -n '/^| model/,/^$/p' "$out/reports/gpu.md"
else
  tail -n 20 "$out/bench-gpu.log"
fi
echo "bench.gpu exit code: $bench (report: $out/reports/gpu.md, log: $out/bench-gpu.log)"
exit $(( tests != 0 || bench != 0 ))
