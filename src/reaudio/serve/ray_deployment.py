"""``reaudio serve --ray``: the same application on Ray Serve, for more than one machine.

Two deployments. ``Generator`` replicas each hold an engine and a :class:`StepBatcher` and stream a
request's progress and result back; Ray Serve routes requests to them and scales their number
(``--replicas``, ``--max-replicas``). The ingress is the FastAPI application of one
:class:`ClipService` (one durable queue and one library, on the machine that holds them), whose
batcher is :class:`RemoteBatcher`: the same interface, with the denoising done by the replicas.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import replace

from reaudio.engine.planning import Request
from reaudio.engine.step_batching import Ticket

from .clip_service import ServiceConfig

log = logging.getLogger(__name__)


class RemoteBatcher:
    """:class:`~reaudio.engine.step_batching.StepBatcher`'s interface over a ``Generator`` deployment:
    each submitted request is one streaming call, followed on its own thread."""

    def __init__(self, handle) -> None:
        self._handle = handle.options(stream=True)
        self._tickets: set[Ticket] = set()
        self._lock = threading.Lock()
        self.steps_run = 0

    def submit(self, request: Request, on_step=None) -> Ticket:
        ticket = Ticket(request, on_step=on_step)
        with self._lock:
            self._tickets.add(ticket)
        threading.Thread(target=self._follow, args=(ticket,), name="reaudio-remote", daemon=True).start()
        return ticket

    def _follow(self, ticket: Ticket) -> None:
        stream = self._handle.generate.remote(ticket.request)
        try:
            for kind, value in stream:
                if ticket.cancelled:
                    stream.cancel()
                    ticket.future.cancel()
                    return
                if kind == "step":
                    ticket.step, ticket.steps = value
                    self.steps_run += 1
                else:
                    ticket.future.set_result(value)
                    return
            ticket.future.set_exception(RuntimeError("the generator ended without a result"))
        except Exception as exc:  # the replica's error, or the request's own
            if not ticket.future.done():
                ticket.future.set_exception(exc)
        finally:
            with self._lock:
                self._tickets.discard(ticket)

    @property
    def queued(self) -> int:
        with self._lock:
            return sum(1 for t in self._tickets if t.step == 0)

    @property
    def active(self) -> int:
        with self._lock:
            return sum(1 for t in self._tickets if t.step > 0)

    def run(self, stop: threading.Event) -> None:
        stop.wait()

    def fail_all(self) -> None:
        pass


class GeneratorReplica:
    """A ``Generator`` replica: an engine and its step batcher; ``generate`` streams a request's
    progress as ("step", (n, N)) and ends with ("result", Result)."""

    def __init__(self, config: ServiceConfig) -> None:
        from reaudio.engine.bundle.default_model import resolve_bundle
        from reaudio.engine.pipeline import Engine
        from reaudio.engine.step_batching import StepBatcher

        engine = Engine.from_bundle(
            resolve_bundle(config.bundle),
            backend=config.backend,
            threads=config.threads,
            precision=config.precision,
            audio_root=config.audio_root,
        )
        self.batcher = StepBatcher(engine, config.slots, config.batching, config.fill_wait_s)
        self._stop = threading.Event()
        threading.Thread(target=self.batcher.run, args=(self._stop,), name="reaudio-batcher", daemon=True).start()

    async def generate(self, request: Request):
        import asyncio

        ticket = self.batcher.submit(request)
        seen = -1
        try:
            while not ticket.future.done():
                if ticket.step != seen:
                    seen = ticket.step
                    yield "step", (ticket.step, ticket.steps)
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            ticket.cancel()  # the caller went away: the lane leaves at the next step
            raise
        yield "result", ticket.future.result()


class IngressReplica:
    """The ingress: one :class:`ClipService` whose batcher is the ``Generator`` replicas."""

    def __init__(self, generator, config: ServiceConfig, token: str | None, replicas: int) -> None:
        from .clip_service import ClipService

        # The ingress feeds every replica: its dispatch window spans them all.
        self.service = ClipService(replace(config, slots=config.slots * replicas), batcher=RemoteBatcher(generator))
        self.service.start()
        self.token = token

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.service, self.token)


def application(config: ServiceConfig, token: str | None = None, replicas: int = 1, max_replicas: int | None = None):
    """The Ray Serve application (``serve.run`` it): ``max_replicas`` above ``replicas`` lets Ray Serve
    autoscale the generators between the two."""
    from ray import serve

    scaling = (
        {"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas}}
        if max_replicas and max_replicas > replicas
        else {"num_replicas": replicas}
    )
    generator = serve.deployment(GeneratorReplica, name="Generator", max_ongoing_requests=2 * config.slots, **scaling)
    # The ingress waits on HTTP and on the generators: it reserves no CPU of its own.
    ingress = serve.deployment(
        serve.ingress()(IngressReplica), name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": 0}
    )
    widest = max(replicas, max_replicas or 1)
    return ingress.bind(generator.bind(config), config, token, widest)


def serve_on_ray(config: ServiceConfig, args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    # Replicas do not run in this folder: every path absolute.
    config = replace(
        config,
        library=config.library.resolve(),
        bundle=config.bundle.resolve() if config.bundle else None,
        audio_root=config.audio_root.resolve() if config.audio_root else None,
    )
    ray.init(address=args.ray_address, include_dashboard=False, ignore_reinit_error=True)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application(config, args.token, args.replicas, args.max_replicas), name="reaudio", route_prefix="/")
    print(f"reaudio serve --ray: http://{args.host}:{args.port}/v1/health; clips in {config.library}")
    end = time.monotonic() + args.stop_after if args.stop_after else None
    try:
        while end is None or time.monotonic() < end:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
