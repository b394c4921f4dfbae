"""A small client of ``reaudio serve`` (standard library only: a tool can vendor this one file).

from reaudio.client import Client
client = Client("http://127.0.0.1:8600")
job = client.submit("glass shatters on a tiled floor", duration=3.0, seed=7)
client.wait(job["id"], on_progress=lambda s: print(s["progress"]))
client.download(job["id"], "glass.wav")
"""

from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

FINAL = ("done", "failed", "cancelled")


class ServiceError(RuntimeError):
    """An answer other than success: ``status`` (HTTP code), ``detail`` (the service's reason; for 422
    a list of ``{"field", "reason"}``), ``retry_after`` (seconds, for 429)."""

    def __init__(self, status: int, detail, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail, self.retry_after = status, detail, retry_after


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8600", token: str | None = None, timeout: float = 30.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    # -- calls ------------------------------------------------------------------------------------

    def health(self) -> dict:
        return self._json("GET", "/v1/health")

    def submit(
        self,
        prompt: str,
        init_audio: str | Path | None = None,
        reference: list[str | Path] | None = None,
        idempotency_key: str | None = None,
        **fields,
    ) -> dict:
        """Ask for a clip; ``fields`` are a prompt row's (duration, seed, steps, variations, inpaint, …).
        ``init_audio`` (a start clip) and ``reference`` (clips to sound like): local files, uploaded. A
        retry with the same ``idempotency_key`` (one is made when not given) returns the same job."""
        record = {"prompt": prompt, **fields}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        files = [("init_audio", Path(init_audio))] if init_audio is not None else []
        files += [("reference", Path(r)) for r in reference or ()]
        if not files:
            return self._json("POST", "/v1/clips", json.dumps(record).encode(), "application/json", headers)
        body, content_type = _multipart({"settings": json.dumps(record)}, files)
        return self._json("POST", "/v1/clips", body, content_type, headers)

    def status(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/clips/{job_id}")

    def cancel(self, job_id: str) -> dict:
        return self._json("DELETE", f"/v1/clips/{job_id}")

    def wait(self, job_id: str, timeout: float = 600.0, on_progress: Callable[[dict], None] | None = None) -> dict:
        """Follow a job's events until it ends; its final status (``ServiceError`` unless done)."""
        deadline = time.monotonic() + timeout
        for event, data in self.events(job_id, timeout):
            if event == "progress" and on_progress is not None:
                on_progress(data)
            if event in FINAL:
                if event != "done":
                    raise ServiceError(200, f"job {job_id} {event}: {data.get('error')}")
                return data
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"job {job_id} did not end within {timeout:g} s")

    def events(self, job_id: str, timeout: float = 600.0) -> Iterator[tuple[str, dict]]:
        """(event, data) pairs of the job's Server-Sent Events stream."""
        request = self._request("GET", f"/v1/clips/{job_id}/events")
        with self._open(request, timeout) as answer:
            event = "message"
            for raw in answer:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    yield event, json.loads(line[5:])
                    event = "message"

    def audio(self, job_id: str, clip: int = 0) -> bytes:
        with self._open(self._request("GET", f"/v1/clips/{job_id}/audio?clip={clip}"), self.timeout) as answer:
            return answer.read()

    def download(self, job_id: str, path: str | Path, clip: int = 0) -> Path:
        path = Path(path)
        path.write_bytes(self.audio(job_id, clip))
        return path

    def generate(self, prompt: str, path: str | Path, **fields) -> dict:
        """Submit, wait, and write the first clip to ``path``; the final status."""
        job = self.submit(prompt, **fields)
        done = self.wait(job["id"])
        self.download(job["id"], path)
        return done

    # -- plumbing ---------------------------------------------------------------------------------

    def _request(self, method, path, body=None, content_type=None, headers=None) -> urllib.request.Request:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        return request

    def _open(self, request, timeout):
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(text).get("detail", text)
            except (json.JSONDecodeError, AttributeError):
                detail = text
            retry = exc.headers.get("Retry-After")
            raise ServiceError(exc.code, detail, float(retry) if retry else None) from None

    def _json(self, method, path, body=None, content_type=None, headers=None) -> dict:
        with self._open(self._request(method, path, body, content_type, headers), self.timeout) as answer:
            return json.loads(answer.read())


def _multipart(fields: dict[str, str], files: list[tuple[str, Path]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
