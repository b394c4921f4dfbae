"""``reaudio serve``, a plug-in of the ``reaudio`` console script (``reaudio.commands`` entry point)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import threading
from pathlib import Path

from reaudio.engine import settings
from reaudio.engine.stages.backends import BACKENDS, PRECISIONS
from reaudio.engine.step_batching import MODES

log = logging.getLogger(__name__)

INSTALL = "pip install 'reaudio[serve]'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_defaults() -> list[str]:
    """The settings ``reaudio serve`` takes a default of: a row's, bar those that edit an uploaded clip."""
    uploaded = {"init_audio", "inpaint", "extend", "reference"}
    return [s.name for s in settings.SETTINGS if s.flag and not s.finish and s.row and s.name not in uploaded]


def register(sub, common, tables: dict) -> None:
    p = sub.add_parser(
        "serve",
        help="a local HTTP service for sound-design tools: clip requests in, library files out",
        description="Serve the engine over HTTP (its OpenAPI schema at /openapi.json). Requests share denoising steps "
        "(step-level batching); accepted jobs are stored durably and finish exactly once, also "
        "across a restart.",
    )
    p.add_argument("--bundle", type=Path, help="model bundle folder (default: the embedded default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8600, help="port (default 8600)")
    p.add_argument("--library", type=Path, default=Path("reaudio-library"), help="library folder clips go to")
    p.add_argument("--token", help="bearer token every call but /v1/health must carry (needed off loopback)")
    p.add_argument("--slots", type=int, default=4, help="requests denoised together (default 4)")
    p.add_argument(
        "--batching",
        choices=MODES,
        default="step",
        help="step: requests join the running batch at its next step (default); request: a batch waits "
        "to fill, then runs to its end",
    )
    p.add_argument("--queue-max", type=int, default=64, help="jobs waiting or running at most; then 429 (default 64)")
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds a job may run (default 600)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest start clip upload (default 32 MB)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="as for generate")
    p.add_argument("--threads", type=int, help="CPU threads for the backend (default: all cores)")
    p.add_argument("--format", choices=("wav", "flac"), default="wav", help="container of the clips (default wav)")
    p.add_argument("--subtype", choices=("PCM_16", "PCM_24", "FLOAT"), default="PCM_16")
    p.add_argument(
        "--audio-root",
        type=Path,
        metavar="DIR",
        help="folder the database's relative audio paths start from (init=neighbour)",
    )
    p.add_argument("--stop-after", type=float, metavar="S", help="stop by itself after S seconds (tests, benchmarks)")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (pip install 'reaudio[serve,ray]')")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve generator replicas at least (default 1)")
    p.add_argument("--max-replicas", type=int, help="let Ray Serve autoscale generator replicas up to this many")
    # Defaults for every request (a request's own value wins), in the settings' own --help groups.
    settings.add_arguments(p, service_defaults())
    p.set_defaults(func=_cmd_serve)


def config_from(args: argparse.Namespace):
    from reaudio.engine.audio.postprocess import PostProcess

    from .clip_service import ServiceConfig

    for name in ("slots", "queue_max"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    if args.job_timeout <= 0 or args.max_upload_mb <= 0:
        raise ValueError("--job-timeout and --max-upload-mb must be positive")
    names = service_defaults()
    return ServiceConfig(
        library=args.library,
        bundle=args.bundle,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        slots=args.slots,
        batching=args.batching,
        queue_max=args.queue_max,
        job_timeout_s=args.job_timeout,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        audio_format=args.format,
        subtype=args.subtype,
        postprocess=PostProcess(),
        audio_root=args.audio_root,
        defaults={k: v for k, v in settings.from_arguments(args, names).items() if v is not None},
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and not args.token:
        raise ValueError(
            f"--host {args.host} is reachable from other machines: pass --token TOKEN (clients send "
            "Authorization: Bearer TOKEN), or keep the default 127.0.0.1"
        )
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError(f"reaudio serve needs the service's libraries: {INSTALL}") from None
    config = config_from(args)
    if args.ray:
        from .ray_deployment import serve_on_ray

        return serve_on_ray(config, args)
    from .app import create_app
    from .clip_service import ClipService

    with ClipService(config) as service:
        server = uvicorn.Server(
            uvicorn.Config(create_app(service, args.token), host=args.host, port=args.port, log_level="info")
        )
        if args.stop_after:
            timer = threading.Timer(args.stop_after, lambda: setattr(server, "should_exit", True))
            timer.daemon = True  # a service stopped earlier does not wait for it
            timer.start()
        print(
            f"reaudio serve: http://{args.host}:{args.port}/v1/health (schema /openapi.json), clips in {config.library}"
        )
        # uvicorn stops on SIGINT/SIGTERM and raises the signal again once stopped; with these
        # handlers that raise returns, so the service below stops cleanly too (exit status 0).
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, lambda *_: None)
        server.run()
    return 0
