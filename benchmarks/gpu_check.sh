#!/usr/bin/env bash
# GPU check (issue 4), for a machine with a CUDA device, nvcc, torch (CUDA build) and nerfacc:
#   1. builds our CUDA hash-grid kernel (JIT, cached) for this GPU's architecture only;
#   2. compares it with the PyTorch reference, forward and backward, and times every backend side by side
#      (benchmarks/hashgrid.py -> benchmarks/results/hashgrid_gpu.json);
#   3. builds nerfacc's CUDA ops and renders with them (occupancy on) and with our own marching (off),
#      checks the two agree on an analytic scene, and times both (benchmarks/render.py -> render_gpu.json).
# Meant to finish in under 5 minutes (the first nerfacc build dominates); each step has its own timeout.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
start=$SECONDS

python - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name())
EOF
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST="$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

echo "== 1. build the CUDA kernel"
timeout 150 python - <<'EOF'
import time
t = time.perf_counter()
from dreamdistill.scene.kernel import kernel_has_cuda, load_kernel
assert load_kernel() is not None, "kernel build failed"
assert kernel_has_cuda(), "kernel built without CUDA (is nvcc / CUDA_HOME found?)"
print(f"built/loaded in {time.perf_counter() - t:.1f}s")
EOF

echo "== 2. hash grid: correctness vs reference, throughput"
timeout 90 python benchmarks/hashgrid.py --device cuda --sizes 65536 262144 1048576

echo "== 3. renderer: nerfacc path vs ours, throughput"
timeout 180 python benchmarks/render.py --device cuda

python - <<'EOF'
import json
from pathlib import Path
results = Path("benchmarks/results")
grid = json.loads((results / "hashgrid_gpu.json").read_text())
render = json.loads((results / "render_gpu.json").read_text())
ok = all(c["passed"] for c in grid["correctness"].values()) and render.get("nerfacc_check", {}).get("passed", False)
print("hash grid correctness:", {k: v["passed"] for k, v in grid["correctness"].items()})
print("nerfacc check:", render.get("nerfacc_check"))
raise SystemExit(0 if ok else 1)
EOF
echo "gpu_check done in $((SECONDS - start))s"
