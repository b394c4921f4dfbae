"""``reaudio serve`` as a process on 127.0.0.1 (it stops by itself): killed with SIGKILL mid-load and
started again, it finishes every accepted job exactly once; the client; the loopback rule."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from reaudio.client import Client, ServiceError  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(bundle, library, port, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "reaudio.engine.cli", "-q", "serve", "--bundle", str(bundle), "--library"]
    cmd += [str(library), "--port", str(port), "--backend", "cpu", "--threads", "1", "--stop-after", "120", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = Client(f"http://127.0.0.1:{port}", timeout=5)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited: {proc.stderr.read()[-2000:]}")
        try:
            client.health()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the service did not answer within 60 s")


def test_a_service_killed_mid_load_finishes_every_accepted_job_exactly_once(tiny_artifacts, tmp_path):
    port, library = _free_port(), tmp_path / "lib"
    proc = _start(tiny_artifacts / "bundle", library, port, "--slots", "2")
    client = Client(f"http://127.0.0.1:{port}")
    try:
        jobs = [client.submit(f"sound {i}", steps=150, duration=1.0, idempotency_key=f"k{i}")["id"] for i in range(6)]
        client.wait(jobs[0], timeout=60)
        assert client.status(jobs[-1])["status"] in ("queued", "running")  # killed with work left
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = _start(tiny_artifacts / "bundle", library, port)
    try:
        again = client.submit("sound 3", steps=150, duration=1.0, idempotency_key="k3")  # a client's retry
        assert again["id"] == jobs[3]
        finals = [client.wait(job, timeout=90) for job in jobs]
        assert [f["status"] for f in finals] == ["done"] * 6
        keys = [json.loads(line)["key"] for line in (library / "library.jsonl").read_text().splitlines()]
        assert sorted(keys) == sorted(f["clips"][0]["key"] for f in finals)  # each once, none lost
        audio = client.audio(jobs[5])
        assert audio[:4] == b"RIFF" and len(audio) > 1000
        tone = tmp_path / "bell.wav"
        sf.write(tone, (0.3 * np.sin(np.arange(6000) * 0.3)).astype(np.float32), 8000)
        alike = client.wait(client.submit("a bell", reference=[tone], steps=3)["id"], timeout=60)  # an upload
        assert alike["clips"][0]["neighbours"] == [{"id": "reference:bell.wav", "caption": "a bell"}]
        with pytest.raises(ServiceError) as refused:
            client.submit("x", steps=0)
        assert refused.value.status == 422 and refused.value.detail[0]["field"] == "steps"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_listening_beyond_loopback_needs_a_token(tiny_artifacts, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "reaudio.engine.cli", "serve", "--bundle", str(tiny_artifacts / "bundle")]
        + ["--library", str(tmp_path / "lib"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 2 and "--token" in proc.stderr
    assert not (tmp_path / "lib").exists()
