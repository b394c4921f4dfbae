"""``reaudio serve --ray``: the same application on Ray Serve (a local Ray instance, two generator
replicas); a clip made on a replica is the one the engine makes for the same request."""

from __future__ import annotations

import io
import socket

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from reaudio.client import Client  # noqa: E402
from reaudio.engine.pipeline import Engine, Request  # noqa: E402
from reaudio.serve.clip_service import ServiceConfig  # noqa: E402
from reaudio.serve.ray_deployment import application  # noqa: E402

pytestmark = pytest.mark.ray


def test_requests_spread_over_generator_replicas_and_land_in_one_library(tiny_artifacts, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServiceConfig(
        library=tmp_path / "lib", bundle=tiny_artifacts / "bundle", backend="cpu", threads=1, slots=2
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(config, replicas=2), name="reaudio", route_prefix="/")
        client = Client(f"http://127.0.0.1:{port}")
        assert client.health()["slots"] == 4  # two replicas of two slots
        jobs = [client.submit(f"sound {i}", steps=12, duration=1.0, seed=i)["id"] for i in range(5)]
        finals = [client.wait(job, timeout=120) for job in jobs]
        assert [f["status"] for f in finals] == ["done"] * 5
        lines = (tmp_path / "lib" / "library.jsonl").read_text().splitlines()
        assert len(lines) == 5
        served, _ = sf.read(io.BytesIO(client.audio(jobs[2])), dtype="float32")
        engine = Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)
        alone = engine.generate([Request(prompt="sound 2", seed=2, steps=12, duration=1.0)])[0].waveform
        assert served.shape == alone.shape and np.abs(served - alone).max() <= 2**-15  # 16-bit file
        cancelled = client.submit("a long drone", steps=999, duration=1.0)["id"]
        assert client.cancel(cancelled)["status"] == "cancelled"
        assert client.wait(client.submit("after", steps=5, duration=1.0)["id"], timeout=60)["status"] == "done"
    finally:
        serve.shutdown()
        ray.shutdown()
