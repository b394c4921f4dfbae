"""The training side's commands of ``reaudio``: train, eval, data, configs, db build, and the
decoder calibration (``export --calibrate-decoder``, ``default-model calibrate-decoder``).

Registered with the one ``reaudio`` console script through the ``reaudio.commands`` entry point
(:mod:`reaudio.engine.plugins`), after the export side's commands, which it extends. Importing this
module needs no torch; each command that does says how to install it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reaudio.engine import settings
from reaudio.engine.stages.backends import BACKENDS, PRECISIONS
from reaudio.export.commands import describe_sharpening, need_torch

from .lr_schedule import LR_DECAYS
from .sfx_sources import HELDOUT_PACKAGES, PACKAGES, refuse_reserved

#: The paper's retrieval-type rows (`eval --retrieval-types`), by the value that selects each.
RETRIEVAL_TYPE_ROWS = {
    "none": "none (k=0)",
    "captions": "neighbours' captions only",
    "audio": "neighbours' audio only",
    "both": "captions and audio",
}


def _cmd_configs(args: argparse.Namespace) -> int:
    need_torch()
    from .model_sizes import describe_configs

    print(describe_configs(args.names or None, json_output=args.json))
    return 0


def _cmd_db_build(args: argparse.Namespace) -> int:
    need_torch()
    from reaudio.models.configs import load_config

    from .database import build_database_from_manifest

    db = build_database_from_manifest(
        args.data, args.clap, load_config(args.config), args.out, splits=tuple(args.splits), index=args.index
    )
    print(f"{args.out}: {len(db)} clip(s)")
    return 0


def _train_job(args: argparse.Namespace):
    """The :class:`~reaudio.training.run.TrainJob` of ``reaudio train``'s flags."""
    from .run import TrainJob
    from .trainer import TrainConfig

    ema = args.ema_decay if args.ema_decay is not None else (0.999 if args.model == "ldm" else 0.0)
    config = TrainConfig(
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
        single_context_dropout=args.single_context_dropout,
        min_snr_gamma=args.min_snr_gamma,
        loudness_db=args.loudness_db,
        kl_weight=args.kl_weight,
        discriminator_width=args.discriminator_width,
        segment_seconds=args.segment_seconds,
        time_limit_minutes=args.time_limit,
    )
    run_fields = {f for f in TrainJob.__dataclass_fields__ if f not in ("train", "progress")}
    return TrainJob(train=config, progress=not args.quiet, **{f: getattr(args, f) for f in run_fields})


def _cmd_train(args: argparse.Namespace) -> int:
    need_torch()
    from .run import train

    summary = train(_train_job(args))
    if not args.quiet and args.payload_out is not None:
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
    p = sub.add_parser("train", help="train a component: clap, vae, vocoder, band-extension or ldm (needs torch)")
    p.add_argument("model", choices=("clap", "vae", "vocoder", "band-extension", "ldm"))
    p.add_argument(
        "--config",
        help="family config: a name (tiny, sfx-small, …) or a JSON file (ldm --payload: default the payload's)",
    )
    p.add_argument("--data", type=Path, help="clip list (JSONL: id, audio, caption, source, split)")
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
        "--single-context-dropout",
        type=float,
        default=0.0,
        help="ldm: drop one retrieved context (captions or audio) while the other stays, each on its own draw",
    )
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
        "(a checkpoint folder, or a default-model pack: its encoder, decoder and decoder calibration); "
        "band-extension: hear those mels on half the steps",
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
    p.add_argument("--database", type=Path, help="ldm: retrieval database built over the training clips")
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
    need_torch()
    import json

    from .evaluate import EvalConfig, ablation, evaluate

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: use 1 or more CPU threads")
        import torch

        torch.set_num_threads(args.threads)  # the scoring side (aisfx, CLAP, label classifier)

    def config(k, bundle=None, sub=None, neighbour_context=None):
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
            neighbour_context=neighbour_context or args.neighbour_context,
            init=args.init,
            strength=args.strength,
            candidates=args.candidates,
            threads=args.threads,
            progress=not args.quiet,
            score_rate=args.score_rate,
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
    elif args.retrieval_types:
        if args.bundle is None:
            raise ValueError("--retrieval-types needs --bundle")
        rows = [
            (RETRIEVAL_TYPE_ROWS[kind], config(0, sub="none"))
            if kind == "none"
            else (RETRIEVAL_TYPE_ROWS[kind], config(args.k, sub=kind, neighbour_context=kind))
            for kind in args.retrieval_types
        ]
        print(ablation(rows, args.out))
    else:
        if args.bundle is None:
            raise ValueError("eval needs --bundle (or --compare rows)")
        metrics = evaluate(config(args.k))
        print(json.dumps({k: v for k, v in metrics.items() if k != "settings"}, indent=2))
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="generate for a clip list's test captions and score FAD, KL, IS, CLAP score (needs torch)"
    )
    p.add_argument("--bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="clip list with train and test splits")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, report.md, long_tail.png")
    p.add_argument("--split", default="test", help="split of the clip list to score: test, or heldout (zero-shot)")
    # The clip settings an evaluation varies, as `generate` declares them.
    varied = ("retrieval", "neighbour_context", "k", "steps", "guidance", "sampler", "init", "strength")
    settings.add_arguments(p, (*varied, "candidates", "seed"))
    p.add_argument("--ks", type=int, nargs="+", help="ablation: evaluate at each k and write ablation.md")
    p.add_argument(
        "--retrieval-types",
        nargs="+",
        choices=tuple(RETRIEVAL_TYPE_ROWS),
        help="ablation: evaluate each retrieval type (none: k = 0; captions, audio: the neighbours' captions or "
        "audio alone; both) at --k and write ablation.md",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME=BUNDLE[@K]",
        help="ablation rows from different bundles (e.g. separately trained context types)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for generation and scoring (default: all cores; fewer beside a training run)",
    )
    p.add_argument("--limit", type=int, help="score at most this many test clips")
    p.add_argument(
        "--score-rate",
        type=int,
        choices=(22050, 44100),
        help="score at this rate (default: the bundle's): real clips read at it, full-band copies where the "
        "corpus kept them above the models' mel rate; generated clips resampled to it. 44100 puts a 22.05-kHz "
        "bundle and a band-extended one on one scale",
    )
    p.add_argument("--backbone", default="aisfx", help="aisfx, or package.module:factory for your own weights")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="which of the bundle's graphs to score (int8: after `reaudio quantize`)",
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_data(args: argparse.Namespace) -> int:
    need_torch()
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
        print(f"clip list: {args.out / 'manifest.jsonl'}  report: {args.out / 'report.json'}")
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
    i = dsub.add_parser("import", parents=[common], help="CSV/JSONL of (audio, caption[, label, source]) → a clip list")
    i.add_argument("source", type=Path)
    i.add_argument("--out", type=Path, required=True, help="clip list to write (JSONL)")
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


def _cmd_calibrate_decoder(args: argparse.Namespace) -> int:
    need_torch("train,export")
    from reaudio.engine.bundle.default_model import pack_path

    from .decoder_calibration import calibrate_pack

    pack = args.pack or pack_path()
    fitted = calibrate_pack(pack, args.data, clips=args.clips)
    print(
        f"{pack}: decoder calibration fitted on {args.data} ({describe_sharpening(fitted)}); "
        "run `reaudio default-model assemble --force`"
    )
    return 0


def _fit_export_calibration(vae, mel_cfg, manifest: Path):
    """``export --calibrate-decoder``: the calibration layer of ``vae``'s decoder, fitted on ``manifest``."""
    from reaudio.models.mel_calibration import MelCalibrationLayer

    from .decoder_calibration import calibrate_decoder

    fitted = calibrate_decoder(vae, mel_cfg, manifest)
    print(f"decoder calibration fitted on {manifest} ({describe_sharpening(fitted)})")
    return MelCalibrationLayer(fitted)


def register(sub, common, tables: dict) -> None:
    """Add train, eval, data, configs and ``db build``; extend ``export`` and ``default-model``."""
    bd = tables["db"].add_parser(
        "build", parents=[common], help="build a database over a clip list with a CLAP (torch)"
    )
    bd.add_argument("--clap", type=Path, required=True, help="CLAP checkpoint folder")
    bd.add_argument("--config", required=True, help="family config name or JSON")
    bd.add_argument("--data", type=Path, required=True, help="clip list")
    bd.add_argument("--out", type=Path, required=True, help="database folder to create")
    bd.add_argument(
        "--splits", nargs="+", default=["train"], help="splits of the clip list to include (default: train)"
    )
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
    p = sub.add_parser("configs", help="list the named model configs with their sizes (needs torch)")
    p.add_argument("names", nargs="*", help="configs to show (default: all)")
    p.add_argument("--json", action="store_true", help="print the full resolved configs as JSON")
    p.set_defaults(func=_cmd_configs)

    export = tables["export"]
    export.add_argument(
        "--calibrate-decoder",
        type=Path,
        metavar="MANIFEST",
        help="fit the per-band correction of the VAE decoder's log-mel on 300 training clips of this corpus "
        "clip list and build it into the decoder graph (docs/default_model.md)",
    )
    export.set_defaults(fit_decoder_calibration=_fit_export_calibration)
    c = tables["default-model"].add_parser(
        "calibrate-decoder",
        parents=[common],
        help="maintainers: fit the per-band correction of the decoder's log-mel on training clips (torch)",
    )
    c.add_argument("--data", type=Path, required=True, help="the clip list the model was trained on")
    c.add_argument("--clips", type=int, default=300, help="training clips to fit on, evenly spread (default 300)")
    c.add_argument("--pack", type=Path, help="the pack to change (default: the embedded one)")
    c.set_defaults(func=_cmd_calibrate_decoder)


#: Runs after the export side's registration, whose ``export`` and ``default-model`` it extends.
register.after = ("export",)
