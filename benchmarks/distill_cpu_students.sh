#!/bin/bash
# The CPU-sized students shipped in assets/ (toy-pd4, toy-dmd, toy-sid) and behind benchmarks/results/distill.json,
# then the benchmark. The presets in configs/distill-*.yaml are sized for a GPU; these shrink them: batch 8-16, a
# few hundred steps, and PD chains from the 16-step teacher (16 -> 8 -> 4) instead of 64. Every command resumes when
# rerun. The shipped students took about 75 minutes on one thread of a shared 2-core machine (training minutes in each
# folder's dreamdistill_teacher.json; DMD's teacher rollouts, 8.5 minutes more, are not in them).
# STEPS=2 doubles every step count (the recipe of the earlier table: PD 300 per phase, DMD 600) when time allows.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE
COMMON="--set loop.threads=1 --set loop.warmup_steps=20 --set loop.checkpoint_every=50"
X=${STEPS:-1}
dreamdistill distill pd --steps $((150 * X)) --batch-size 16 --set pd.teacher_steps=16 --set data.size=4096 \
  --set loop.learning_rate=5e-5 $COMMON
# DMD: on a GPU the first command (6 minutes on one H100, 2,202 steps, batch 32, 2,048 rollouts); on a CPU the
# second (300 steps, batch 8, 512 rollouts of the 16-step CFG teacher for the regression loss).
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  dreamdistill distill dmd --steps 20000 --batch-size 32 --set dmd.fake_steps=2 --set data.size=2048 \
    --set data.rollout_steps=16 --set data.generate_batch=256 --set loop.learning_rate=2e-5 \
    --set dmd.fake_learning_rate=1e-4 --set loop.warmup_steps=20 --set loop.checkpoint_every=1000 \
    --set loop.max_minutes=6
else
  dreamdistill distill dmd --steps $((300 * X)) --batch-size 8 --set dmd.fake_steps=2 --set data.size=512 \
    --set data.rollout_steps=16 --set data.generate_batch=64 --set loop.learning_rate=2e-5 \
    --set dmd.fake_learning_rate=1e-4 $COMMON
fi
# SiD at DMD's budget: the same steps, batch and generator learning rate, and at most DMD's training minutes (one
# fake update per generator update, as in the SiD paper, against DMD's two; the fake at the generator's learning rate,
# as in the SiD code; no teacher rollouts, no regression loss). The preset's α = 1, guided fake and Adam β1 = 0.
MINUTES=$(python -c "from dreamdistill.distill.student import training_minutes as t; print(t('students/dmd-work')['dmd'])")
dreamdistill distill sid --steps $((300 * X)) --batch-size 8 --set loop.learning_rate=2e-5 \
  --set sid.fake_learning_rate=2e-5 --set loop.max_minutes="$MINUTES" $COMMON
python benchmarks/ship_students.py  # students/{pd,dmd,sid} -> assets/toy-{pd4,dmd,sid} (fp16)
python benchmarks/distill.py --students assets --num 256 --batch 64 --device cpu
# Not shipped, measured with --students students when trained (the earlier table's CPU recipes):
#   dreamdistill distill guided --steps 300 --batch-size 16 --set guided.stage1_steps=400 --set pd.teacher_steps=16 \
#     --set data.size=4096 --set loop.learning_rate=5e-5 $COMMON
#   dreamdistill distill kd --steps 150 --batch-size 32 --set data.size=512 --set data.rollout_steps=16 \
#     --set data.generate_batch=64 --set loop.learning_rate=1e-4 $COMMON
#   (copy students/dmd-work/rollouts-512-*.pt into students/kd-work/ first to reuse DMD's rollouts)
