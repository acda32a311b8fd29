#!/bin/bash
# The CPU-sized students behind benchmarks/results/distill.json (and a GPU recipe for DMD)
# (2 shared cores, about 70 minutes in all), then the benchmark. The presets in configs/distill-*.yaml are sized for a GPU; these shrink them:
# batch 8-32, a few hundred steps per phase, and PD chains from the 16-step teacher (16 -> 8 -> 4)
# instead of 64. Every command resumes when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE
COMMON="--set loop.threads=1 --set loop.warmup_steps=20 --set loop.checkpoint_every=50"
dreamdistill distill pd --steps 300 --batch-size 16 --set pd.teacher_steps=16 --set data.size=4096 \
  --set loop.learning_rate=5e-5 $COMMON
dreamdistill distill guided --steps 300 --batch-size 16 --set guided.stage1_steps=400 --set pd.teacher_steps=16 \
  --set data.size=4096 --set loop.learning_rate=5e-5 $COMMON
# DMD: the committed table's dmd row is the GPU recipe (6 minutes on one H100, 2,202 steps, batch 32, 2,048
# rollouts), the first command; without a GPU the second (600 steps, batch 8: FD 2.10x teacher-64) is what fits.
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  dreamdistill distill dmd --steps 20000 --batch-size 32 --set dmd.fake_steps=2 --set data.size=2048 \
    --set data.rollout_steps=16 --set data.generate_batch=256 --set loop.learning_rate=2e-5 \
    --set dmd.fake_learning_rate=1e-4 --set loop.warmup_steps=20 --set loop.checkpoint_every=1000 \
    --set loop.max_minutes=6
else
  dreamdistill distill dmd --steps 600 --batch-size 8 --set dmd.fake_steps=2 --set data.size=512 \
    --set data.rollout_steps=16 --set data.generate_batch=64 --set loop.learning_rate=2e-5 \
    --set dmd.fake_learning_rate=1e-4 $COMMON
fi
# SiD at the CPU DMD's budget: the same steps, batch and learning rates (one fake update per generator update, as
# in the SiD paper, against DMD's two; no teacher rollouts).
dreamdistill distill sid --steps 600 --batch-size 8 --set loop.learning_rate=2e-5 --set sid.fake_learning_rate=1e-4 \
  $COMMON
mkdir -p students/kd-work  # reuse the CPU DMD's 512 rollouts when present (KD computes the same ones otherwise)
cp -n students/dmd-work/rollouts-512-*.pt students/kd-work/ 2>/dev/null || true
dreamdistill distill kd --steps 150 --batch-size 32 --set data.size=512 --set data.rollout_steps=16 \
  --set data.generate_batch=64 --set loop.learning_rate=1e-4 $COMMON
python benchmarks/ship_students.py  # students/{pd,dmd,sid} -> assets/toy-{pd4,dmd,sid} (fp16)
python benchmarks/distill.py --students students --num 256 --batch 64 --device cpu
