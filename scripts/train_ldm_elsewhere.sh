#!/usr/bin/env bash
# Continue the default model's LDM on a faster machine (a GPU), from one precomputed file.
#
#   scripts/train_ldm_elsewhere.sh payload CORPUS_DIR WORK_DIR   # where the corpus is: unpack + payload
#   scripts/train_ldm_elsewhere.sh train WORK_DIR                # on the fast machine: repository + WORK_DIR/payload.npz (+ unet/)
#   scripts/train_ldm_elsewhere.sh pack WORK_DIR [PACK]          # back home: the trained UNet into the pack
#
# `payload` writes what every LDM step reads (VAE posteriors, FiLM embeddings, neighbour tokens;
# about 50 MB) with the pack's own encoder, CLAP and database, and the pack's UNet as a starting
# point (WORK_DIR/base/unet). `train` needs neither the corpus nor the frozen models, only torch
# and this repository installed (`pip install -e .[train]`). Its flags are the shipped model's
# recipe (docs/default_model.md "Training"); the environment sets the budget:
#   STEPS (20000) BATCH (64) LR (1e-4, cosine down to 5 %) SEED (21) DEVICE (cuda) CONFIG (the pack's
#   family; another UNet width is allowed, other inputs are not) FROM_SCRATCH (1: do not start from
#   the pack's UNet) TIME_LIMIT (minutes of training per call, 0: none; a call that runs out saves a
#   checkpoint and exits with status 3, and the same call again continues on the same lr curve —
#   for machines lent by the hour: bring WORK_DIR/run back between calls).
# Each step resumes: rerun after an interruption.
set -euo pipefail
action=${1:?payload|train|pack}
case "$action" in
payload)
    CORPUS=${2:?corpus folder (reaudio data build-sfx --out CORPUS)}
    WORK=${3:?work folder}
    mkdir -p "$WORK"
    [ -f "$WORK/base/family.json" ] || reaudio default-model unpack "$WORK/base"
    B="$WORK/base"
    [ -f "$WORK/payload.npz" ] || reaudio train ldm --config "$B/family.json" --data "$CORPUS/manifest.jsonl" \
        --vae "$B/vae" --clap "$B/clap" --database "$B/db" --loudness-db -20 --payload-out "$WORK/payload.npz"
    echo "carry $WORK/payload.npz and $B/unet to the training machine"
    ;;
train)
    WORK=${2:?work folder holding payload.npz}
    start=(--unet "$WORK/base/unet")
    [ "${FROM_SCRATCH:-0}" = 1 ] && start=()
    config=()
    [ -n "${CONFIG:-}" ] && config=(--config "$CONFIG")
    reaudio train ldm --payload "$WORK/payload.npz" "${config[@]}" "${start[@]}" --out "$WORK/run" \
        --steps "${STEPS:-20000}" --batch-size "${BATCH:-64}" --lr "${LR:-1e-4}" --warmup-steps 200 \
        --lr-decay cosine --final-lr-fraction 0.05 --seed "${SEED:-21}" --device "${DEVICE:-cuda}" \
        --loudness-db -20 --cfg-dropout 0.1 --film-dropout 0.1 --context-dropout 0.1 --min-snr-gamma 5 \
        --checkpoint-every 500 --time-limit "${TIME_LIMIT:-0}"
    echo "bring $WORK/run/final back"
    ;;
pack)
    WORK=${2:?work folder holding run/final}
    reaudio default-model add-unet "$WORK/run/final/unet" ${3:+--pack "$3"}
    echo "score it before shipping: reaudio default-model assemble --force, then reaudio eval on that bundle (docs/default_model.md)"
    ;;
*)
    echo "unknown action $action (payload, train or pack)" >&2
    exit 2
    ;;
esac
