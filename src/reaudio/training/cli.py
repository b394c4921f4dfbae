"""The training side's commands of ``reaudio`` (train, eval, data, export, import, plans,
configs, db build, default-model), plugged into the engine's command line.

Torch-free at import: a command that needs torch imports its module when it runs and,
where torch is missing, says what to install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from reaudio.engine.denoising.sampler import SAMPLERS

from .lr_schedule import LR_DECAYS
from .sfx_sources import HELDOUT_PACKAGES, PACKAGES, refuse_reserved


def _need_training_side(extra: str = "train") -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"this command needs torch: pip install 'reaudio[{extra}]' (on CPU first: pip install torch==2.13.0)"
        ) from exc


def _cmd_configs(args: argparse.Namespace) -> int:
    _need_training_side()
    from .model_sizes import describe_configs

    print(describe_configs(args.names or None, json_output=args.json))
    return 0


def _cmd_db_build(args: argparse.Namespace) -> int:
    _need_training_side()
    from reaudio.models.configs import load_config

    from .database import build_database_from_manifest

    db = build_database_from_manifest(
        args.data, args.clap, load_config(args.config), args.out, splits=tuple(args.splits), index=args.index
    )
    print(f"{args.out}: {len(db)} clip(s)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    _need_training_side("train,export")
    from reaudio.export.bundle import export_bundle
    from reaudio.models.system import load_system

    cfg, models = load_system(args.checkpoints, args.config)
    if args.calibrate_decoder is not None:
        from reaudio.models.mel_calibration import MelCalibrationLayer

        from .decoder_calibration import calibrate_decoder

        fitted = calibrate_decoder(models["vae"], cfg.mel, args.calibrate_decoder)
        models["mel_calibration"] = MelCalibrationLayer(fitted)
        print(f"decoder calibration fitted on {args.calibrate_decoder} ({_sharpening(fitted)})")
    if args.guidance_rescale:
        from reaudio.models.guidance_rescale import GuidanceRescale

        models["guidance_rescale"] = GuidanceRescale(args.guidance_rescale)
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


def _unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (valid: 0 to 1)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside 0 to 1")
    return value


def _sharpening(calibration) -> str:  # a MelCalibration
    low, high = min(calibration.sharpen), max(calibration.sharpen)
    return f"sharpening along time {low:.2f}-{high:.2f} by band, across bands {calibration.sharpen_freq:.2f}"


def _need_quantisation() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise SystemExit("this command needs onnx: pip install 'reaudio[export]' (no torch needed)") from exc


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
    _need_training_side("train,export,gpu")
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


def _cmd_import(args: argparse.Namespace) -> int:
    _need_training_side("train,export")
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


def _cmd_train(args: argparse.Namespace) -> int:
    _need_training_side()
    from .run import train_from_args

    summary = train_from_args(args)
    if not args.quiet and getattr(args, "payload_out", None) is not None:
        print(f"payload {args.payload_out}: {summary}; train from it with `reaudio train ldm --payload FILE --out RUN`")
    elif summary.get("stopped") == "time limit":
        # Not an error (it did what was asked), but not a finished run either: scripts that
        # loop until final/ exists, or stop on it, can tell the two apart.
        print(
            f"{args.model} run {args.out}: stopped by --time-limit at step {summary['steps']} of {summary['of']}; "
            "run the same command again to continue"
        )
        return 3
    elif not args.quiet:
        print(f"{args.model} run {args.out}: {summary}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a component: clap, vae, vocoder or ldm (needs torch)")
    p.add_argument("model", choices=("clap", "vae", "vocoder", "ldm"))
    p.add_argument(
        "--config",
        help="family config: a name (tiny, sfx-small, …) or a JSON file (ldm --payload: default the payload's)",
    )
    p.add_argument("--data", type=Path, help="clip manifest (JSONL: id, audio, caption, source, split)")
    p.add_argument("--out", type=Path, help="run folder (resumes when it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument(
        "--lr-decay",
        choices=LR_DECAYS,
        default="constant",
        help="after warm-up: keep the peak lr, or decay it along half a cosine to --final-lr-fraction at --steps",
    )
    p.add_argument(
        "--final-lr-fraction",
        type=float,
        default=0.0,
        help="cosine decay: the last step's lr as a fraction of --lr (0…1; default 0)",
    )
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, help="EMA of weights (default: 0.999 for ldm, off otherwise)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="stop after this many minutes of training with a checkpoint; rerunning continues (0: none)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="ldm: drop all conditions together")
    p.add_argument("--film-dropout", type=float, default=0.0, help="ldm: drop only the FiLM prompt embedding")
    p.add_argument("--context-dropout", type=float, default=0.0, help="ldm: drop only the retrieved contexts")
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=0.0,
        help="ldm: min-SNR-gamma loss weighting (e.g. 5; 0: plain epsilon loss)",
    )
    p.add_argument(
        "--loudness-db", type=float, help="vae/ldm/vocoder: normalise training clips to this loudness, LUFS (e.g. -20)"
    )
    p.add_argument("--kl-weight", type=float, default=1e-6, help="vae: KL weight")
    p.add_argument(
        "--segment-seconds",
        type=float,
        default=0.0,
        help="vae: train on random crops this long (default: whole training clips)",
    )
    p.add_argument(
        "--frozen-decoder",
        type=Path,
        help="vae: train only the encoder, against this fixed decoder (a VAE checkpoint folder or a "
        "default-model pack; pass that model's family.json as --config)",
    )
    p.add_argument(
        "--adversarial-weight",
        type=float,
        default=0.0,
        help="vae: weight of a log-mel patch discriminator's loss beside the L1 (0: off; e.g. 0.1)",
    )
    p.add_argument(
        "--frozen-encoder",
        type=Path,
        help="vae: train only the decoder, from this model's decoder, on the latents of its fixed encoder "
        "(a VAE checkpoint folder or a default-model pack; pass that model's family.json as --config)",
    )
    p.add_argument(
        "--discriminator-width",
        type=float,
        default=1.0,
        help="vocoder: channel multiplier of the discriminators (1.0: HiFi-GAN's)",
    )
    p.add_argument(
        "--decoded-by",
        type=Path,
        help="vocoder: fine-tune on what the engine feeds it: each clip's log-mel through this VAE "
        "(a checkpoint folder, or a default-model pack: its encoder, decoder and decoder calibration)",
    )
    p.add_argument(
        "--train-stages",
        type=int,
        help="vocoder: train only the last N up-sampling stages and the output convolution "
        "(the rest stays as loaded; e.g. 2 for a small set of weights to ship in a pack)",
    )
    p.add_argument(
        "--prediction",
        choices=("epsilon", "v_prediction"),
        help="ldm: what the UNet predicts (default: the config's; v_prediction converges faster "
        "at high noise, where an ε-model's x0 estimate is its error times 1/√ā)",
    )
    p.add_argument("--vae", type=Path, help="ldm: the frozen VAE checkpoint folder")
    p.add_argument("--clap", type=Path, help="ldm: the frozen CLAP checkpoint folder; clap: one to continue from")
    p.add_argument("--database", type=Path, help="ldm: retrieval database built over the training manifest")
    p.add_argument(
        "--unet",
        type=Path,
        help="ldm: a UNet checkpoint folder to continue from (e.g. the default model's: reaudio default-model unpack)",
    )
    p.add_argument(
        "--payload-out",
        type=Path,
        help="ldm: do not train; write what training reads (each clip's VAE posterior, prompt embedding and "
        "neighbours' features) into this .npz, for `train ldm --payload` on another machine",
    )
    p.add_argument(
        "--payload-precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="ldm --payload-out: fp16: features in fp16, VAE posteriors in fixed steps (about half the size); "
        "fp32: exact, a run from it equals one from the corpus",
    )
    p.add_argument(
        "--payload",
        type=Path,
        help="ldm: train the UNet from a payload (train ldm --payload-out) instead of --data/--vae/--clap/--database",
    )
    p.add_argument(
        "--vocoder",
        help="ldm: vocoder checkpoint folder to include in final/ (for export); "
        "vocoder: checkpoint to fine-tune from; 'universal': the pretrained universal HiFi-GAN",
    )
    p.set_defaults(func=_cmd_train)


def _cmd_eval(args: argparse.Namespace) -> int:
    _need_training_side()
    import json

    from .evaluate import EvalConfig, ablation, evaluate

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: use 1 or more CPU threads")
        import torch

        torch.set_num_threads(args.threads)  # the scoring side (aisfx, CLAP, label classifier)

    def config(k, bundle=None, sub=None):
        out = args.out / sub if sub else (args.out if k is None else args.out / f"k{k}")
        return EvalConfig(
            bundle=bundle or args.bundle,
            data=args.data,
            out=out,
            split=args.split,
            k=k,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            seed=args.seed,
            limit=args.limit,
            backbone=args.backbone,
            backend=args.backend,
            precision=args.precision,
            retrieval=args.retrieval,
            init=args.init,
            strength=args.strength,
            candidates=args.candidates,
            threads=args.threads,
            progress=not args.quiet,
        )

    if args.compare:
        rows = []
        for i, entry in enumerate(args.compare):
            name, sep, target = entry.rpartition("=")
            bundle, at, k = target.rpartition("@")
            if not at or not k.isdigit():
                bundle, at, k = target, "", ""
            if not sep or not name or not bundle:
                raise ValueError(f"--compare {entry!r}: use NAME=BUNDLE or NAME=BUNDLE@K")
            rows.append((name, config(int(k) if at else None, Path(bundle), f"row{i}")))
        print(ablation(rows, args.out))
    elif args.ks:
        if args.bundle is None:
            raise ValueError("--ks needs --bundle")
        rows = [("no retrieval (k=0)" if k == 0 else f"k={k}", config(k)) for k in args.ks]
        print(ablation(rows, args.out))
    else:
        if args.bundle is None:
            raise ValueError("eval needs --bundle (or --compare rows)")
        metrics = evaluate(config(args.k))
        print(json.dumps({k: v for k, v in metrics.items() if k != "settings"}, indent=2))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="generate for a test manifest and score FAD, KL, IS, CLAP score (needs torch)")
    p.add_argument("--bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="clip manifest with train and test splits")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md, long_tail.png")
    p.add_argument("--split", default="test", help="manifest split to score: test, or heldout (zero-shot)")
    p.add_argument(
        "--retrieval", choices=("caption", "audio", "hybrid"), help="neighbour search (default: the bundle's)"
    )
    p.add_argument("--k", type=int, help="neighbours per prompt (default: the bundle's)")
    p.add_argument("--ks", type=int, nargs="+", help="ablation: evaluate at each k and write ablation.md")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME=BUNDLE[@K]",
        help="ablation rows from different bundles (e.g. separately trained context types)",
    )
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--sampler", choices=SAMPLERS, help="sampler (default: the bundle's)")
    p.add_argument("--init", choices=("neighbour",), help="start each clip from its top neighbour's audio")
    p.add_argument("--strength", type=float, help="with --init: how far a clip may move from its start (0, 1]")
    p.add_argument("--candidates", type=int, default=1, help="best-of-N by CLAP score (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for generation and scoring (default: all cores; fewer beside a training run)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="score at most this many test clips")
    p.add_argument("--backbone", default="aisfx", help="aisfx, or package.module:factory for your own weights")
    p.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda", "tensorrt", "trt-native"))
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "fp16", "int8"),
        help="which of the bundle's graphs to score (int8: after `reaudio quantize`)",
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_data(args: argparse.Namespace) -> int:
    _need_training_side()
    import json

    from .dataset_tools import dataset_stats, import_dataset

    if args.data_command == "import":
        print(json.dumps(import_dataset(args.source, args.out, args.test_percent)))
    elif args.data_command == "build-sfx":
        from reaudio.models.configs import load_config

        from .sfx_corpus import CorpusConfig, build_corpus, describe

        family = load_config(args.config)
        cfg = CorpusConfig(
            out=args.out,
            sample_rate=family.mel.sample_rate,
            clip_seconds=family.clip_seconds,
            max_segments=args.max_segments,
            packages=tuple(args.packages or PACKAGES),
            test_percent=args.test_percent,
            captions=args.captions,
            heldout=tuple(args.heldout) if args.heldout is not None else HELDOUT_PACKAGES,
        )
        report = build_corpus(cfg, progress=not args.quiet)
        print(describe(report))
        print(f"manifest: {args.out / 'manifest.jsonl'}  report: {args.out / 'report.json'}")
    else:
        stats = dataset_stats(args.manifest, args.out)
        print(json.dumps({k: v for k, v in stats.items() if k != "frequencies"}))
    return 0


def _corpus_package(name: str) -> str:
    try:
        refuse_reserved([name])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name not in PACKAGES:
        raise argparse.ArgumentTypeError(f"unknown package {name!r}; the corpus uses: {', '.join(PACKAGES)}")
    return name


def _add_data(sub, common) -> None:
    p = sub.add_parser("data", help="datasets: import your own clips, label statistics (needs torch)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    i = dsub.add_parser("import", parents=[common], help="CSV/JSONL of (audio, caption[, label, source]) → manifest")
    i.add_argument("source", type=Path)
    i.add_argument("--out", type=Path, required=True, help="manifest to write (JSONL)")
    i.add_argument("--test-percent", type=int, default=10, help="share of source recordings in the test split")
    b = dsub.add_parser(
        "build-sfx", parents=[common], help="sound-effect corpus from Debian packages (apt-get download, dpkg-deb -x)"
    )
    b.add_argument("--out", type=Path, required=True, help="corpus folder (created; a rerun resumes)")
    b.add_argument("--config", default="sfx-small", help="model config whose sample rate and clip length to use")
    b.add_argument("--packages", nargs="+", type=_corpus_package, metavar="PKG", help="a subset of the packages")
    b.add_argument("--max-segments", type=int, default=8, help="segments kept per source file")
    b.add_argument("--test-percent", type=int, default=10, help="share of source files in the test split")
    b.add_argument("--captions", type=Path, help="caption map (TSV) instead of the curated one")
    b.add_argument(
        "--heldout",
        nargs="*",
        type=_corpus_package,
        metavar="PKG",
        help=f"packages kept out of training for the zero-shot split (default: {' '.join(HELDOUT_PACKAGES)}; "
        "none: --heldout with no names)",
    )
    s = dsub.add_parser("stats", parents=[common], help="label frequencies and a long-tail chart")
    s.add_argument("manifest", type=Path)
    s.add_argument("--out", type=Path, required=True, help="folder for label_stats.json and long_tail.png")
    p.set_defaults(func=_cmd_data)


def _cmd_plans(args: argparse.Namespace) -> int:
    return _build_plans(args.bundle)


def add_training_commands(sub, common, dbsub) -> None:
    """Add the training, evaluation, data, export and import commands to ``reaudio``'s parser.
    Importing this module needs no torch; each command that does says how to install it."""
    bd = dbsub.add_parser("build", parents=[common], help="build a database over a clip manifest with a CLAP (torch)")
    bd.add_argument("--clap", type=Path, required=True, help="CLAP checkpoint folder")
    bd.add_argument("--config", required=True, help="family config name or JSON")
    bd.add_argument("--data", type=Path, required=True, help="clip manifest")
    bd.add_argument("--out", type=Path, required=True, help="database folder to create")
    bd.add_argument("--splits", nargs="+", default=["train"], help="manifest splits to include (default: train)")
    bd.add_argument(
        "--index",
        choices=("hnsw", "ivf"),
        default="hnsw",
        help="index above 50 000 items (smaller databases search exactly): HNSW graph or IVF lists",
    )
    bd.set_defaults(func=_cmd_db_build)
    _add_train(sub)
    _add_eval(sub)
    _add_data(sub, common)
    _add_default_model(sub, common)

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
        "--calibrate-decoder",
        type=Path,
        metavar="MANIFEST",
        help="fit the per-band correction of the VAE decoder's log-mel on 300 training clips of this corpus "
        "manifest and build it into the decoder graph (docs/default_model.md)",
    )
    p.add_argument(
        "--guidance-rescale",
        type=_unit_fraction,
        default=0.0,
        metavar="PHI",
        help="build guidance rescaling into the denoiser graph: the guided prediction is pulled toward the "
        "conditional one's spread by PHI in [0, 1] (Lin et al. 2024; 0.7 is usual; default 0: plain guidance)",
    )
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=_cmd_export)

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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("plans", help="TensorRT plans for a bundle")
    psub = p.add_subparsers(dest="plans_command", metavar="ACTION")
    psub.required = True
    b = psub.add_parser("build", parents=[common], help="build fp16 plans for this machine's GPU and TensorRT version")
    b.add_argument("bundle", type=Path)
    p.set_defaults(func=_cmd_plans)

    p = sub.add_parser("configs", help="list the named model configs with their sizes (needs torch)")
    p.add_argument("names", nargs="*", help="configs to show (default: all)")
    p.add_argument("--json", action="store_true", help="print the full resolved configs as JSON")
    p.set_defaults(func=_cmd_configs)


def _cmd_default_model(args: argparse.Namespace) -> int:
    from reaudio.engine.bundle.default_model import bundle_path, pack_path

    if args.action == "path":
        print(f"pack:   {pack_path()}\nbundle: {bundle_path()}")
        return 0
    _need_training_side("train,export")
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
    if args.action == "calibrate-decoder":
        from reaudio.engine.bundle.default_model import pack_path

        from .decoder_calibration import calibrate_pack

        pack = args.pack or pack_path()
        fitted = calibrate_pack(pack, args.data, clips=args.clips)
        print(
            f"{pack}: decoder calibration fitted on {args.data} ({_sharpening(fitted)}); "
            "run `reaudio default-model assemble --force`"
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


def _mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**20


def _add_default_model(sub, common) -> None:
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
    c = dsub.add_parser(
        "calibrate-decoder",
        parents=[common],
        help="maintainers: fit the per-band correction of the decoder's log-mel on training clips (torch)",
    )
    c.add_argument("--data", type=Path, required=True, help="the corpus manifest the model was trained on")
    c.add_argument("--clips", type=int, default=300, help="training clips to fit on, evenly spread (default 300)")
    c.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    g = dsub.add_parser(
        "guidance-rescale",
        parents=[common],
        help="maintainers: build guidance rescaling into the pack's assembled denoiser (0: plain guidance)",
    )
    g.add_argument("factor", type=_unit_fraction, metavar="PHI", help="rescale factor in [0, 1] (0.7 is usual)")
    g.add_argument("--measured", help="where the choice was scored (recorded in pack.json's provenance)")
    g.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
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
        "manifest", type=Path, help="the corpus manifest (reaudio data build-sfx --out DIR: DIR/manifest.jsonl)"
    )
    la.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    p.set_defaults(func=_cmd_default_model)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reaudio.training``: the same command line as ``reaudio``."""
    from reaudio.engine.cli import main as reaudio_main

    return reaudio_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
