#!/usr/bin/env bash
# One command for a lent GPU (issue 29): the CUDA paths end to end, everything written to $OUT (or
# the folder given as $1), a Markdown summary printed last. No network: hydra-core, omegaconf and
# albumentations come from a folder of wheels (GPU_WHEELS, default .whl/) when the image lacks them.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
#
# Steps (each bounded, ~8 min on one H100 in all): CUDA tests; img/s of both models at 256 px in fp32,
# bf16, bf16+channels_last, +compile; a 3-epoch ResNet34-UNet run at 256 px with the defaults on the
# shared copy; evaluate of both shipped checkpoints on CUDA (dice_256 to compare with the CPU numbers in
# saved_models/RESULTS.md); a one-process NCCL DDP smoke run. On a machine without CUDA: one line, exit 2.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-outputs/gpu_check}}"
PY="${PYTHON:-python3}"
DATA="${GPU_DATA:-../shared/data/oxford-iiit-pet}"
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is false); run it on a GPU machine" >&2
  exit 2
fi
if ! "$PY" -c "import hydra, omegaconf, albumentations" 2>/dev/null; then
  WHEELS="${GPU_WHEELS:-.whl}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || { echo "gpu_check: cannot install $WHEELS/*.whl" >&2; exit 2; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="src:${PYTHONPATH:-}"
status=0
step() {  # step <name> <timeout s> <command...>: its output in $OUT/<name>.log, its exit code noted
  local name=$1 limit=$2; shift 2
  echo "== $name" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "| $name | $rc |" >>"$OUT/steps.md"
  [ $rc -eq 0 ] || status=1
}
printf '| step | exit code |\n|---|---:|\n' >"$OUT/steps.md"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >"$OUT/device.txt"

step tests_cuda 120 "$PY" -m pytest -q -m "not slow" tests/test_fp16_scaler.py tests/test_runtime.py tests/test_models.py
step speed 180 "$PY" benchmarks/train_speed.py --device cuda --models unet resnet34_unet \
  --variants fp32 bf16 bf16+cl bf16+cl+compile --size 256 --batch-size 16 --steps 10 --repeats 2
step train_3_epochs 240 "$PY" src/train.py model=resnet34_unet data.root="$DATA" data.allow_missing=true \
  data.image_size=256 data.batch_size=16 trainer.epochs=3 trainer.checkpoint.export_dir=null \
  hydra.run.dir="$OUT/train_3_epochs"
for model in unet resnet34_unet; do
  step "evaluate_$model" 60 "$PY" src/evaluate.py checkpoint="saved_models/$model.pth" split=test \
    data.root="$DATA" data.allow_missing=true device=cuda output="$OUT/evaluate_$model.json"
done
step ddp_1_process 120 "$PY" -m torch.distributed.run --nproc_per_node=1 src/train.py debug=tiny \
  trainer.device=cuda hydra.run.dir="$OUT/ddp"

echo "# gpu_check on $(cat "$OUT/device.txt")"
cat "$OUT/steps.md"
grep -h "epoch .*/3 " "$OUT/train_3_epochs/train.log" 2>/dev/null | sed 's/.*INFO\] - /    /'
for model in unet resnet34_unet; do
  [ -f "$OUT/evaluate_$model.json" ] && echo "$model: $(tr -d '\n ' <"$OUT/evaluate_$model.json" | cut -c1-160)"
done
grep -h "^| " "$OUT/speed.log" 2>/dev/null | tail -12
exit $status
