"""The service's Prometheus metrics: queue, slots, steps/s, job latencies and HTTP answers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

#: Job latency buckets (s): a short clip alone takes seconds on a CPU, a queue under load minutes.
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))


class _Steps:
    """Denoising steps run, read from the batcher when scraped."""

    def __init__(self, service) -> None:
        self.service = service

    def collect(self):
        family = CounterMetricFamily("reaudio_denoising_steps", "Denoising steps run (one per lane per step)")
        family.add_metric([], self.service.batcher.steps_run)
        yield family


class ServiceMetrics:
    def __init__(self, service) -> None:
        self.registry = CollectorRegistry()
        gauges = (
            ("reaudio_queue_length", "Jobs accepted and waiting for a slot", lambda: service.queue_length),
            ("reaudio_active_slots", "Requests being denoised now", lambda: service.active_slots),
            ("reaudio_slots", "Requests denoised together at most", lambda: service.config.slots),
            ("reaudio_steps_per_second", "Denoising steps per second over the last 10 s", service.steps_per_second),
        )
        for name, text, read in gauges:
            Gauge(name, text, registry=self.registry).set_function(read)
        self.registry.register(_Steps(service))
        self.jobs = Counter("reaudio_jobs_ended", "Jobs ended, by status", ["status"], registry=self.registry)
        self.latency = Histogram(
            "reaudio_job_latency_seconds",
            "From acceptance to the end of a job that finished (done)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answers = Counter(
            "reaudio_http_responses", "HTTP answers, by status code", ["code"], registry=self.registry
        )
        service.on_end.append(self.job_ended)

    def job_ended(self, status: str, seconds: float) -> None:
        self.jobs.labels(status).inc()
        if status == "done":
            self.latency.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
