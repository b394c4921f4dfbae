"""Write a bundle (DESIGN.md §3): stage graphs, tokenizer, retrieval database, manifest."""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from torch import nn

from reaudio.engine.bundle.dataclass_io import atomic_dir, write_json_atomic
from reaudio.engine.bundle.manifest import (
    FORMAT_VERSION,
    BundleManifest,
    Defaults,
    LatentSpec,
    Licence,
    RetrievalSpec,
    TokenizerSpec,
    write_bundle_manifest,
)
from reaudio.engine.retrieval.database import DatabaseInfo, RetrievalDB
from reaudio.models.configs import FamilyConfig
from reaudio.models.retrieval_features import database_key_settings

from .contracts import audio_frontend, stages_for
from .fp16 import convert_to_fp16
from .onnx_export import DEFAULT_OPSET, check_parity, export_stage, ort_session

log = logging.getLogger(__name__)

#: fp32 parity budget (relative to the output's peak) below which an export is accepted.
PARITY_TOLERANCE = 1e-4
#: The decoder chains the VAE decoder and a vocoder of ~100 convolutions; onnxruntime's and torch's
#: convolution kernels sum in different orders, and the universal HiFi-GAN's round-off reached
#: 1.1e-4 of peak on one machine (2026-12-02). 5e-4 of peak is still -66 dB below the signal.
PARITY_TOLERANCE_BY_STAGE = {"decoder": 5e-4}
#: Module-path scopes converted to fp16 per stage (None: the whole graph minus fragile ops).
FP16_SCOPES: dict[str, tuple[str, ...] | None] = {"denoiser": ("/unet/",)}
#: Values of ``export_bundle(optimize=...)``: None (plain graphs) or "gpu" (fused CUDA kernels).
OPTIMIZE_TARGETS = (None, "gpu")


class ExportParityError(RuntimeError):
    """An exported graph disagrees with its torch module beyond tolerance."""


def database_info(cfg: FamilyConfig, provenance: dict | None = None) -> DatabaseInfo:
    return DatabaseInfo(
        **database_key_settings(cfg.retrieval),
        embed_dim=cfg.clap.embed_dim,
        audio_tokens=cfg.retrieval.audio_tokens,
        audio_dim=cfg.clap.audio.width,
        caption_tokens=cfg.retrieval.caption_tokens,
        caption_dim=cfg.clap.text.hidden_size,
        provenance=provenance or {},
    )


def build_manifest(
    cfg: FamilyConfig,
    stages: dict,
    defaults: Defaults,
    null_condition: str = "zeros",
    family: str | None = None,
    licence: Licence | None = None,
    guidance_rescale: float = 0.0,
    output_rate: int | None = None,
) -> BundleManifest:
    r = cfg.vae.downsample_factor
    retrieval = None
    if cfg.retrieval.k > 0:
        retrieval = RetrievalSpec(
            k=cfg.retrieval.k,
            key=cfg.retrieval.key,
            contexts=tuple(c.name for c in cfg.unet.contexts),
            caption_tokens=cfg.retrieval.caption_tokens,
            audio_tokens=cfg.retrieval.audio_tokens,
            caption_dim=cfg.clap.text.hidden_size,
            audio_dim=cfg.clap.audio.width,
        )
    return BundleManifest(
        format_version=FORMAT_VERSION,
        family=family or ("re-audioldm" if retrieval else "audioldm"),
        name=cfg.name,
        mel=cfg.mel,
        latent=LatentSpec(cfg.vae.embed_dim, r, -(-cfg.mel.n_mels // r), cfg.vae.scaling_factor),
        schedule=cfg.schedule,
        film_dim=cfg.unet.film_dim,
        embed_dim=cfg.clap.embed_dim,
        tokenizer=TokenizerSpec("tokenizer/tokenizer.json", cfg.clap.text.max_length),
        stages=stages,
        retrieval=retrieval,
        defaults=defaults,
        null_condition=null_condition,
        licence=licence,
        audio_frontend=audio_frontend(cfg),
        guidance_rescale=guidance_rescale,
        output_rate=output_rate,
    )


def export_bundle(
    cfg: FamilyConfig,
    models: dict[str, nn.Module],
    out: str | Path,
    *,
    fp16: bool = False,
    optimize: str | None = None,
    database: str | Path | None = None,
    defaults: Defaults | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    tokenizer_json: str | None = None,
    null_condition: str = "zeros",
    family_name: str | None = None,
    licence: Licence | None = None,
) -> BundleManifest:
    """Export every stage of ``models`` into the bundle folder ``out`` (written whole, then renamed).

    ``models`` holds vae, vocoder, unet and either our ``clap`` or an imported Hugging
    Face ``text_encoder`` (then ``tokenizer_json`` is required and no audio encoder
    is exported). ``optimize="gpu"`` adds the denoiser's fused fp16 graph for CUDA (needs ``fp16``).
    Optional entries: ``mel_calibration``, ``mel_matching`` and ``band_extension`` (into the decoder
    graph; the last sets the manifest's ``output_rate``) and ``guidance_rescale`` (a
    :class:`~reaudio.models.guidance_rescale.GuidanceRescale`, into the denoiser graph and the manifest).
    """
    if optimize not in OPTIMIZE_TARGETS:
        raise ValueError(f"optimize={optimize!r}; valid: {', '.join(str(t) for t in OPTIMIZE_TARGETS)}")
    if optimize == "gpu" and not fp16:
        raise ValueError("--optimize gpu makes a fused fp16 graph: pass --fp16 too")
    if "clap" not in models and tokenizer_json is None:
        raise ValueError("export_bundle: models without our CLAP need tokenizer_json")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    models = {name: copy.deepcopy(m).eval() for name, m in models.items()}
    models["vocoder"].remove_weight_norm()
    with atomic_dir(out) as tmp:
        stages, report = {}, {"parity_fp32": [], "parity_fp16": []}
        for stage in stages_for(models):
            rel = f"{stage}/model.onnx"
            spec = export_stage(stage, cfg, models, tmp / rel, opset=opset)
            results = check_parity(stage, cfg, models, tmp / rel, session=ort_session(tmp / rel))
            report["parity_fp32"] += [asdict(r) for r in results]
            worst = max(results, key=lambda r: r.rel)
            tolerance = PARITY_TOLERANCE_BY_STAGE.get(stage, PARITY_TOLERANCE)
            if worst.rel > tolerance:
                raise ExportParityError(
                    f"{stage}/{worst.output} ({worst.case}): ONNX differs from torch by {worst.rel:.2e} of peak "
                    f"(tolerance {tolerance:.0e})"
                )
            fp16_rel = None
            if fp16:
                fp16_rel = f"{stage}/model.fp16.onnx"
                convert_to_fp16(tmp / rel, tmp / fp16_rel, fp16_scopes=FP16_SCOPES.get(stage))
                half = check_parity(stage, cfg, models, tmp / fp16_rel, session=ort_session(tmp / fp16_rel))
                report["parity_fp16"] += [asdict(r) for r in half]
                log.info("%s fp16 parity: worst %.2e of peak", stage, max(r.rel for r in half))
            fused_rel = None
            if optimize == "gpu" and stage == "denoiser":
                from .gpu_fusion import fuse_denoiser

                fused_rel = f"{stage}/model.fp16.fused.onnx"
                counts = fuse_denoiser(tmp / rel, tmp / fused_rel, fp16=True, fp32_outside=FP16_SCOPES[stage])
                report["fused_ops"] = counts
            stages[stage] = spec.spec(rel, fp16_rel, fused_rel)
        (tmp / "tokenizer").mkdir()
        tokenizer_text = tokenizer_json or models["clap"].tokenizer_json()
        (tmp / "tokenizer" / "tokenizer.json").write_text(tokenizer_text, encoding="utf-8")
        if cfg.retrieval.k > 0:
            if database is not None:
                db = RetrievalDB(database)  # validates before copying
                if db.info.embed_dim != cfg.clap.embed_dim:
                    raise ValueError(f"{database}: embed_dim {db.info.embed_dim} != model's {cfg.clap.embed_dim}")
                shutil.copytree(db.generation, tmp / "retrieval" / db.generation.name)
                (tmp / "retrieval" / "CURRENT").write_text(db.generation.name + "\n", encoding="utf-8")
            else:
                RetrievalDB.create(tmp / "retrieval", database_info(cfg, {"created_by": "reaudio export"}))
        write_json_atomic(tmp / "export_report.json", report)
        cfg.save(tmp / "family.json")  # lets `reaudio plans build` derive profiles from the bundle alone
        defaults = defaults or Defaults(duration=cfg.clip_seconds)
        rescale = models["guidance_rescale"].factor if "guidance_rescale" in models else 0.0
        output_rate = models["band_extension"].cfg.out_rate if "band_extension" in models else None
        manifest = write_bundle_manifest(
            tmp, build_manifest(cfg, stages, defaults, null_condition, family_name, licence, rescale, output_rate)
        )
    log.info("bundle written: %s (%d files)", out, len(manifest.files))
    return manifest
