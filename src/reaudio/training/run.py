"""Build a training run from command-line arguments (``reaudio train`` and ``python -m reaudio.training``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from reaudio.models.configs import load_config

from .tasks import LDMTask, VAETask, VocoderTask
from .trainer import TrainConfig, Trainer, training_device

log = logging.getLogger(__name__)


def _check_inputs(args: argparse.Namespace) -> None:
    payload, payload_out = getattr(args, "payload", None), getattr(args, "payload_out", None)
    if (payload or payload_out) and args.model != "ldm":
        raise ValueError("--payload and --payload-out are for train ldm")
    if payload and payload_out:
        raise ValueError("--payload trains from a payload, --payload-out writes one; pass one of them")
    if payload is None and (args.config is None or args.data is None):
        raise ValueError(f"train {args.model} needs --config and --data (train ldm: or --payload FILE)")
    if payload_out is None and args.out is None:
        raise ValueError("train needs --out, the run folder")


def train_from_args(args: argparse.Namespace) -> dict:
    _check_inputs(args)
    family = _with_prediction(load_config(args.config), args) if args.config else None
    ema = args.ema_decay if args.ema_decay is not None else (0.999 if args.model == "ldm" else 0.0)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        lr_decay=args.lr_decay,
        final_lr_fraction=args.final_lr_fraction,
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
        time_limit_minutes=args.time_limit,
    )
    if args.model == "clap":
        from .clap_task import CLAPTask

        task = CLAPTask(family, args.data, init=args.clap)
    elif args.model == "vae":
        task = VAETask(
            family,
            args.data,
            frozen_decoder=args.frozen_decoder,
            frozen_encoder=args.frozen_encoder,
            adversarial_weight=args.adversarial_weight,
        )
    elif args.model == "vocoder":
        task = VocoderTask(
            family, args.data, init=args.vocoder, decoded_by=args.decoded_by, train_stages=args.train_stages
        )
    elif getattr(args, "payload", None) is not None:
        from .ldm_payload import PayloadLDMTask

        given = [f"--{k}" for k in ("data", "vae", "clap", "database", "vocoder") if getattr(args, k, None)]
        if given:
            raise ValueError(f"--payload holds what {', '.join(given)} would give; pass one or the other")
        task = PayloadLDMTask(family, args.payload, unet=args.unet)
        task.family = family = _with_prediction(task.family, args)
    else:
        task = _corpus_ldm_task(args, family)
        family = task.family
        if getattr(args, "payload_out", None) is not None:
            return _write_payload(task, cfg, args.payload_out, args.payload_precision)
    task.progress = not getattr(args, "quiet", False)
    resolved = {
        "model": args.model,
        "family": family.to_dict(),
        "data": str(args.data or args.payload),
        "inputs": {
            k: str(getattr(args, k))
            for k in ("vae", "clap", "database", "vocoder", "unet", "frozen_decoder", "frozen_encoder", "decoded_by")
            if getattr(args, k, None)
        },
    }
    if getattr(args, "train_stages", None) is not None:
        resolved["train_stages"] = args.train_stages
    return Trainer(task, args.out, cfg, resolved).run()


def _with_prediction(family, args):
    if not getattr(args, "prediction", None):
        return family
    return replace(family, schedule=replace(family.schedule, prediction_type=args.prediction))


def _corpus_ldm_task(args, family) -> LDMTask:
    if args.vae is None or args.clap is None:
        raise ValueError("train ldm needs --vae and --clap checkpoint folders (and --database when k > 0)")
    family = with_checkpoint_clap(family, args.clap)
    return LDMTask(family, args.data, args.vae, args.clap, args.database, args.vocoder, unet=args.unet)


def _write_payload(task: LDMTask, cfg: TrainConfig, out, precision: str) -> dict:
    """Set ``task`` up as a run would (same seed, device, loudness), then write its payload instead of training."""
    import types

    import torch

    from .ldm_payload import write_ldm_payload

    torch.manual_seed(cfg.seed)
    setup = types.SimpleNamespace(cfg=cfg, device=training_device(cfg.device), rank=0, world=1, resolved={})
    task.setup(setup)
    meta = write_ldm_payload(task, setup, out, precision)
    size = out.stat().st_size
    return {"payload": str(out), "clips": len(meta["clips"]), "precision": precision, "mib": round(size / 2**20, 1)}


def with_checkpoint_clap(family, clap_folder):
    """``family`` conditioned on an imported LAION-CLAP checkpoint: its clap section is the
    checkpoint's (sizes, tokenizer), and the UNet's FiLM and context widths follow it (they
    must equal the CLAP's anyway). Our own CLAP's config is kept as the named config states it."""
    from reaudio.models.checkpoint import read_checkpoint_config
    from reaudio.models.unet import ContextConfig

    kind, clap_cfg, _ = read_checkpoint_config(clap_folder)
    if kind != "laion-clap" or family.clap == clap_cfg:
        return family
    widths = {"retrieved_text": clap_cfg.text.hidden_size, "retrieved_audio": clap_cfg.audio.width}
    unet = replace(
        family.unet,
        film_dim=clap_cfg.embed_dim if family.unet.film_dim else 0,
        contexts=tuple(ContextConfig(c.name, widths[c.name]) for c in family.unet.contexts),
    )
    log.info(
        "LAION-CLAP %s: FiLM %d-d, contexts %s", clap_folder, unet.film_dim, {c.name: c.dim for c in unet.contexts}
    )
    return replace(family, clap=clap_cfg, unet=unet)
