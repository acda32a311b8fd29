#!/bin/bash
# toy-sd's training recipe (assets/toy-sd), resumable: rerun this script after any stop and every stage picks up
# from its last checkpoint (finished stages are skipped). Run it in the background:
#   nohup benchmarks/train_toy_sd.sh > runs/toy-sd.log 2>&1 &
# CPU (2 cores): the data set (30,000 renders at 128 px, 13 minutes on one thread), the VAE on both cores for
# VAE_MINUTES, the latents of LATENTS training images (encoding costs about 0.15 s per image), then the UNet with its text encoder and the decoder-only fine-tuning side by side on one core each for
# UNET_MINUTES (the decoder's training leaves the encoder, and so the UNet's latents, unchanged), then the export.
# A later session (runs/ does not travel): INIT_FROM=assets/toy-sd trains the shipped UNet and text encoder further on
# DATASET fresh renders (SEED picks them; the first session used seed 0) encoded by the shipped VAE, which is kept
# as it is with its scaling factor (vae_steps=0), on both cores for UNET_MINUTES, and exports to WORK/toy-sd (copy
# it over assets/toy-sd once benchmarks/teacher_quality.py says it is better).
# GPU: DEVICE=cuda trains the same stages one after another with larger batches and no time caps.
set -euo pipefail
cd "$(dirname "$0")/.."
VAE_MINUTES=${VAE_MINUTES:-40} UNET_MINUTES=${UNET_MINUTES:-65} LATENTS=${LATENTS:-6000}
if [ "${DEVICE:-cpu}" = cuda ]; then
  dreamdistill train-teacher --format sd --device cuda --set vae_batch_size=64 --set vae_crop=128 \
    --set unet_batch_size=256 --set unet_learning_rate=4e-4 --set vae_steps=30000 --set unet_steps=40000 \
    --set decoder_steps=10000
  exit 0
fi
export OMP_WAIT_POLICY=PASSIVE
if [ -n "${INIT_FROM:-}" ]; then
  WORK=${WORK:-runs/toy-sd-more}
  MORE=(--work-dir "$WORK" --out "$WORK/toy-sd" --dataset-size "${DATASET:-8256}" --set init_from="$INIT_FROM"
        --set vae_steps=0 --set decoder_steps=0 --set seed="${SEED:-1}")
  dreamdistill train-teacher --format sd --stage data --threads 1 "${MORE[@]}"
  dreamdistill train-teacher --format sd --stage vae --threads 2 "${MORE[@]}"
  dreamdistill train-teacher --format sd --stage latents --threads 2 "${MORE[@]}"
  dreamdistill train-teacher --format sd --stage unet --threads 2 --set unet_minutes="$UNET_MINUTES" "${MORE[@]}"
  dreamdistill train-teacher --format sd --stage export --threads 2 "${MORE[@]}"
  exit 0
fi
dreamdistill train-teacher --format sd --stage data --threads 1
dreamdistill train-teacher --format sd --stage vae --threads 2 --set vae_minutes="$VAE_MINUTES"
dreamdistill train-teacher --format sd --stage latents --threads 2 --set latent_count="$LATENTS"
dreamdistill train-teacher --format sd --stage unet --threads 1 --set unet_minutes="$UNET_MINUTES" \
  --set latent_count="$LATENTS" &
UNET=$!
dreamdistill train-teacher --format sd --stage decoder --threads 1 --set decoder_minutes="$UNET_MINUTES"
wait $UNET
dreamdistill train-teacher --format sd --stage export --threads 2
