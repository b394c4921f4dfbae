#!/usr/bin/env bash
# Train the default sfx-small model on the Debian sound-effect corpus, end to end.
# Every step resumes: rerun the script after an interruption and finished work is skipped.
#
#   scripts/train_default_model.sh CORPUS_DIR RUNS_DIR
#
# Step counts come from the environment (the defaults are the CPU run of the shipped model;
# on a GPU raise them and add DEVICE=cuda):
#   CLAP_STEPS VAE_STEPS DEC_L1_STEPS DEC_ADV_STEPS DEC_ADV_ROUNDS LDM_STEPS LDM_TUNE_STEPS LDM_COSINE BWE_STEPS
#   BATCH LDM_BATCH
#   DEVICE LOUDNESS PREDICTION
# After the VAE, its decoder is trained again on the frozen encoder's latents: L1 first, then rounds
# against a log-mel patch discriminator (L1 alone decodes smeared spectra the vocoder renders as hiss;
# see docs/default_model.md "The decoder was the limit"). The latent space does not move, so the LDM
# trains on the final VAE's latents either way.
# Training audio is loudness-normalised (LOUDNESS LUFS, peaks <= -1 dBFS) for the VAE and the LDM;
# the LDM drops FiLM and retrieved contexts independently (so k = 0 and "neighbours only" are
# conditions it has seen), predicts v (PREDICTION=epsilon for the noise) and weights its loss with
# min-SNR-gamma 5. It trains at lr 2e-4 for LDM_STEPS, then continues from that UNet at lr 1e-4 for
# LDM_TUNE_STEPS (train ldm --unet; 0 skips it), then runs the cosine phases of LDM_COSINE in turn
# ("STEPS:PEAK_LR" each, every one continuing from the last UNet with --lr-decay cosine down to 5 %
# of its peak; empty skips them), as the shipped model did. The band extension (44.1-kHz output, the
# band above 8 kHz rebuilt from the octave under it at levels learned from full-band clips) trains
# BWE_STEPS on the corpus's full-band copies, hearing the final VAE's round trip on half its steps.
# The export fits the decoder's log-mel calibration (per-band level and sharpening,
# docs/default_model.md) on training clips, brings the vocoder's audio back to the mel it was given
# (mel matching: no training) and ends the decoder with the band extension.
set -euo pipefail
CORPUS=${1:?corpus folder (reaudio data build-sfx --out CORPUS)}
RUNS=${2:?folder for the training runs}
CONFIG=${CONFIG:-sfx-small}
DEVICE=${DEVICE:-auto}
CLAP_STEPS=${CLAP_STEPS:-2000}
VAE_STEPS=${VAE_STEPS:-2500}
DEC_L1_STEPS=${DEC_L1_STEPS:-1500}
DEC_ADV_STEPS=${DEC_ADV_STEPS:-2000}
DEC_ADV_ROUNDS=${DEC_ADV_ROUNDS:-3}
LDM_STEPS=${LDM_STEPS:-3500}
LDM_TUNE_STEPS=${LDM_TUNE_STEPS:-6000}
LDM_COSINE=${LDM_COSINE-4500:1e-4 4500:7e-5}
BATCH=${BATCH:-16}
LDM_BATCH=${LDM_BATCH:-8}
LOUDNESS=${LOUDNESS:--20}
PREDICTION=${PREDICTION:-v_prediction}
BWE_STEPS=${BWE_STEPS:-6000}
mkdir -p "$RUNS"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

reaudio data build-sfx --out "$CORPUS" --config "$CONFIG"
reaudio data stats "$CORPUS/manifest.jsonl" --out "$RUNS/stats"

stamp "CLAP ($CLAP_STEPS steps)"
reaudio train clap --config "$CONFIG" --data "$CORPUS/manifest.jsonl" --out "$RUNS/clap" \
    --steps "$CLAP_STEPS" --batch-size "$BATCH" --lr 3e-4 --device "$DEVICE" --checkpoint-every 250

stamp "VAE ($VAE_STEPS steps)"
reaudio train vae --config "$CONFIG" --data "$CORPUS/manifest.jsonl" --out "$RUNS/vae" \
    --steps "$VAE_STEPS" --batch-size 8 --lr 2e-4 --segment-seconds 1.5 --device "$DEVICE" --checkpoint-every 200 \
    --loudness-db "$LOUDNESS"

decoder() {  # decoder RUN SOURCE STEPS SEED [extra train flags]
    local run=$1 source=$2 steps=$3 seed=$4
    shift 4
    reaudio train vae --config "$CONFIG" --data "$CORPUS/manifest.jsonl" --out "$RUNS/$run" \
        --frozen-encoder "$source" --steps "$steps" --seed "$seed" --batch-size 8 --lr 1e-4 \
        --segment-seconds 1.5 --loudness-db "$LOUDNESS" --device "$DEVICE" --checkpoint-every 250 "$@"
}
stamp "VAE decoder on the frozen encoder: L1 ($DEC_L1_STEPS steps)"
decoder decoder-l1 "$RUNS/vae/final/vae" "$DEC_L1_STEPS" 0
VAE_FINAL="$RUNS/decoder-l1/final/vae"
for round in $(seq 1 "$DEC_ADV_ROUNDS"); do
    stamp "VAE decoder, adversarial round $round of $DEC_ADV_ROUNDS ($DEC_ADV_STEPS steps)"
    decoder "decoder-adv$round" "$VAE_FINAL" "$DEC_ADV_STEPS" "$round" --adversarial-weight 0.1
    VAE_FINAL="$RUNS/decoder-adv$round/final/vae"
done

stamp "retrieval database over the training split"
[ -d "$RUNS/db" ] || reaudio db build --clap "$RUNS/clap/final/clap" --config "$CONFIG" \
    --data "$CORPUS/manifest.jsonl" --out "$RUNS/db"

ldm() {  # ldm RUN STEPS LR [extra train flags]
    local run=$1 steps=$2 lr=$3
    shift 3
    reaudio train ldm --config "$CONFIG" --data "$CORPUS/manifest.jsonl" --out "$RUNS/$run" \
        --steps "$steps" --batch-size "$LDM_BATCH" --lr "$lr" --device "$DEVICE" --checkpoint-every 250 \
        --vae "$VAE_FINAL" --clap "$RUNS/clap/final/clap" --database "$RUNS/db" --vocoder universal \
        --loudness-db "$LOUDNESS" --cfg-dropout 0.1 --film-dropout 0.1 --context-dropout 0.1 --min-snr-gamma 5 \
        --prediction "$PREDICTION" "$@"
}
stamp "LDM ($LDM_STEPS steps; the vocoder is the universal HiFi-GAN)"
ldm ldm "$LDM_STEPS" 2e-4
LDM_FINAL="$RUNS/ldm/final"
if [ "$LDM_TUNE_STEPS" -gt 0 ]; then
    stamp "LDM continued at lr 1e-4 ($LDM_TUNE_STEPS steps)"
    ldm ldm-tuned "$LDM_TUNE_STEPS" 1e-4 --unet "$LDM_FINAL/unet" --seed 7
    LDM_FINAL="$RUNS/ldm-tuned/final"
fi
phase=0
for cosine in $LDM_COSINE; do
    phase=$((phase + 1))
    stamp "LDM cosine phase $phase (${cosine%%:*} steps from lr ${cosine##*:})"
    ldm "ldm-cosine$phase" "${cosine%%:*}" "${cosine##*:}" --unet "$LDM_FINAL/unet" --seed $((10 + phase)) \
        --lr-decay cosine --final-lr-fraction 0.05
    LDM_FINAL="$RUNS/ldm-cosine$phase/final"
done

stamp "band extension ($BWE_STEPS steps on the full-band copies)"
reaudio train band-extension --config "$CONFIG" --data "$CORPUS/manifest.jsonl" --out "$RUNS/band-extension" \
    --steps "$BWE_STEPS" --batch-size 32 --lr 1e-3 --lr-decay cosine --final-lr-fraction 0.05 --warmup-steps 300 \
    --loudness-db "$LOUDNESS" --decoded-by "$VAE_FINAL" --device "$DEVICE" --checkpoint-every 2000

stamp "export (with the decoder's log-mel calibration fitted on training clips, mel matching and the band extension)"
[ -d "$RUNS/bundle" ] || reaudio export "$LDM_FINAL" --out "$RUNS/bundle" --database "$RUNS/db" \
    --calibrate-decoder "$CORPUS/manifest.jsonl" --mel-matching \
    --band-extension "$RUNS/band-extension/final/band_extension"
stamp "done: $RUNS/bundle"
