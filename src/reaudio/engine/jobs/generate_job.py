"""A ``reaudio generate`` job and what its two runners (local and Ray) share: the settings, the
clip plan, the resume check, the preparation of the library and the write of a finished clip."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from .. import settings
from ..audio.postprocess import PostProcess
from ..audio.tags import ClipTags
from ..bundle.dataclass_io import to_dict
from ..bundle.default_model import resolve_bundle
from ..bundle.manifest import (
    BUNDLE_MANIFEST,
    BundleManifest,
    Licence,
    sha256_file,
)
from ..pipeline import Engine, Result
from ..planning import Planner, Request
from .candidates import Ranked
from .library import Library, check_file_name, check_template
from .prompts import PromptRow, read_prompt_file, slugify

log = logging.getLogger(__name__)


GenerateJob = make_dataclass(
    "GenerateJob",
    [
        ("prompts", Path),
        ("out", Path),
        ("bundle", Any, None),
        ("batch_size", int, 8),
        *settings.fields_for("job"),
        ("audio_format", str, "wav"),
        ("subtype", str, "PCM_16"),
        ("backend", str, "auto"),
        ("device_id", int, 0),
        ("threads", Any, None),
        ("precision", str, "auto"),
        ("name_template", str, "{id}-v{variation}"),
        ("postprocess", PostProcess, field(default_factory=PostProcess)),
        ("dry_run", bool, False),
        ("cuda_graphs", bool, False),
        ("overwrite", bool, False),
        ("overwrite_foreign", bool, False),
        ("audio_root", Any, None),
        ("keep_candidates", bool, False),
    ],
    frozen=True,
)
GenerateJob.__module__ = __name__
GenerateJob.__doc__ = f"""Everything ``reaudio generate`` does. A prompt row's own values win over the job's.

    Attributes:
        prompts: the prompt file (.txt, .csv, .jsonl).
        out: the output library folder.
        bundle: the model bundle (None: the embedded default model).
        batch_size: clips per batch.
{settings.describe("job")}
        audio_format: "wav" or "flac"; subtype: "PCM_16", "PCM_24" or "FLOAT" (wav only).
        backend, device_id, threads: where to run.
        precision: "auto" (fp16 on GPUs; on the CPU the bundle's ``reaudio tune`` choice per stage, else
            fp32), "fp32", "fp16", "int8" (the CPU's quantised graphs, see ``reaudio quantize``), "bf16"
            (OpenVINO) or "int8-bf16" (OpenVINO: the int8 graphs, bf16 wherever they are not int8).
        name_template: file name without extension; fields {{id}} {{slug}} {{seed}} {{variation}}.
        postprocess: optional trimming, resampling, loudness target (LUFS) and true-peak ceiling;
            a row's ``loudness_lufs`` replaces the target for that row.
        dry_run: print the plan and stop.
        overwrite: regenerate clips finished with other settings (bundle, seed, the settings marked
            ``resume``, format, subtype, sample rate); without it such a library is refused up front.
        overwrite_foreign: replace files at planned names that the library did not make (without it,
            such a file stops the job up front, named).
        cuda_graphs: replay the denoising loop as CUDA graphs (backend "cuda").
        audio_root: where the database items' relative audio paths start (``init`` "neighbour").
        keep_candidates: write every candidate, ranked, not only the best.
    """


@dataclass
class Clip:
    row: PromptRow
    variation: int
    seed: int
    key: str
    file_name: str


@dataclass
class JobSummary:
    planned: int = 0
    skipped: int = 0
    written: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    audio_seconds: float = 0.0

    @property
    def clips_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    @property
    def real_time_factor(self) -> float:
        """Audio seconds produced per wall-clock second."""
        return self.audio_seconds / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        text = (
            f"{self.written} clip(s) written, {self.skipped} already done, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s ({self.clips_per_second:.2f} clips/s, {self.real_time_factor:.2f}× real time)"
        )
        if self.failed:
            text += "\nfailed: " + ", ".join(self.failed)
        return text


def plan_clips(job: GenerateJob, rows: list[PromptRow]) -> list[Clip]:
    check_template(job.name_template)
    for name in ("variations", "candidates"):
        value, (lo, hi) = getattr(job, name), settings.by_name()[name].limits
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"--{name} {value!r} must be an integer from {lo} to {hi}")
    ext = job.audio_format
    clips, names = [], {}

    def claim(name: str, owner: str) -> None:
        check_file_name(name, job.name_template)
        # Keyed without case: libraries are copied to filesystems (Windows, macOS) where A.wav is a.wav.
        if name.lower() in names:
            other, taken = names[name.lower()]
            same = (
                f"the same file {name!r}" if taken == name else f"files {taken!r} and {name!r}, one name without case,"
            )
            raise ValueError(
                f"--name-template {job.name_template!r} gives {same} to {other} and {owner}; "
                f"include {{id}} and {{variation}}"
                + (" (kept candidates are named NAME-c2, NAME-c3, …)" if "candidate" in other + owner else "")
            )
        names[name.lower()] = (owner, name)

    if job.strength is not None and job.init_audio is None and job.init is None:
        if not any(r.init_audio is not None or r.init is not None for r in rows):
            raise ValueError(
                f"--strength {job.strength:g} needs a start clip: --init-audio FILE or --init neighbour "
                "(or rows with init_audio or init); without one every clip starts from noise"
            )
    largest = settings.by_name()["seed"].limits[1]
    for row in rows:
        base = row.seed if row.seed is not None else job.seed + zlib.crc32(row.id.encode()) % 2**31
        variations = row.variations or job.variations
        if base + variations - 1 > largest:
            raise ValueError(
                f"{job.prompts}:{row.line}: seed {base} and {variations} variation(s) pass the largest seed, "
                f"{largest} (2**63 - 1); lower the seed"
            )
        for v in range(variations):
            seed = base + v
            name = job.name_template.format(id=row.id, slug=slugify(row.prompt), seed=seed, variation=v) + f".{ext}"
            key = Library.key(row.id, v)
            claim(name, key)
            clips.append(Clip(row, v, seed, key, name))
    # Every kept candidate's file too, against every planned name (another row's included).
    for clip in clips:
        for n, name in kept_candidate_files(job, clip):
            claim(name, f"{clip.key}'s candidate {n}")
    return clips


def candidate_file(file_name: str, n: int) -> str:
    """The file of a clip's ``n``-th ranked candidate, kept with ``--keep-candidates``: NAME-cN.EXT."""
    stem, ext = file_name.rsplit(".", 1)
    return f"{stem}-c{n}.{ext}"


def kept_candidate_files(job: GenerateJob, clip: Clip) -> list[tuple[int, str]]:
    """(rank, file name) of every candidate of ``clip`` the job may keep beside the best."""
    if not job.keep_candidates:
        return []
    return [(n, candidate_file(clip.file_name, n)) for n in range(2, candidates_for(job, clip.row) + 1)]


def planned_files(job: GenerateJob, clips: list[Clip]) -> list[str]:
    """Every file name the job may write: each clip's, and its kept candidates'."""
    return [c.file_name for c in clips] + [name for c in clips for _, name in kept_candidate_files(job, c)]


def reconcile(
    job: GenerateJob, clips: list[Clip], defaults: dict, bundle_hash: str, library: Library, database: str | None
) -> list[Clip]:
    """The clips still to generate. A clip counts as done only if its file verifies and it was made
    with this job's bundle (``bundle_hash``: its manifest's sha256) and settings; clips made otherwise
    stop the job (the message says which and how) unless ``job.overwrite``. Entries of clips to be made
    again are dropped from the library index first (not in a dry run), so every key keeps one line."""
    listed = [c for c in clips if c.key in library.entries]
    broken = [c for c in listed if not library.is_finished(c.key) or _kept_candidates_missing(job, library, c.key)]
    changed: list[tuple[Clip, str]] = []
    for clip in listed:
        if clip in broken:
            continue
        why = _differences(job, clip, library.entries[clip.key], defaults, bundle_hash)
        if why:
            changed.append((clip, why))
    if changed and not job.overwrite:
        shown = "; ".join(f"{c.key}: {why}" for c, why in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ValueError(
            f"{job.out}: {len(changed)} finished clip(s) were made with other settings: {shown}{more}; "
            "rerun with --overwrite to make them again, or use another --out"
        )
    older = [c for c in listed if library.entries[c.key].get("database") not in (None, database)]
    if older:
        log.warning(
            "%d finished clip(s) were made before the retrieval database last changed (db add/remove): kept as "
            "they are; to make them with today's database, remove their lines from %s or use another --out",
            len(older),
            library.index_path,
        )
    redo = {c.key for c in broken} | {c.key for c, _ in changed}
    # A clip not done (or redone) takes its kept candidates' lines with it, so each key keeps one line.
    todo = [c for c in clips if c.key in redo or not library.is_finished(c.key)]
    todo_keys = {c.key for c in todo}
    candidates = [k for k in library.entries if "~c" in k and k.split("~c", 1)[0] in todo_keys]
    if not job.dry_run:
        library.drop(sorted(redo) + candidates)
    return todo


#: Settings a finished clip records from the engine's result (what it resolved), not from the job.
_FROM_RESULT = ("steps", "guidance", "sampler", "k", "retrieval")


def _job_output(job: GenerateJob) -> dict:
    """What a finished file records of how the job writes files (the job's alone, never a row's)."""
    return {
        "format": job.audio_format,
        "subtype": job.subtype,
        "resample": job.postprocess.sample_rate,
        "true_peak_db": job.postprocess.true_peak_db,
        "trim_db": job.postprocess.trim_db,
        "int8": job.precision == "int8",
    }


#: What entries written before a job-output setting existed hold.
_OUTPUT_LEGACY = {"subtype": "PCM_16", "resample": None, "true_peak_db": None, "trim_db": None, "int8": False}


def bundle_defaults(manifest: BundleManifest, retrieval: str) -> dict:
    """The bundle's default of each setting that has one; ``retrieval``: its default search mode
    (the database decides it: ``Planner.default_retrieval``; "" without one)."""
    out = {s.name: s.bundle_default(manifest) for s in settings.SETTINGS if s.bundle_default is not None}
    return {**out, "retrieval": retrieval}


def clip_settings(job: GenerateJob, row: PromptRow, defaults: dict) -> dict:
    """A clip's resume settings (the schema's ``resume`` ones) as the job makes it: its row's value, else
    the job's, else the bundle's (``defaults``, by name). A start clip is recorded by its kind or file
    name under ``init``; ``strength`` only with a start clip."""
    audio, init = settings.start_of(row, job)
    out = {}
    for setting in settings.SETTINGS:
        if not setting.resume:
            continue
        value = settings.merged(row, job, setting.name)
        out[setting.name] = defaults.get(setting.name) if value is None else value
    out["init"] = init or (Path(audio).name if audio else None)
    # The start file's content, not its name alone: an edited file of the same name is another clip.
    out["init_sha256"] = start_clip_digest(audio) if audio else None
    if not (audio or init):
        out["strength"] = None
    # Reference clips by name and content, as start clips are; their settings only with them.
    references = [Path(r) for r in settings.merged(row, job, "reference") or ()]
    out["reference"] = [r.name for r in references] or None
    out["reference_sha256"] = [start_clip_digest(r) for r in references] or None
    if not references:
        out["reference_caption"] = out["reference_mode"] = None
    else:
        out["reference_mode"] = out["reference_mode"] or settings.REFERENCE_MODES[0]  # what it ran with
    return out


_START_DIGESTS: dict[tuple, str] = {}


def start_clip_digest(path: str | Path) -> str:
    """The sha256 of a start clip's file (computed once per file version in a job)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _START_DIGESTS:
        _START_DIGESTS[key] = sha256_file(path)
    return _START_DIGESTS[key]


def _differences(job: GenerateJob, clip: Clip, entry: dict, defaults: dict, bundle_hash: str) -> str:
    """What differs between a finished clip's entry and what this job would make ("" if nothing):
    every resume setting, the output format, the seed, the prompt, the file's name and the bundle."""
    row = clip.row
    expected = {**clip_settings(job, row, defaults), **_job_output(job)}
    # Entries of libraries written before a setting existed hold its legacy value.
    legacy = {s.name: s.legacy for s in settings.SETTINGS if s.resume}
    stored = {**legacy, **_OUTPUT_LEGACY, **entry.get("settings", {})}
    found = [
        f"{name} {stored.get(name)!r} → {value!r}"
        for name, value in expected.items()
        if stored.get(name) != value
        and not (name == "guidance" and stored.get(name) is not None and abs(float(stored[name]) - float(value)) < 1e-6)
    ]
    if entry.get("prompt") != row.prompt:
        found.append(f"prompt {entry.get('prompt')!r} → {row.prompt!r}")
    if entry.get("file") != clip.file_name:
        found.append(f"file {entry.get('file')!r} → {clip.file_name!r}")
    if entry.get("seed") != clip.seed:
        found.append(f"seed {entry.get('seed')} → {clip.seed}")
    if entry.get("bundle_sha256") != bundle_hash:
        found.append("another bundle")
    return ", ".join(found)


def candidates_for(job: GenerateJob, row: PromptRow) -> int:
    return settings.merged(row, job, "candidates")


def request_for(job: GenerateJob, clip: Clip) -> Request:
    """The engine's request for a clip: each request setting from its row, else the job."""
    row = clip.row
    values = {s.name: settings.merged(row, job, s.name) for s in settings.SETTINGS if s.request and s.name != "seed"}
    audio, init = settings.start_of(row, job)
    values.update(init_audio=audio, init=init, strength=values["strength"] if audio or init else None)
    return Request(prompt=row.prompt, seed=clip.seed, id=clip.key, variation=clip.variation, **values)


@dataclass(frozen=True)
class Producer:
    """What a written clip records of the engine that made it (a local one, or a Ray worker's)."""

    sample_rate: int
    backend: str
    licence: Licence | None
    defaults: dict  # the bundle's default of each setting (bundle_defaults)
    database: str | None  # the retrieval database generation it searched

    @classmethod
    def of(cls, engine: Engine) -> Producer:
        database = engine.db.generation.name if engine.db is not None else None
        return cls.from_planner(engine.planner, engine.backend, database)

    @classmethod
    def from_planner(cls, planner, backend: str, database: str | None) -> Producer:
        manifest = planner.manifest
        retrieval = planner.default_retrieval if manifest.retrieval else ""
        return cls(manifest.sample_rate, backend, manifest.licence, bundle_defaults(manifest, retrieval), database)


def write_clip(
    job: GenerateJob,
    library: Library,
    clip: Clip,
    ranked: Ranked,
    bundle_hash: str,
    made_by: Producer,
    summary: JobSummary,
) -> None:
    """Write a finished clip (the best of its candidates; the others too with ``keep_candidates``)
    with its library entry and tags, counting it in ``summary``; a failed clip is counted as failed."""
    result = ranked.best
    if not result.ok:
        summary.failed.append(f"{clip.key} ({result.error})")
        return
    tried = (
        [
            {
                "seed": r.seed,
                "clap_score": None if s is None else round(s, 5),
                **({"error": r.error} if r.error else {}),
            }
            for r, s in zip(ranked.results, ranked.scores)
        ]
        if len(ranked.results) > 1
        else []
    )
    if job.keep_candidates:
        # The kept candidates first: the best's entry is what marks the clip done, so a kill in
        # between leaves a clip to make again, never one that lacks some of its candidates.
        for n, other in enumerate(ranked.results[1:], start=2):
            if other.ok:
                name = candidate_file(clip.file_name, n)
                extra = replace(clip, key=candidate_key(clip.key, n), file_name=name, seed=other.seed)
                _write_one(job, library, extra, other, bundle_hash, made_by, summary, {"rank": n}, counted=False)
    _write_one(job, library, clip, result, bundle_hash, made_by, summary, {"candidates": tried} if tried else {})


def candidate_key(key: str, n: int) -> str:
    """The index key of a clip's ``n``-th ranked candidate, kept with ``--keep-candidates``."""
    return f"{key}~c{n}"


def _kept_candidates_missing(job: GenerateJob, library: Library, key: str) -> bool:
    """Whether a finished clip lacks a kept candidate its entry says was made (``--keep-candidates``)."""
    if not job.keep_candidates:
        return False
    tried = library.entries[key].get("candidates") or []
    return any(
        "error" not in t and not library.is_finished(candidate_key(key, n))
        for n, t in enumerate(tried[1:], start=2)
        if isinstance(t, dict)
    )


def _write_one(
    job,
    library: Library,
    clip: Clip,
    result: Result,
    bundle_hash: str,
    made_by: Producer,
    summary: JobSummary,
    extra: dict,
    counted: bool = True,
):
    rate = made_by.sample_rate
    post = job.postprocess
    if clip.row.loudness_lufs is not None:
        post = replace(post, loudness_lufs=clip.row.loudness_lufs)
    loop = bool(result.request.loop)
    audio, out_rate, gain_db = post.finish(result.waveform, rate, loop=loop)
    entry = {
        "key": clip.key,
        "id": clip.row.id,
        "variation": clip.variation,
        "prompt": clip.row.prompt,
        "seed": clip.seed,
        "settings": {
            **clip_settings(job, clip.row, made_by.defaults),
            **{name: getattr(result, name) for name in _FROM_RESULT},
            "backend": made_by.backend,
            **_job_output(job),
        },
        **({"start": {"from": result.init_from, "strength": result.strength}} if result.init_from else {}),
        "loop": loop,
        "neighbours": result.neighbours,
        "bundle_sha256": bundle_hash,
        **({"database": made_by.database} if made_by.database else {}),
        **({"licence": to_dict(made_by.licence)} if made_by.licence is not None else {}),
        "duration_s": len(audio) / out_rate,
        "sample_rate": out_rate,
        "gain_db": gain_db,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        **extra,
    }
    # No creation date or time in the tags: the same request gives a byte-identical file.
    tags = ClipTags(
        loop=loop,
        title=clip.row.prompt,
        description=f"{clip.row.prompt} (reaudio, seed {clip.seed})",
        extra={
            "id": clip.key,
            "prompt": clip.row.prompt,
            "seed": str(clip.seed),
            "bundle": bundle_hash[:16],
            "steps": str(result.steps),
            "guidance": f"{result.guidance:g}",
            **({"licence": made_by.licence.name} if made_by.licence is not None else {}),
        },
    )
    written = library.write(clip.file_name, audio, out_rate, entry, tags)
    _say_if_short_of_target(clip, post, written.get("loudness_lufs"))
    if counted:
        summary.written += 1
        summary.audio_seconds += len(audio) / out_rate


def _say_if_short_of_target(clip: Clip, post: PostProcess, reached: float | None) -> None:
    """A loudness target that a peak ceiling kept the written clip from reaching is said, with the reason."""
    if post.loudness_lufs is None or reached is None or reached >= post.loudness_lufs - 0.5:
        return
    ceiling = (
        f"the true-peak ceiling of {post.true_peak_db:g} dBTP"
        if post.true_peak_db is not None
        else "full scale (clips are scaled down, never clipped; a target near 0 LUFS cannot be met)"
    )
    log.warning(
        "%s: loudness %.1f LUFS, short of the %g LUFS target: %s limits its gain",
        clip.key,
        reached,
        post.loudness_lufs,
        ceiling,
    )


@dataclass
class PreparedJob:
    """A job ready to run: its bundle, open library, clips, the ones still to make and their requests."""

    job: GenerateJob
    bundle: Path
    library: Library
    rows: list[PromptRow]
    clips: list[Clip]
    todo: list[Clip]
    requests: list[Request]
    counts: list[int]  # candidates per clip of ``todo``
    summary: JobSummary
    bundle_hash: str
    planner: Planner  # the bundle's, for checks before any work (its manifest unverified: engines verify)
    database: str | None  # the live retrieval database generation, recorded with each clip


@contextmanager
def prepare_job(job: GenerateJob) -> Iterator[PreparedJob]:
    """Read and check the prompt file, find the bundle, open (and lock) the library, drop what an
    interrupted run left half-written, and work out what is still to make; the library stays open
    for the block."""
    rows = read_prompt_file(job.prompts)
    clips = plan_clips(job, rows)
    bundle = resolve_bundle(job.bundle, echo=lambda message: log.info("%s", message))
    with Library(job.out, job.audio_format, writable=not job.dry_run, subtype=job.subtype) as library:
        if not job.dry_run:
            removed = library.clean_partials()
            if removed:
                log.info("removed %d partial file(s) of an interrupted run", removed)
        foreign = library.foreign(planned_files(job, clips))
        if foreign and not job.overwrite_foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ValueError(
                f"{job.out}: {len(foreign)} file(s) at planned names were not made by this library: {shown}; "
                "move them away, use another --out, or pass --overwrite-foreign to replace them"
            )
        bundle_hash = sha256_file(bundle / BUNDLE_MANIFEST)
        planner = Planner.for_bundle(bundle, audio_root=job.audio_root, verify=False)
        database = planner.db.generation.name if planner.db is not None else None
        retrieval = planner.default_retrieval if planner.manifest.retrieval else ""
        defaults = bundle_defaults(planner.manifest, retrieval)
        todo = reconcile(job, clips, defaults, bundle_hash, library, database)
        yield PreparedJob(
            job,
            bundle,
            library,
            rows,
            clips,
            todo,
            [request_for(job, c) for c in todo],
            [candidates_for(job, c.row) for c in todo],
            JobSummary(planned=len(clips), skipped=len(clips) - len(todo)),
            bundle_hash,
            planner,
            database,
        )
