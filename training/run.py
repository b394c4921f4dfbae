"""Build a training run from command-line arguments (``reaudio train`` and ``python -m reaudio.training``)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from reaudio.models.configs import load_config

from .tasks import LDMTask, VAETask, VocoderTask
from .trainer import TrainConfig, Trainer


def train_from_args(args: argparse.Namespace) -> dict:
    family = load_config(args.config)
    if getattr(args, "prediction", None):
        family = replace(family, schedule=replace(family.schedule, prediction_type=args.prediction))
    ema = args.ema_decay if args.ema_decay is not None else (0.999 if args.model == "ldm" else 0.0)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        ema_decay=ema,
        seed=args.seed,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        cfg_dropout=args.cfg_dropout,
        film_dropout=args.film_dropout,
        context_dropout=args.context_dropout,
        min_snr_gamma=args.min_snr_gamma,
        loudness_db=args.loudness_db,
        kl_weight=args.kl_weight,
        discriminator_width=args.discriminator_width,
        segment_seconds=args.segment_seconds,
    )
    if args.model == "clap":
        from .clap_task import CLAPTask

        task = CLAPTask(family, args.data, init=args.clap)
    elif args.model == "vae":
        task = VAETask(family, args.data)
    elif args.model == "vocoder":
        task = VocoderTask(family, args.data, init=args.vocoder)
    else:
        if args.vae is None or args.clap is None:
            raise ValueError("train ldm needs --vae and --clap checkpoint folders (and --database when k > 0)")
        task = LDMTask(family, args.data, args.vae, args.clap, args.database, args.vocoder)
    task.progress = not getattr(args, "quiet", False)
    resolved = {"model": args.model, "family": family.to_dict(), "data": str(args.data),
                "inputs": {k: str(getattr(args, k)) for k in ("vae", "clap", "database", "vocoder")
                           if getattr(args, k, None)}}  # fmt: skip
    return Trainer(task, args.out, cfg, resolved).run()
