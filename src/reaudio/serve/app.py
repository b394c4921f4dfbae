"""The HTTP face of :class:`~reaudio.serve.clip_service.ClipService` (FastAPI, served by uvicorn).

A clip request's body is a prompt row as JSON (``application/json``), or, to send a start clip, a
``multipart/form-data`` body whose part ``settings`` holds that JSON and whose part ``init_audio`` holds
the file. The published schema (``/openapi.json``) is made from the clip settings' one declaration.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from reaudio import __version__
from reaudio.engine import settings
from reaudio.engine.jobs.prompts import ID_PATTERN, MAX_PROMPT_CHARS
from reaudio.engine.settings import MAX_REFERENCES

from .clip_service import ClipService, NotCancellable, QueueFull
from .intake import UPLOAD_FIELDS, RequestInvalid
from .job_store import FINAL, ClipIdTaken, IdempotencyConflict
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)

#: Largest JSON body (a prompt row is a few hundred bytes).
MAX_JSON_BYTES = 64 << 10
#: Seconds between SSE keep-alive comments, and between progress checks.
KEEPALIVE_S, POLL_S = 15.0, 0.1
_MEDIA = {"wav": "audio/wav", "flac": "audio/flac"}


def clip_schema() -> dict:
    """JSON schema of a clip request: the prompt, an id, and every setting a prompt row may set."""
    kinds = {int: "integer", float: "number", bool: "boolean", str: "string", Path: "string"}
    props: dict[str, dict] = {
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS, "description": "the text prompt"},
        "id": {
            "type": "string",
            "pattern": ID_PATTERN.pattern,
            "description": "the clip's id in the library (default: the job's id); files are ID-vN",
        },
    }
    for s in settings.SETTINGS:
        if not s.row or s.name in UPLOAD_FIELDS:
            continue
        prop: dict = {"description": s.help}
        if s.parse is not None:
            prop["anyOf"] = [{"type": "string"}, {"type": "array", "items": {"type": "array"}}]
        else:
            prop["type"] = kinds[s.kind]
        if s.limits is not None:
            lo, hi = s.limits
            prop["exclusiveMinimum" if s.open_low else "minimum"] = lo
            prop["maximum"] = hi
        if s.choices is not None:
            prop["enum"] = list(s.choices)
        props[s.name] = prop
    return {"type": "object", "required": ["prompt"], "properties": props, "additionalProperties": False}


def _multipart_schema() -> dict:
    return {
        "type": "object",
        "required": ["settings"],
        "properties": {
            "settings": {"type": "string", "description": "the clip request as JSON (the application/json body)"},
            "init_audio": {"type": "string", "format": "binary", "description": "a start clip"},
            "reference": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "maxItems": MAX_REFERENCES,
                "description": "reference clips: the request's neighbours (parts of one name)",
            },
        },
    }


def _invalid(problems: list[tuple[str, str]]) -> JSONResponse:
    return JSONResponse({"detail": [{"field": f, "reason": r} for f, r in problems]}, status_code=422)


def _error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": reason}, status_code=status, headers=headers)


def create_app(service: ClipService, token: str | None = None) -> FastAPI:
    """The API of ``service``; with ``token``, every call but ``/v1/health`` needs ``Authorization:
    Bearer TOKEN``."""
    app = FastAPI(
        title="reaudio",
        version=__version__,
        description="Text-to-audio generation for sound-design tools: clip requests in, library files out.",
        # FastAPI's documentation pages load their scripts from a CDN; the schema alone needs nothing outside.
        docs_url=None,
        redoc_url=None,
    )
    metrics = ServiceMetrics(service)
    multipart_limit = service.config.max_upload_bytes + MAX_JSON_BYTES

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None and request.url.path != "/v1/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                response = _error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
                metrics.answers.labels("401").inc()
                return response
        if request.method in ("POST", "PUT", "PATCH"):
            multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
            limit = multipart_limit if multipart else MAX_JSON_BYTES
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                # The server holds a body to its Content-Length: with one, no body can pass the limit.
                metrics.answers.labels("411").inc()
                return _error(411, "send a Content-Length header (bodies are limited in size)")
            if int(length) > limit:
                metrics.answers.labels("413").inc()
                return _error(413, f"request body of {length} bytes; at most {limit}")
        response = await call_next(request)
        metrics.answers.labels(str(response.status_code)).inc()
        return response

    @app.post(
        "/v1/clips",
        status_code=202,
        summary="Ask for a clip (or its variations and candidates)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": clip_schema()},
                    "multipart/form-data": {"schema": _multipart_schema()},
                },
            }
        },
    )
    async def post_clip(request: Request):
        try:
            record, uploads = await _read_clip_request(request)
        except RequestInvalid as exc:
            return _invalid(exc.problems)
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 200:
            return _invalid([("Idempotency-Key", "must be 1 to 200 characters")])
        try:
            job, created = await run_in_threadpool(service.accept, record, uploads, key)
        except RequestInvalid as exc:
            return _invalid(exc.problems)
        except QueueFull as exc:
            return _error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except (IdempotencyConflict, ClipIdTaken) as exc:
            return _error(409, str(exc))
        body = {**service.status(job.id), "links": _links(job.id)}
        return JSONResponse(body, status_code=202 if created else 200, headers={"Location": f"/v1/clips/{job.id}"})

    @app.get("/v1/clips/{job_id}", summary="A job's status, progress (step n of N) and library entries")
    async def get_clip(job_id: str):
        status = service.status(job_id)
        if status is None:
            return _error(404, f"no job {job_id!r}")
        return {**status, "links": _links(job_id)}

    @app.get("/v1/clips/{job_id}/audio", summary="A finished clip's file (clip=N: the N-th variation)")
    async def get_audio(job_id: str, clip: int = 0):
        status = service.status(job_id)
        if status is None:
            return _error(404, f"no job {job_id!r}")
        if status["status"] != "done":
            return _error(409, f"job {job_id} is {status['status']}; its audio exists once it is done")
        path = service.audio_file(job_id, clip)
        if path is None:
            return _error(404, f"job {job_id} has {len(status['clips'])} clip(s); clip={clip} is not one")
        return FileResponse(path, media_type=_MEDIA.get(path.suffix.lstrip("."), "application/octet-stream"))

    @app.get("/v1/clips/{job_id}/events", summary="Progress as Server-Sent Events, until the job ends")
    async def get_events(job_id: str):
        if service.status(job_id) is None:
            return _error(404, f"no job {job_id!r}")
        return StreamingResponse(_events(service, job_id), media_type="text/event-stream")

    @app.delete("/v1/clips/{job_id}", summary="Cancel a job; its slot frees at the next step")
    async def delete_clip(job_id: str):
        try:
            await run_in_threadpool(service.cancel, job_id)
        except KeyError:
            return _error(404, f"no job {job_id!r}")
        except NotCancellable as exc:
            return _error(409, str(exc))
        return service.status(job_id)

    @app.get("/v1/health", summary="Health check")
    async def health():
        return {
            "status": "ok",
            "version": __version__,
            "model": service.engine.manifest.name,
            "backend": service.engine.backend,
            "sample_rate": service.engine.sample_rate,
            "slots": service.config.slots,
            "batching": service.config.batching,
        }

    @app.get("/v1/metrics", summary="Prometheus metrics (text format)")
    async def get_metrics():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


async def _read_clip_request(request: Request) -> tuple[dict, list[tuple[str, str, bytes]]]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1 + MAX_REFERENCES, max_fields=1 + len(UPLOAD_FIELDS))
        except Exception as exc:  # the multipart parser's own errors (too many parts, bad framing)
            raise RequestInvalid([("body", f"unreadable multipart body: {exc}")]) from None
        uploads, record = [], None
        for name, value in form.multi_items():
            if name == "settings" and isinstance(value, str):
                record = _json_object(value.encode())
            elif hasattr(value, "read"):
                uploads.append((name, value.filename or "clip", await value.read()))
            else:
                raise RequestInvalid([(name, "unknown part; send 'settings' (JSON) and the files")])
        if record is None:
            raise RequestInvalid([("settings", "missing: the clip request as JSON")])
        return record, uploads
    if not content_type.startswith("application/json"):
        raise RequestInvalid([("Content-Type", f"{content_type!r}; send application/json or multipart/form-data")])
    return _json_object(await request.body()), {}


def _json_object(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestInvalid([("body", f"not JSON: {exc}")]) from None
    if not isinstance(value, dict):
        raise RequestInvalid([("body", "must be a JSON object of a prompt row's fields")])
    return value


def _links(job_id: str) -> dict:
    base = f"/v1/clips/{job_id}"
    return {"self": base, "audio": f"{base}/audio", "events": f"{base}/events"}


async def _events(service: ClipService, job_id: str):
    """``progress`` events while the job changes, then one event named by its final status."""
    last, quiet = None, 0.0
    while True:
        status = service.status(job_id)
        if status is None:
            return
        now = {"status": status["status"], "progress": status["progress"]}
        if status["status"] in FINAL:
            yield f"event: {status['status']}\ndata: {json.dumps(status)}\n\n"
            return
        if now != last:
            yield f"event: progress\ndata: {json.dumps(now)}\n\n"
            last, quiet = now, 0.0
        elif quiet >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(POLL_S)
        quiet += POLL_S
