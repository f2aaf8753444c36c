#!/usr/bin/env bash
# Run on a lent GPU machine (see gpu_prepare.sh): the CUDA tests, then the GPU benchmarks of
# issue 12, results into $OUT (or ./gpu-out). Ends well inside a 10-minute call on an H100.
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
# the TorchCodec wheel must load with this machine's torch; if it does not, torchvision decodes
python3 -c "import torchcodec.decoders" 2>/dev/null || { echo "TorchCodec does not load here: using torchvision" | tee "$OUT/torchcodec.txt"; rm -rf /tmp/site/torchcodec*; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -rs tests/test_accel.py tests/test_decode.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
python3 benchmarks/scale.py device --full --data .data/cifar10-jpg.tar.gz --out "$OUT/scale_device_gpu.json" 2>&1 | tee "$OUT/device.txt"
python3 benchmarks/scale.py precision --device cuda --data .data/cifar10-jpg.tar.gz --out "$OUT/precision_gpu.json" 2>&1 | tee "$OUT/precision.txt"
python3 benchmarks/scan.py --device cuda --batch-size 128 --precision bf16 --out "$OUT/scan_gpu_bf16.json" 2>&1 | tail -6 | tee "$OUT/scan.txt"
