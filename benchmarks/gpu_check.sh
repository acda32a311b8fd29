#!/usr/bin/env bash
# GPU check (issue 4), for a machine with a CUDA device, nvcc, torch (CUDA build) and nerfacc:
#   1. builds our CUDA hash-grid kernel (JIT, cached) for this GPU's architecture only;
#   2. runs the CUDA tests (the kernel against the PyTorch reference, forward and backward), then compares and
#      times every backend side by side (benchmarks/hashgrid.py -> benchmarks/results/hashgrid_gpu.json);
#   3. builds nerfacc's CUDA ops and renders with them (occupancy on) and with our own marching (off),
#      checks the two agree on an analytic scene, and times both (benchmarks/render.py -> render_gpu.json);
#   4. runs the default `dreamdistill "a red chair"` on the GPU and keeps its metrics (red_chair_gpu.json).
# Meant to finish in under 6 minutes (the first nerfacc build dominates); each step has its own timeout.
#   bash benchmarks/gpu_check.sh
set -uo pipefail  # a failed step is reported and the others still run; the exit status says if any failed
failed=0
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
PYTHON="${PYTHON:-python3}"
start=$SECONDS

"$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_check.sh needs a CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name())
EOF
[[ $? -eq 0 ]] || exit 1
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST="$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  export TORCH_CUDA_ARCH_LIST
fi
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

echo "== 1. build the CUDA kernel"
timeout 150 "$PYTHON" - <<'EOF' || failed=1
import time
t = time.perf_counter()
from dreamdistill.scene.kernel import kernel_has_cuda, load_kernel
assert load_kernel() is not None, "kernel build failed"
assert kernel_has_cuda(), "kernel built without CUDA (is nvcc / CUDA_HOME found?)"
print(f"built/loaded in {time.perf_counter() - t:.1f}s")
EOF

echo "== 2. hash grid: CUDA tests, correctness vs reference, throughput"
timeout 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_hashgrid.py || failed=1
timeout 90 "$PYTHON" benchmarks/hashgrid.py --device cuda --sizes 65536 262144 1048576 || failed=1

echo "== 3. renderer: nerfacc path vs ours, throughput"
timeout 180 "$PYTHON" benchmarks/render.py --device cuda || failed=1

echo "== 4. the default text-to-3D run on the GPU"
runs="$(mktemp -d)"
timeout 240 "$PYTHON" -m dreamdistill "a red chair" --device cuda --out "$runs" || failed=1
"$PYTHON" - "$runs" <<'EOF' || failed=1
import json, sys
from pathlib import Path
import torch
from dreamdistill.fileio import write_json_atomic
metrics = json.loads(next(Path(sys.argv[1]).glob("*/metrics.json")).read_text())
metrics["device"] = torch.cuda.get_device_name()
metrics["command"] = 'dreamdistill "a red chair" --device cuda'
write_json_atomic(Path("benchmarks/results/red_chair_gpu.json"), metrics)
print("red chair on the GPU:", {k: metrics.get(k) for k in ("seconds", "steps", "r_precision", "view_consistency")})
EOF

"$PYTHON" - <<'EOF'
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
[[ $? -eq 0 ]] || failed=1
echo "gpu_check done in $((SECONDS - start))s; $([[ $failed -eq 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
exit "$failed"
