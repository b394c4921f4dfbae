"""The export side's commands of ``reaudio``: export, import, quantize, plans, default-model.

Registered with the one ``reaudio`` console script through the ``reaudio.commands`` entry point
(:mod:`reaudio.engine.plugins`). Importing this module needs neither torch nor onnx; each command
that does says how to install it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .int8 import DENOISER_TARGET_SNR_DB


def need_torch(extra: str = "train") -> None:
    """Exit with the install command when torch is missing (these modules import without it)."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"this command needs torch: pip install 'reaudio[{extra}]' (on CPU first: pip install torch==2.13.0)"
        ) from exc


def _cmd_export(args: argparse.Namespace) -> int:
    need_torch("train,export")
    from reaudio.export.bundle import export_bundle
    from reaudio.models.system import load_system

    cfg, models = load_system(args.checkpoints, args.config)
    # The training side adds --calibrate-decoder (fitting reads a corpus) and its fitter.
    if getattr(args, "calibrate_decoder", None) is not None:
        models["mel_calibration"] = args.fit_decoder_calibration(models["vae"], cfg.mel, args.calibrate_decoder)
    if args.guidance_rescale:
        from reaudio.models.guidance_rescale import GuidanceRescale

        models["guidance_rescale"] = GuidanceRescale(args.guidance_rescale)
    if args.band_extension is not None:
        models["band_extension"] = _band_extension(args.band_extension, cfg)
    if args.mel_matching:
        from reaudio.models.mel_matching import MelMatching

        models["mel_matching"] = MelMatching(cfg.mel, _mel_matching_settings(args))
    manifest = export_bundle(
        cfg,
        models,
        args.out,
        fp16=args.fp16,
        optimize=args.optimize,
        database=args.database,
        opset=args.opset,
        overwrite=args.overwrite,
    )
    print(f"bundle {args.out}: {len(manifest.files)} files, stages {', '.join(manifest.stages)}")
    if args.int8:
        _quantize(args.out, None, args)
    if args.trt:
        return _build_plans(args.out)
    return 0


def _band_extension(folder: Path, cfg):
    from reaudio.models.band_extension import BandExtension
    from reaudio.models.checkpoint import load_checkpoint

    model = load_checkpoint(folder)
    if not isinstance(model, BandExtension):
        raise ValueError(f"--band-extension {folder}: not a band-extension checkpoint (train band-extension's final/)")
    if (model.cfg.in_rate, model.cfg.n_mels, model.cfg.mel_hop) != (
        cfg.mel.sample_rate,
        cfg.mel.n_mels,
        cfg.mel.hop_length,
    ):
        raise ValueError(f"--band-extension {folder}: made for another mel than the model's ({cfg.mel.sample_rate} Hz)")
    return model.eval()


def _unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (valid: 0 to 1)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside 0 to 1")
    return value


def describe_sharpening(calibration) -> str:  # a MelCalibration
    low, high = min(calibration.sharpen), max(calibration.sharpen)
    return f"sharpening along time {low:.2f}-{high:.2f} by band, across bands {calibration.sharpen_freq:.2f}"


def _need_quantisation() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise SystemExit("this command needs onnx: pip install 'reaudio[export]' (no torch needed)") from exc


def _target_snr(value: float) -> float | None:
    """--target-snr 0 quantises every convolution (no sensitivity pass)."""
    return None if value <= 0 else value


def _quantize(bundle: Path, out: Path | None, args: argparse.Namespace) -> int:
    _need_quantisation()
    from reaudio.engine.bundle.default_model import resolve_bundle
    from reaudio.export.int8 import Calibration, quantize_bundle

    calibration = Calibration(steps=getattr(args, "calibration_steps", 10), threads=getattr(args, "threads", None))
    prompts = getattr(args, "calibration_prompts", None)
    if prompts is not None:
        from reaudio.engine.jobs.prompts import read_prompt_file

        calibration = replace(calibration, prompts=tuple(row.prompt for row in read_prompt_file(prompts)))
    bundle = resolve_bundle(bundle)
    manifest = quantize_bundle(
        bundle,
        out,
        calibration,
        overwrite=getattr(args, "overwrite", False),
        progress=print,
        vocoder=getattr(args, "vocoder", False),
        target_snr_db=_target_snr(getattr(args, "target_snr", DENOISER_TARGET_SNR_DB)),
    )
    where = out or bundle
    quantised = [name for name, spec in manifest.stages.items() if spec.int8_file]
    print(
        f"bundle {where}: int8 graphs for {', '.join(quantised)}; use them with --precision int8 "
        f"(quality vs fp32: {where / 'int8_report.json'})"
    )
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    return _quantize(args.bundle, args.out, args)


def _build_plans(bundle: Path) -> int:
    need_torch("train,export,gpu")
    from reaudio.export.tensorrt import TensorRTUnavailable, build_bundle_plans
    from reaudio.models.configs import load_config

    try:
        plans = build_bundle_plans(bundle, load_config(Path(bundle) / "family.json"))
    except TensorRTUnavailable as exc:
        print(f"reaudio: skipped TensorRT plans: {exc}", file=sys.stderr)
        return 3
    for plan in plans:
        print(plan)
    return 0


def _cmd_plans(args: argparse.Namespace) -> int:
    return _build_plans(args.bundle)


def _cmd_import(args: argparse.Namespace) -> int:
    need_torch("train,export")
    if args.source == "laion-clap":
        return _import_laion_clap(args)
    from reaudio.export.import_audioldm import import_audioldm

    manifest = import_audioldm(
        args.folder,
        args.out,
        fp16=args.fp16,
        overwrite=args.overwrite,
        licence=args.licence,
        revision=args.revision,
        optimize=args.optimize,
    )
    print(f"bundle {args.out}: {manifest.family} ({manifest.name}), stages {', '.join(manifest.stages)}")
    print(manifest.licence.notice())
    if args.int8:
        _quantize(args.out, None, args)
    return 0


def _import_laion_clap(args: argparse.Namespace) -> int:
    from reaudio.models.checkpoint import save_checkpoint
    from reaudio.models.laion_clap import import_laion_clap

    if args.tokenizer is None:
        raise ValueError(
            "import laion-clap needs --tokenizer tokenizer.json (the RoBERTa tokenizer the checkpoint "
            "was trained with, e.g. roberta-base's): LAION-CLAP checkpoints do not carry it"
        )
    if not Path(args.folder).is_file():
        raise FileNotFoundError(f"{args.folder}: checkpoint file not found")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{args.out} exists and is not empty; pass --overwrite to replace it")
    model = import_laion_clap(args.folder, args.tokenizer.read_text(encoding="utf-8"), text_heads=args.text_heads)
    save_checkpoint(args.out, model, extra={"source": str(args.folder)})
    cfg = model.cfg
    print(
        f"laion-clap checkpoint {args.out}: text {cfg.text.layers}×{cfg.text.hidden_size}, HTSAT "
        f"{list(cfg.audio.depths)}×{cfg.audio.width}, embeddings {cfg.embed_dim}-d; "
        f"use it with `reaudio db build --clap {args.out}`"
    )
    return 0


def _cmd_default_model(args: argparse.Namespace) -> int:
    from reaudio.engine.bundle.default_model import bundle_path, pack_path

    if args.action == "path":
        print(f"pack:   {pack_path()}\nbundle: {bundle_path()}")
        return 0
    need_torch("train,export")
    if args.action == "assemble":
        from reaudio.engine.bundle.default_model import resolve_bundle

        print(resolve_bundle(rebuild=args.force))
        return 0
    from reaudio.export.default_pack import add_vae_part, write_pack

    if args.action == "link-audio":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import link_item_audio

        pack = args.pack or pack_path()
        print(f"{pack}: {link_item_audio(pack, args.manifest)} database items linked to {args.manifest.parent}")
        return 0
    if args.action == "unpack":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import unpack

        out = unpack(args.pack or pack_path(), args.out, overwrite=args.overwrite)
        print(
            f"{out}: unet/, vae/, clap/, db/, family.json; fine-tune with `reaudio train ldm --config "
            f"{out}/family.json --unet {out}/unet --vae {out}/vae --clap {out}/clap --database {out}/db ...`"
        )
        return 0
    if args.action == "guidance-rescale":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import set_guidance_rescale

        pack = args.pack or pack_path()
        set_guidance_rescale(pack, args.factor, args.measured)
        state = f"rescales guidance by {args.factor:g}" if args.factor else "uses plain guidance"
        print(f"{pack}: the assembled denoiser {state}; run `reaudio default-model assemble --force`")
        return 0
    if args.action == "mel-matching":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import set_mel_matching

        pack = args.pack or pack_path()
        settings = None if args.remove else _mel_matching_settings(args)
        set_mel_matching(pack, settings, args.measured)
        state = f"matches the vocoder's audio to its mel ({settings.to_dict()})" if settings else "has no mel matching"
        print(f"{pack}: the assembled decoder {state}; run `reaudio default-model assemble --force`")
        return 0
    if args.action == "add-vocoder":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import add_vocoder

        pack = args.pack or pack_path()
        meta = add_vocoder(pack, args.vocoder)
        print(
            f"{pack}: vocoder.safetensors taken from {args.vocoder} ({meta['provenance']['vocoder']['tensors']} "
            "tensors); run `reaudio default-model assemble --force`"
        )
        return 0
    if args.action == "add-band-extension":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import add_band_extension

        if args.remove == (args.band_extension is not None):
            raise ValueError("default-model add-band-extension: pass a checkpoint folder, or --remove (not both)")
        pack = args.pack or pack_path()
        add_band_extension(pack, None if args.remove else args.band_extension)
        state = f"taken from {args.band_extension}" if not args.remove else "removed (22.05-kHz output)"
        print(f"{pack}: band extension {state}; run `reaudio default-model assemble --force`")
        return 0
    if args.action == "add-unet":
        from reaudio.engine.bundle.default_model import pack_path
        from reaudio.export.default_pack import add_unet

        pack = args.pack or pack_path()
        add_unet(pack, args.unet)
        print(
            f"{pack}: unet.safetensors taken from {args.unet} (pack {_mib(pack):.1f} MiB); "
            "run `reaudio default-model assemble --force`"
        )
        return 0
    if args.action in ("add-encoder", "add-decoder"):
        from reaudio.engine.bundle.default_model import pack_path

        pack, part = args.pack or pack_path(), args.action.removeprefix("add-")
        add_vae_part(pack, args.vae, part, fp16=args.fp16)
        print(f"{pack}: vae_{part}.safetensors taken from {args.vae}; run `reaudio default-model assemble --force`")
        return 0
    defaults = {"guidance": args.guidance} if args.guidance is not None else None
    meta = write_pack(args.system, args.database, args.out, provenance={"system": str(args.system)}, defaults=defaults)
    print(f"{args.out}: {len(meta['files'])} files, {_mib(args.out):.1f} MiB")
    return 0


def _mel_matching_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    from reaudio.models.mel_matching_config import MelMatchingConfig

    default = MelMatchingConfig()
    for field, kind, what in (
        ("iterations", int, "gain-and-resynthesis passes"),
        ("relaxation", float, "exponent on each pass's gains"),
        ("max_gain_db", float, "largest change of a band in one pass, dB"),
    ):
        parser.add_argument(
            f"--{prefix}{field.replace('_', '-')}",
            dest=f"mm_{field}",
            metavar=field.upper(),
            type=kind,
            default=getattr(default, field),
            help=f"{what} (default {getattr(default, field):g})",
        )


def _mel_matching_settings(args):
    from reaudio.models.mel_matching_config import MelMatchingConfig

    return MelMatchingConfig(args.mm_iterations, args.mm_relaxation, args.mm_max_gain_db)


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def _add_default_model(sub, common) -> argparse._SubParsersAction:
    p = sub.add_parser("default-model", help="the embedded default model: where it is, assemble it, pack a new one")
    dsub = p.add_subparsers(dest="action", metavar="ACTION")
    dsub.required = True
    dsub.add_parser("path", parents=[common], help="print the pack and the assembled bundle's folder")
    a = dsub.add_parser("assemble", parents=[common], help="build the bundle from the pack and the wheels (torch)")
    a.add_argument("--force", action="store_true", help="rebuild even when it is there")
    k = dsub.add_parser("pack", parents=[common], help="maintainers: pack a trained system + database (torch)")
    k.add_argument("system", type=Path, help="system folder (train ldm's final/)")
    k.add_argument("--database", type=Path, required=True)
    k.add_argument("--guidance", type=float, help="the model's default guidance scale, as measured (reaudio eval)")
    k.add_argument("--out", type=Path, required=True)
    for part, trained, flag in (
        ("encoder", "against its decoder", "--frozen-decoder"),
        ("decoder", "on its encoder's latents", "--frozen-encoder"),
    ):
        e = dsub.add_parser(
            f"add-{part}", parents=[common], help=f"maintainers: give a pack the VAE {part} trained {trained} (torch)"
        )
        e.add_argument("vae", type=Path, help=f"VAE checkpoint folder (train vae {flag} PACK's final/vae)")
        e.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
        e.add_argument("--fp16", action="store_true", help=f"store the {part} in fp16 (default: int8 per channel)")
    for part, name, trained, checkpoint in (
        ("unet", "UNet", "a trained UNet (from the corpus or a payload)", "train ldm's final/unet"),
        ("vocoder", "vocoder", "a vocoder fine-tuned with --decoded-by PACK", "train vocoder's final/vocoder"),
    ):
        n = dsub.add_parser(f"add-{part}", parents=[common], help=f"maintainers: give a pack {trained}; torch")
        n.add_argument(part, type=Path, help=f"{name} checkpoint folder ({checkpoint})")
        n.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    b = dsub.add_parser(
        "add-band-extension",
        parents=[common],
        help="maintainers: give a pack a band extension, so its decoder writes 44.1 kHz (torch)",
    )
    b.add_argument("band_extension", type=Path, nargs="?", help="train band-extension's final/band_extension")
    b.add_argument("--remove", action="store_true", help="take the pack's band extension out instead")
    b.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    g = dsub.add_parser(
        "guidance-rescale",
        parents=[common],
        help="maintainers: build guidance rescaling into the pack's assembled denoiser (0: plain guidance)",
    )
    g.add_argument("factor", type=_unit_fraction, metavar="PHI", help="rescale factor in [0, 1] (0.7 is usual)")
    g.add_argument("--measured", help="where the choice was scored (recorded in pack.json's provenance)")
    g.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    m = dsub.add_parser(
        "mel-matching",
        parents=[common],
        help="maintainers: build mel matching (the vocoder's audio brought back to its mel) into the pack's decoder",
    )
    _mel_matching_flags(m)
    m.add_argument("--remove", action="store_true", help="take the stage out instead")
    m.add_argument("--measured", help="where the choice was scored (recorded in pack.json's provenance)")
    m.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    u = dsub.add_parser(
        "unpack", parents=[common], help="the pack as checkpoints and a database, to fine-tune it (torch)"
    )
    u.add_argument("out", type=Path, help="folder for unet/, vae/, clap/, db/ and family.json")
    u.add_argument("--pack", type=Path, help="the pack to unpack (default: the embedded one)")
    u.add_argument("--overwrite", action="store_true", help="replace OUT when it is not empty")
    la = dsub.add_parser(
        "link-audio",
        parents=[common],
        help="maintainers: record each database item's audio path within a corpus (relative)",
    )
    la.add_argument(
        "manifest", type=Path, help="the corpus's clip list (reaudio data build-sfx --out DIR: DIR/manifest.jsonl)"
    )
    la.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    p.set_defaults(func=_cmd_default_model)
    return dsub


def register(sub, common, tables: dict) -> None:
    """Add export, import, quantize, plans and default-model; ``tables`` gains ``export`` (its parser)
    and ``default-model`` (its action table), which the training side extends."""
    p = sub.add_parser("export", help="export checkpoints to a bundle (ONNX graphs, tokenizer, database)")
    p.add_argument("checkpoints", nargs="+", type=Path, help="system folder(s) and/or component checkpoint folders")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--config", help="family config name or JSON (default: the system folder's family.json)")
    p.add_argument("--database", type=Path, help="retrieval database folder to include")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs for GPU backends")
    p.add_argument("--int8", action="store_true", help="also write int8 graphs for the CPU (see `reaudio quantize`)")
    p.add_argument(
        "--optimize",
        choices=("gpu",),
        help="gpu: also a fused fp16 denoiser for CUDA (onnxruntime's attention, GroupNorm and NHWC "
        "convolution kernels; needs --fp16)",
    )
    p.add_argument("--trt", action="store_true", help="then build TensorRT plans (needs a GPU and tensorrt)")
    p.add_argument(
        "--band-extension",
        type=Path,
        metavar="CHECKPOINT",
        help="end the decoder graph with this band extension (train band-extension's final/band_extension): "
        "the bundle writes 44.1 kHz with a band above 8 kHz learned from full-band clips",
    )
    p.add_argument(
        "--guidance-rescale",
        type=_unit_fraction,
        default=0.0,
        metavar="PHI",
        help="build guidance rescaling into the denoiser graph: the guided prediction is pulled toward the "
        "conditional one's spread by PHI in [0, 1] (Lin et al. 2024; 0.7 is usual; default 0: plain guidance)",
    )
    p.add_argument(
        "--mel-matching",
        action="store_true",
        help="bring the vocoder's audio back to the mel it was given, in the decoder graph (before the band "
        "extension): the universal HiFi-GAN's round trip on real clips falls from FAD 110.3 to 100.0 (floor 98.5)",
    )
    _mel_matching_flags(p, "mel-matching-")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=_cmd_export)

    tables["export"] = p

    p = sub.add_parser("import", help="convert a public checkpoint into a bundle (offline)")
    p.add_argument("source", choices=("audioldm", "laion-clap"))
    p.add_argument(
        "folder",
        metavar="SOURCE",
        help="audioldm: a diffusers AudioLDM pipeline folder (model_index.json, unet/, …) or a hub id "
        "already in the Hugging Face cache (e.g. cvssp/audioldm-s-full-v2; never downloaded); "
        "laion-clap: the checkpoint file (e.g. 630k-audioset-best.pt)",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle folder (audioldm) or checkpoint folder (laion-clap)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs for GPU backends (audioldm)")
    p.add_argument("--int8", action="store_true", help="also write int8 graphs for the CPU (audioldm)")
    p.add_argument(
        "--optimize",
        choices=("gpu",),
        help="gpu: also a fused fp16 denoiser for CUDA (onnxruntime's attention, GroupNorm and NHWC "
        "convolution kernels; needs --fp16)",
    )
    p.add_argument("--tokenizer", type=Path, help="laion-clap: the RoBERTa tokenizer.json it was trained with")
    p.add_argument("--text-heads", type=int, help="laion-clap: text attention heads (default: width / 64)")
    p.add_argument("--revision", help="audioldm hub id: the cached revision (branch, tag or commit; default main)")
    p.add_argument(
        "--licence",
        help="audioldm: the weights' licence to record when the model card does not state "
        "it (e.g. cc-by-nc-sa-4.0); overrides the card's",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser(
        "quantize",
        help="add int8 denoiser/decoder graphs for the CPU (--precision int8), calibrated on "
        "prompts the bundle itself generates (needs onnx, not torch)",
    )
    p.add_argument("bundle", type=Path, nargs="?", help="bundle folder (default: the embedded default model)")
    p.add_argument("--out", type=Path, help="write a quantised copy here instead of adding to BUNDLE")
    p.add_argument(
        "--calibration-prompts",
        type=Path,
        metavar="FILE",
        help="prompt file (.txt/.csv/.jsonl) to calibrate on (default: 32 built-in varied prompts)",
    )
    p.add_argument("--calibration-steps", type=int, default=10, help="denoising steps per calibration clip")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument(
        "--vocoder",
        action="store_true",
        help="the vocoder's convolutions in int8 too: about 2x faster decoding; what it costs in sound "
        "depends on the vocoder (measure with reaudio eval --precision int8)",
    )
    p.add_argument(
        "--target-snr",
        type=float,
        default=DENOISER_TARGET_SNR_DB,
        metavar="DB",
        help="keep the denoiser's most sensitive convolutions fp32 until its x0 prediction is this close to "
        f"fp32 (SNR in dB; default {DENOISER_TARGET_SNR_DB:g}, measured to keep the default model's FAD); "
        "0: every convolution in int8",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("plans", help="TensorRT plans for a bundle")
    psub = p.add_subparsers(dest="plans_command", metavar="ACTION")
    psub.required = True
    b = psub.add_parser("build", parents=[common], help="build fp16 plans for this machine's GPU and TensorRT version")
    b.add_argument("bundle", type=Path)
    p.set_defaults(func=_cmd_plans)

    tables["default-model"] = _add_default_model(sub, common)
