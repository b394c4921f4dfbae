"""The ``reaudio`` console script: ``generate``, ``bench``, ``audition`` and the database commands,
which need no torch, plus the commands the installed packages above the engine plug in
(:mod:`reaudio.engine.plugins`: the export and training sides, torch-free at import; each command
says what to install when torch is missing).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import settings
from .jobs.library_lock import LibraryLocked
from .plugins import command_plugins
from .stages.backends import BACKENDS, PRECISIONS
from .stages.runners import BackendUnavailable

log = logging.getLogger("reaudio")


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .audio.postprocess import PostProcess
    from .jobs.bulk import GenerateJob, run_job

    per_clip = {name: value for name, value in settings.from_arguments(args).items() if name != "loudness_lufs"}
    job = GenerateJob(
        prompts=args.prompts,
        out=args.out,
        bundle=args.bundle,
        batch_size=args.batch_size,
        audio_format=args.format,
        backend=args.backend,
        device_id=args.device_id,
        threads=args.threads,
        precision=args.precision,
        name_template=args.name_template,
        overwrite=args.overwrite,
        overwrite_foreign=args.overwrite_foreign,
        subtype=args.subtype,
        postprocess=PostProcess(
            trim_db=args.trim_db,
            sample_rate=args.sample_rate,
            loudness_lufs=args.loudness_lufs,
            true_peak_db=args.true_peak_db,
        ),
        dry_run=args.dry_run,
        cuda_graphs=args.cuda_graphs,
        audio_root=args.audio_root,
        keep_candidates=args.keep_candidates,
        **per_clip,
    )
    echo = (lambda *a, **k: None) if args.quiet and not args.dry_run else print
    if args.ray:
        from .jobs.ray_bulk import run_job_on_ray

        summary = run_job_on_ray(
            job,
            address=args.ray_address,
            num_workers=args.ray_workers,
            num_gpus_per_worker=args.num_gpus_per_worker,
            progress=not args.quiet,
            echo=echo,
        )
    else:
        summary = run_job(job, progress=not args.quiet, echo=echo)
    if not job.dry_run:
        echo(summary.describe())
        if args.audition:
            from .jobs.audition import build_audition

            echo(f"audition page: {build_audition(job.out)}")
    return 1 if summary.failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:

    from .bundle.default_model import resolve_bundle
    from .jobs.bench import BenchSettings, format_table, run_bench
    from .pipeline import Engine

    settings = BenchSettings(
        batch_sizes=tuple(args.batch_sizes),
        duration=args.duration,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        sampler=args.sampler,
    )
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    bundle = resolve_bundle(args.bundle)
    if args.compare:
        return _bench_compare(bundle, args, settings, say)
    engine = Engine.from_bundle(
        bundle,
        backend=args.backend,
        device_id=args.device_id,
        threads=args.threads,
        precision=args.precision,
        cuda_graphs=args.cuda_graphs,
    )
    return _print_report(run_bench(engine, settings, progress=say), format_table, args.json)


def _print_report(report: dict, as_table, json_to: str | None) -> int:
    """A bench report as a table, or JSON on stdout (``-``), or both a table and a JSON file."""
    import json

    if json_to == "-":
        print(json.dumps(report, indent=2))
        return 0
    print(as_table(report))
    if json_to:
        from .bundle.dataclass_io import write_json_atomic

        write_json_atomic(json_to, report)
        print(f"report: {json_to}")
    return 0


def _bench_compare(bundle: Path, args: argparse.Namespace, settings, say) -> int:
    from .jobs.bench import compare_engines, format_comparison
    from .pipeline import Engine

    engines = {}
    for config in args.compare:
        backend, _, precision = config.partition(":")
        if backend not in BACKENDS or (precision or "auto") not in PRECISIONS:
            raise ValueError(
                f"--compare {config!r}: give BACKEND:PRECISION, backends {', '.join(BACKENDS)}, "
                f"precisions {', '.join(PRECISIONS)} (e.g. cpu:fp32 openvino:bf16 auto:auto)"
            )
        engines[config] = Engine.from_bundle(
            bundle, backend=backend, threads=args.threads, precision=precision or "auto"
        )
    return _print_report(compare_engines(engines, settings, progress=say), format_comparison, args.json)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency benchmark: per-stage p50/p95, clips/s, real-time factor, memory")
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: the embedded default model)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="as for generate")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], metavar="N", help="default: 1 8")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per clip (default 4)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    p.add_argument("--sampler", choices=("ddim", "dpmpp-2m"), help="sampler (default: the bundle's)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per batch size; medians reported (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime or OpenVINO (default: all cores)")
    p.add_argument("--device-id", type=int, default=0, help="GPU index")
    p.add_argument("--cuda-graphs", action="store_true", help="replay the denoising loop as CUDA graphs (cuda)")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="BACKEND:PRECISION",
        help="time several configurations side by side, runs taking turns, e.g. cpu:fp32 cpu:int8 "
        "openvino:fp32 openvino:bf16 auto:auto (speed-up and audio distance against the first)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE ('-': JSON on stdout only)")
    p.set_defaults(func=_cmd_bench)


def _cmd_tune(args: argparse.Namespace) -> int:
    from .bundle.default_model import resolve_bundle
    from .jobs.tuning import TuneSettings, tune_locked

    bundle = resolve_bundle(args.bundle)
    tuned = TuneSettings(backends=tuple(args.backends), repeats=args.repeats, threads=args.threads)
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    report = tune_locked(bundle, tuned, progress=say)
    for backend, stages in report["choice"].items():
        chosen = ", ".join(f"{stage} {precision}" for stage, precision in stages.items())
        print(f"{backend}: {chosen} — {report['batch_estimate_s'][backend]:.2f} s for {report['batch_estimate_of']}")
    print(f"fastest here: {report['fastest_backend']} (what --backend auto now picks on this CPU model)")
    return 0


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="measure each stage's precisions on the CPU backends; --precision auto then runs the fastest "
        "that keeps the sound, and --backend auto the faster backend",
    )
    p.add_argument("bundle", type=Path, nargs="?", help="bundle folder (default: the embedded default model)")
    p.add_argument(
        "--backends", nargs="+", default=["cpu", "openvino"], choices=("cpu", "openvino"), help="default: both"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed calls per stage and precision (default 5)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.set_defaults(func=_cmd_tune)


def _cmd_audition(args: argparse.Namespace) -> int:
    from .jobs.audition import build_audition

    print(build_audition(args.library, title=args.title))
    return 0


def _cmd_db_add(args: argparse.Namespace) -> int:
    from .jobs import db_commands

    db = db_commands.add_clips(args.bundle, db_commands.read_clip_list(args.clips), backend=args.backend)
    print(f"{args.bundle}: database now holds {len(db)} clip(s)")
    return 0


def _cmd_db_remove(args: argparse.Namespace) -> int:
    from .jobs import db_commands

    before = len(db_commands.list_clips(args.bundle))
    db = db_commands.remove_clips(args.bundle, list(dict.fromkeys(args.ids)))
    print(f"{args.bundle}: removed {before - len(db)}; {len(db)} clip(s) left")
    return 0


def _cmd_db_repair(args: argparse.Namespace) -> int:
    from .jobs import db_commands

    print(db_commands.repair(args.bundle))
    return 0


def _cmd_db_list(args: argparse.Namespace) -> int:
    from .jobs import db_commands

    for item in db_commands.list_clips(args.bundle):
        print(f"{item['id']}\t{item.get('label', '')}\t{item.get('caption', '')}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="turn a prompt file into a folder of sound files (resumable)")
    p.add_argument("prompts", type=Path, help="prompt file: .txt (one per line), .csv or .jsonl")
    p.add_argument("--out", type=Path, required=True, help="output library folder")
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: the embedded default model)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8)")
    # The per-clip settings, from their one declaration; a prompt row's own value wins over each.
    settings.add_arguments(p)
    p.add_argument(
        "--format",
        choices=("wav", "flac"),
        default="wav",
        help="container: wav (BWF description in bext, INFO title) or flac (Vorbis comments)",
    )
    p.add_argument(
        "--subtype",
        choices=("PCM_16", "PCM_24", "FLOAT"),
        default="PCM_16",
        help="sample format (FLOAT: wav only; default PCM_16)",
    )
    p.add_argument(
        "--sample-rate", type=int, help="resample every clip to this rate, e.g. 44100 or 48000 (default: the model's)"
    )
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device-id", type=int, default=0, help="GPU index")
    p.add_argument("--threads", type=int, help="CPU threads for onnxruntime or OpenVINO (default: all cores)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: fp16 graphs on GPU backends when the bundle has them; on the CPU each stage's "
        "precision as `reaudio tune` chose it for this backend (fp32 in an untuned bundle); int8: the "
        "quantised CPU graphs made by `reaudio quantize` (faster, slightly different sound); bf16: "
        "--backend openvino's bf16 arithmetic on the fp32 graphs (CPUs with AMX or AVX-512 BF16); "
        "int8-bf16: OpenVINO on the int8 graphs, bf16 wherever they are not int8",
    )
    p.add_argument(
        "--name-template",
        default="{id}-v{variation}",
        help="file name without extension; fields {id} {slug} {seed} {variation}",
    )
    p.add_argument("--trim-db", type=float, help="trim edges quieter than this many dB below the peak")
    p.add_argument(
        "--true-peak-db",
        type=float,
        help="true-peak ceiling in dBTP (e.g. -1), met by lowering the gain, never by clipping",
    )
    p.add_argument(
        "--audio-root",
        type=Path,
        metavar="DIR",
        help="folder the database's relative audio paths start from, for --init neighbour (the embedded "
        "default model's: a corpus built by `reaudio data build-sfx --out DIR`)",
    )
    p.add_argument(
        "--keep-candidates", action="store_true", help="also write the other candidates, ranked: NAME-c2, NAME-c3, …"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="make again the clips of --out that were made with other settings or another bundle",
    )
    p.add_argument(
        "--overwrite-foreign",
        action="store_true",
        help="replace files at planned names that this library did not make (without it they stop the job)",
    )
    p.add_argument(
        "--cuda-graphs", action="store_true", help="replay the denoising loop as CUDA graphs (--backend cuda)"
    )
    p.add_argument("--audition", action="store_true", help="write --out/index.html (reaudio audition) at the end")
    r = p.add_argument_group("Ray (pip install 'reaudio[ray]')")
    r.add_argument("--ray", action="store_true", help="run on a Ray cluster with Ray Data (an actor pool of engines)")
    r.add_argument("--ray-address", help="cluster address (default: RAY_ADDRESS, else a local instance)")
    r.add_argument("--ray-workers", type=int, default=2, help="engines in the actor pool (default 2)")
    r.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="GPUs per engine (default 0: CPU slots)")
    p.set_defaults(func=_cmd_generate)


def make_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction, argparse.ArgumentParser]:
    """The root parser, its subcommand table and the flags every subcommand also accepts."""
    parser = argparse.ArgumentParser(
        prog="reaudio", description="Retrieval-augmented text-to-audio: train, export, generate."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar; warnings and errors only")
    # The same flags after the subcommand (`reaudio generate … --quiet`); SUPPRESS keeps
    # a flag given before the subcommand from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="quiet")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add = sub.add_parser

    def add_parser(name, **kwargs):
        return _add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # every subcommand accepts -v/-q too
    return parser, sub, common


def add_engine_commands(sub, common) -> argparse._SubParsersAction:
    """Add ``generate`` and ``db add/remove/list``; returns the ``db`` action table for more actions."""
    _add_generate(sub)
    _add_bench(sub)
    _add_tune(sub)
    au = sub.add_parser("audition", help="write LIBRARY/index.html: hear, filter, sort and mark a library's clips")
    au.add_argument("library", type=Path, help="a `reaudio generate --out` folder")
    au.add_argument("--title", help="page title (default: the folder's name and clip count)")
    au.set_defaults(func=_cmd_audition)
    p = sub.add_parser("db", help="the bundle's retrieval database: add your own clips, remove, list")
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    a = dbsub.add_parser(
        "add", parents=[common], help="add (audio, caption) clips: CSV/JSONL or a folder with .txt sidecars"
    )
    a.add_argument("clips", type=Path)
    a.add_argument("--bundle", type=Path, required=True)
    a.add_argument("--backend", default="cpu", choices=("auto", "cpu", "cuda"))
    a.set_defaults(func=_cmd_db_add)
    r = dbsub.add_parser("remove", parents=[common], help="remove clips by id")
    r.add_argument("ids", nargs="+")
    r.add_argument("--bundle", type=Path, required=True)
    r.set_defaults(func=_cmd_db_remove)
    f = dbsub.add_parser(
        "repair",
        parents=[common],
        help="make a bundle load again after a db add/remove of an older reaudio was interrupted",
    )
    f.add_argument("--bundle", type=Path, required=True)
    f.set_defaults(func=_cmd_db_repair)
    l_ = dbsub.add_parser("list", parents=[common], help="list the database's clips")
    l_.add_argument("--bundle", type=Path, required=True)
    l_.set_defaults(func=_cmd_db_list)
    return dbsub


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, configure logging, run the chosen command; user errors exit with status 2."""
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, LibraryLocked, BackendUnavailable) as exc:
        print(f"reaudio {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (NotADirectoryError, PermissionError, IsADirectoryError) as exc:
        print(
            f"reaudio {args.command}: error: {exc.filename or exc}: {exc.strerror or exc} "
            "(choose a folder you can write to)",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRORS:
            raise
        where = exc.filename or getattr(args, "out", None) or "the output folder"
        print(
            f"reaudio {args.command}: error: {where}: {os.strerror(exc.errno)} "
            "(free some space or choose another folder; rerun to resume)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("reaudio: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


#: Storage errors a user fixes by freeing space or choosing another folder: one line, no traceback.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def build_parser() -> argparse.ArgumentParser:
    """``reaudio``'s parser: the engine's commands, then the training side's where it is installed."""
    parser, sub, common = make_parser()
    tables = {"db": add_engine_commands(sub, common)}
    for _name, register in command_plugins():
        register(sub, common, tables)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``reaudio`` console script."""
    try:
        return run(build_parser(), argv)
    except BrokenPipeError:
        # The reader went away (`reaudio generate … --dry-run | head`): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
