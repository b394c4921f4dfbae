"""``reaudio serve``'s API on the tiny bundle, in process: clips are written as ``generate`` writes
them, bad requests get 4xx with field and reason and leave the service serving, idempotent retries,
cancel, the queue's limit, tokens, body limits, events, metrics and the published schema."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from reaudio.engine import settings  # noqa: E402
from reaudio.engine.jobs.bulk import GenerateJob, run_job  # noqa: E402
from reaudio.serve.app import create_app  # noqa: E402
from reaudio.serve.clip_service import ClipService, ServiceConfig  # noqa: E402
from reaudio.serve.intake import UPLOAD_FIELDS  # noqa: E402


def _config(tiny_artifacts, tmp_path, **kw) -> ServiceConfig:
    return ServiceConfig(
        library=tmp_path / "lib", bundle=tiny_artifacts / "bundle", backend="cpu", threads=1, slots=3, **kw
    )


@pytest.fixture
def service(tiny_artifacts, tmp_path):
    with ClipService(_config(tiny_artifacts, tmp_path)) as running:
        yield running


@pytest.fixture
def client(service):
    return TestClient(create_app(service))


def _wait(client, job_id, timeout=60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = client.get(f"/v1/clips/{job_id}").json()
        if status["status"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status['status']}")


def _wav(rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_a_clip_is_the_file_generate_writes_for_the_same_row(client, service, tiny_artifacts, tmp_path):
    answer = client.post("/v1/clips", json={"prompt": "a dog barks twice", "seed": 11, "steps": 6, "variations": 2})
    assert answer.status_code == 202 and answer.headers["location"] == f"/v1/clips/{answer.json()['id']}"
    done = _wait(client, answer.json()["id"])
    assert done["status"] == "done" and done["progress"] == {"step": 12, "steps": 12}
    assert [e["seed"] for e in done["clips"]] == [11, 12]
    served = client.get(f"/v1/clips/{done['id']}/audio", params={"clip": 1})
    assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a dog barks twice", "seed": 11, "steps": 6, "id": "x"}) + "\n")
    run_job(
        GenerateJob(
            prompts=prompts,
            out=tmp_path / "gen",
            bundle=tiny_artifacts / "bundle",
            backend="cpu",
            threads=1,  # as the service's: a thread count can change the order of a sum
            variations=2,
        ),
        progress=False,
        echo=lambda *a: None,
    )
    ours, rate = sf.read(io.BytesIO(served.content), dtype="float32")
    theirs, rate2 = sf.read(tmp_path / "gen" / "x-v1.wav", dtype="float32")
    # generate ran both variations in one batch, the service each in its own lane: the same numbers up
    # to the kernels' batch-dependent rounding (a 16-bit step where a sample sits on a rounding edge).
    assert rate == rate2 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max() + 2**-15
    index = [json.loads(line) for line in (service.library.index_path).read_text().splitlines()]
    assert [e["key"] for e in index] == [e["key"] for e in done["clips"]]  # library.jsonl, as generate writes


def test_bad_requests_get_4xx_with_field_and_reason_and_the_service_goes_on(client):
    cases = [
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "sampler": "euler"}, "sampler"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "init_audio": "/etc/passwd"}, "init_audio"),
        ({"prompt": "x", "inpaint": "2:1"}, "inpaint"),
        ({"prompt": "x", "inpaint": "0:1"}, "init_audio"),  # an edit needs an uploaded clip
        ({"prompt": "x", "variations": 10**9}, "variations"),
        ({"prompt": "x", "id": "../../etc"}, "id"),
        ({"prompt": "x", "k": 999}, "k"),
    ]
    for body, field in cases:
        answer = client.post("/v1/clips", json=body)
        assert answer.status_code == 422, body
        assert field in [d["field"] for d in answer.json()["detail"]], (body, answer.json())
    both = client.post("/v1/clips", json={"prompt": "x", "steps": -1, "colour": 1}).json()["detail"]
    assert {d["field"] for d in both} == {"steps", "colour"}  # one answer lists every problem
    for raw, kind in ((b"{nope", "application/json"), (b"[1, 2]", "application/json"), (b"prompt=x", "text/plain")):
        assert client.post("/v1/clips", content=raw, headers={"content-type": kind}).status_code == 422
    garbage = client.post("/v1/clips", content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"})
    assert garbage.status_code == 422
    assert client.get("/v1/clips/nope").status_code == 404
    ok = client.post("/v1/clips", json={"prompt": "still serving", "steps": 3})
    assert ok.status_code == 202 and _wait(client, ok.json()["id"])["status"] == "done"


def test_an_uploaded_start_clip_is_inpainted_and_kept_outside_the_range(client, service):
    rate = service.engine.sample_rate
    upload = _wav(rate, 1.5)
    settings_json = json.dumps({"prompt": "a bell", "inpaint": "0.5:1.0", "steps": 5})
    answer = client.post(
        "/v1/clips", data={"settings": settings_json}, files={"init_audio": ("my bell.wav", upload, "audio/wav")}
    )
    assert answer.status_code == 202, answer.json()
    done = _wait(client, answer.json()["id"])
    assert done["status"] == "done", done["error"]
    assert done["clips"][0]["settings"]["init"] == "my-bell.wav"
    got, _ = sf.read(io.BytesIO(client.get(f"/v1/clips/{done['id']}/audio").content), dtype="float32")
    original, _ = sf.read(io.BytesIO(upload), dtype="float32")
    head = int(0.4 * rate)  # before the range and its 0.1-s fade: the upload's own samples (16-bit)
    assert np.abs(got[:head] - original[:head]).max() < 2**-14
    bad = client.post(
        "/v1/clips", data={"settings": settings_json}, files={"init_audio": ("x.wav", b"not audio", "audio/wav")}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "init_audio"


def test_reference_clips_are_uploaded_as_parts_and_become_the_neighbours(client, service):
    rate = service.engine.sample_rate
    files = [("reference", (f"ref{i}.wav", _wav(rate, 0.8 + 0.2 * i), "audio/wav")) for i in range(2)]
    settings_json = json.dumps({"prompt": "a bell", "steps": 3, "reference_caption": "a small bell"})
    answer = client.post("/v1/clips", data={"settings": settings_json}, files=files)
    assert answer.status_code == 202, answer.json()
    done = _wait(client, answer.json()["id"])
    assert done["status"] == "done", done["error"]
    entry = done["clips"][0]
    assert [n["id"] for n in entry["neighbours"]] == ["reference:ref0.wav", "reference:ref1.wav"]
    assert entry["settings"]["reference"] == ["ref0.wav", "ref1.wav"] and entry["settings"]["k"] == 0
    refused = client.post("/v1/clips", json={"prompt": "a bell", "reference": ["/etc/hosts"]})
    assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "reference"


def test_a_retried_post_with_its_idempotency_key_returns_the_same_job(client):
    body = {"prompt": "a door creaks", "steps": 3}
    first = client.post("/v1/clips", json=body, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/clips", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/clips", json={**body, "steps": 4}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    taken = client.post("/v1/clips", json={"prompt": "a", "id": first.json()["clip_id"]})
    assert taken.status_code == 409


def test_cancel_a_running_job_and_refuse_to_cancel_an_ended_one(client):
    long = client.post("/v1/clips", json={"prompt": "a long drone", "steps": 400}).json()
    while client.get(f"/v1/clips/{long['id']}").json()["progress"]["step"] == 0:
        time.sleep(0.02)
    cancelled = client.delete(f"/v1/clips/{long['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.delete(f"/v1/clips/{long['id']}").status_code == 409
    assert client.delete("/v1/clips/nope").status_code == 404
    assert client.get(f"/v1/clips/{long['id']}/audio").status_code == 409
    after = client.post("/v1/clips", json={"prompt": "a tick", "steps": 3}).json()
    assert _wait(client, after["id"])["status"] == "done"


def test_a_full_queue_answers_429_with_retry_after(tiny_artifacts, tmp_path):
    service = ClipService(_config(tiny_artifacts, tmp_path, queue_max=2))  # not started: nothing leaves the queue
    try:
        client = TestClient(create_app(service))
        for _ in range(2):
            assert client.post("/v1/clips", json={"prompt": "a", "steps": 3}).status_code == 202
        full = client.post("/v1/clips", json={"prompt": "a", "steps": 3})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        metrics = client.get("/v1/metrics").text
        assert "reaudio_queue_length 2.0" in metrics
    finally:
        service.stop()


def test_a_token_guards_every_call_but_health(service):
    client = TestClient(create_app(service, token="s3cret"))
    assert client.get("/v1/health").status_code == 200
    assert client.post("/v1/clips", json={"prompt": "a"}).status_code == 401
    assert client.get("/v1/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_bodies_over_the_limit_are_refused_before_they_are_read(client):
    big = json.dumps({"prompt": "a" * 70_000}).encode()
    assert client.post("/v1/clips", content=big, headers={"content-type": "application/json"}).status_code == 413


def test_events_stream_progress_then_the_end(client):
    job = client.post("/v1/clips", json={"prompt": "a slow swell", "steps": 40}).json()
    with client.stream("GET", f"/v1/clips/{job['id']}/events") as events:
        names = [line.split(":", 1)[1].strip() for line in events.iter_lines() if line.startswith("event:")]
    assert names[-1] == "done" and names.count("progress") >= 2


def test_metrics_and_the_published_schema(client):
    done = _wait(client, client.post("/v1/clips", json={"prompt": "a pop", "steps": 3}).json()["id"])
    assert done["status"] == "done"
    text = client.get("/v1/metrics").text
    for name in ("reaudio_queue_length", "reaudio_active_slots", "reaudio_steps_per_second", "reaudio_job_latency"):
        assert name in text
    assert 'reaudio_jobs_ended_total{status="done"} 1.0' in text
    assert client.get("/docs").status_code == 404  # no page that loads scripts from outside
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/clips"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    row_settings = {s.name for s in settings.SETTINGS if s.row} - set(UPLOAD_FIELDS)  # files come as parts
    assert row_settings | {"prompt", "id"} == set(body["properties"])
    assert body["properties"]["steps"]["minimum"] == settings.by_name()["steps"].limits[0]
    assert body["additionalProperties"] is False


def test_a_job_past_its_timeout_fails_and_frees_its_slot(tiny_artifacts, tmp_path):
    with ClipService(_config(tiny_artifacts, tmp_path, job_timeout_s=0.5)) as service:
        client = TestClient(create_app(service))
        slow = client.post("/v1/clips", json={"prompt": "an endless drone", "steps": 999}).json()
        ended = _wait(client, slow["id"])
        assert ended["status"] == "failed" and "timed out after 0.5 s" in ended["error"]
        assert (
            _wait(client, client.post("/v1/clips", json={"prompt": "a tick", "steps": 2}).json()["id"])["status"]
            == "done"
        )
        assert service.active_slots == 0
