"""A training run as one dataclass (:class:`TrainJob`) and the one function that runs it (:func:`train`);
``reaudio train`` builds the first from its flags."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from reaudio.models.configs import load_config

from .tasks import LDMTask, VAETask, VocoderTask
from .trainer import TrainConfig, Trainer, training_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """One ``reaudio train`` run: what to train, from what, into which folder, and how.

    Attributes:
        model: "clap", "vae", "vocoder", "band-extension" or "ldm".
        out: the run folder (checkpoints, ``final/``); a rerun resumes.
        train: the optimisation settings (:class:`TrainConfig`).
        config: the family config, a name or a JSON file (ldm from a payload: the payload's).
        data: the corpus manifest (not with ``payload``).
        prediction: override the config's prediction type ("epsilon" or "v_prediction").
        vae, clap, database, vocoder, unet: checkpoint folders the run starts from or conditions on.
        frozen_decoder, frozen_encoder, adversarial_weight: VAE runs against a pack's frozen half.
        decoded_by, train_stages: a vocoder fine-tuned on a VAE's (or pack's) decoded mels, its last stages;
            a band extension that hears those mels on half its steps.
        payload: train the LDM from this file alone; payload_out: write that file instead of training,
            at ``payload_precision``.
        progress: show progress bars.
    """

    model: str
    out: Path | None
    train: TrainConfig
    config: str | None = None
    data: Path | None = None
    prediction: str | None = None
    vae: Path | None = None
    clap: Path | None = None
    database: Path | None = None
    vocoder: str | None = None
    unet: Path | None = None
    frozen_decoder: Path | None = None
    frozen_encoder: Path | None = None
    adversarial_weight: float = 0.0
    decoded_by: Path | None = None
    train_stages: int | None = None
    payload: Path | None = None
    payload_out: Path | None = None
    payload_precision: str = "fp16"
    progress: bool = True


def _check_inputs(job: TrainJob) -> None:
    if (job.payload or job.payload_out) and job.model != "ldm":
        raise ValueError("--payload and --payload-out are for train ldm")
    if job.payload and job.payload_out:
        raise ValueError("--payload trains from a payload, --payload-out writes one; pass one of them")
    if job.payload is None and (job.config is None or job.data is None):
        raise ValueError(f"train {job.model} needs --config and --data (train ldm: or --payload FILE)")
    if job.payload_out is None and job.out is None:
        raise ValueError("train needs --out, the run folder")


def train(job: TrainJob) -> dict:
    """Run (or continue) ``job``; returns the trainer's summary (a payload's, with ``payload_out``)."""
    _check_inputs(job)
    family = _with_prediction(load_config(job.config), job) if job.config else None
    cfg = job.train
    if job.model == "clap":
        from .clap_task import CLAPTask

        task = CLAPTask(family, job.data, init=job.clap)
    elif job.model == "vae":
        task = VAETask(
            family,
            job.data,
            frozen_decoder=job.frozen_decoder,
            frozen_encoder=job.frozen_encoder,
            adversarial_weight=job.adversarial_weight,
        )
    elif job.model == "vocoder":
        task = VocoderTask(family, job.data, init=job.vocoder, decoded_by=job.decoded_by, train_stages=job.train_stages)
    elif job.model == "band-extension":
        from .band_extension_task import BandExtensionTask

        task = BandExtensionTask(family, job.data, decoded_by=job.decoded_by)
    elif job.payload is not None:
        from .ldm_payload import PayloadLDMTask

        given = [f"--{k}" for k in ("data", "vae", "clap", "database", "vocoder") if getattr(job, k)]
        if given:
            raise ValueError(f"--payload holds what {', '.join(given)} would give; pass one or the other")
        task = PayloadLDMTask(family, job.payload, unet=job.unet)
        task.family = family = _with_prediction(task.family, job)
    else:
        task = _corpus_ldm_task(job, family)
        family = task.family
        if job.payload_out is not None:
            return _write_payload(task, cfg, job.payload_out, job.payload_precision)
    task.progress = job.progress
    resolved = {
        "model": job.model,
        "family": family.to_dict(),
        "data": str(job.data or job.payload),
        "inputs": {
            k: str(getattr(job, k))
            for k in ("vae", "clap", "database", "vocoder", "unet", "frozen_decoder", "frozen_encoder", "decoded_by")
            if getattr(job, k)
        },
    }
    if job.train_stages is not None:
        resolved["train_stages"] = job.train_stages
    return Trainer(task, job.out, cfg, resolved).run()


def _with_prediction(family, job: TrainJob):
    if not job.prediction:
        return family
    return replace(family, schedule=replace(family.schedule, prediction_type=job.prediction))


def _corpus_ldm_task(job: TrainJob, family) -> LDMTask:
    if job.vae is None or job.clap is None:
        raise ValueError("train ldm needs --vae and --clap checkpoint folders (and --database when k > 0)")
    family = with_checkpoint_clap(family, job.clap)
    return LDMTask(family, job.data, job.vae, job.clap, job.database, job.vocoder, unet=job.unet)


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
