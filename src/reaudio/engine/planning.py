"""Planning requests from the bundle's manifest: defaults, validation, durations and batches.

No ONNX session is needed to plan, except the text encoder when neighbours decide a
clip's length or start (natural durations, ``init="neighbour"``); it is opened then,
on first use. The local job, the Ray driver and :class:`~reaudio.engine.Engine` share
this one planner, so the batches they form are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .audio.init_audio import check_init_audio
from .bundle.manifest import BundleManifest, read_bundle_manifest
from .denoising.window_plans import WindowPlan, plan_windows
from .retrieval.database import RetrievalDB

#: Requests whose neighbours are looked up in one text-encoder call while planning: bounds the memory
#: of planning a prompt file of any length.
PLAN_CHUNK = 256
#: Text prompts in, (CLAP embeddings, token features, mask) out: the text encoder stage.
EmbedText = Callable[[list[str]], tuple[np.ndarray, np.ndarray, np.ndarray]]


Request = make_dataclass(
    "Request",
    [
        ("prompt", str),
        *settings.fields_for("request"),
        ("initial_latent", Any, None),
        ("id", Any, None),
        ("variation", int, 0),
    ],
    eq=False,  # it may hold arrays
)
Request.__module__ = __name__
Request.__doc__ = f"""One clip to generate; None fields take the bundle's defaults.

    Attributes:
        prompt: the text prompt.
{settings.describe("request")}
        initial_latent: explicit initial noise (C, T, F) instead of the seeded one, to
            compare with other implementations; fixes the duration to its frames and, unless
            ``window`` or ``loop`` is set, generates in one shot as other implementations do.
        id, variation: labels carried into the result.

    A request without ``duration`` whose bundle's database records clip durations (and k > 0) takes
    the median duration of its neighbours, clamped to the training length, with trailing near-silence
    trimmed. ``init_audio`` may also be mono samples at the bundle's rate; ``init="neighbour"`` needs a
    database whose items reach their audio (``Planner.audio_root``). ``strength``: the last
    ``int(steps · strength)`` steps run from the start clip noised to that level; 1.0 ignores the clip.
    """


@dataclass(frozen=True)
class Edit:
    """An edited clip (inpainting, continuation): where the start clip sits in it and which sample
    ranges the model writes; every other sample is the start clip's."""

    offset: int  # the start clip's first sample in the clip
    generated: tuple[tuple[int, int], ...]


@dataclass
class Resolved:
    """A request with its defaults filled in and its sizes in samples and latent frames."""

    index: int
    request: Request
    samples: int
    frames: int
    steps: int
    guidance: float
    sampler: str
    k: int
    retrieval: str = ""
    natural: bool = False  # the duration came from the neighbours: trim the tail
    loop: bool = False
    window: int = 0  # frames
    overlap: int = 0  # frames
    strength: float = 1.0  # < 1: denoised from init_source
    init_source: np.ndarray | Path | str | None = None  # read when its batch runs, not before
    init_from: str = ""  # where init_source came from: "audio" or the neighbour's id
    edit: Edit | None = None
    #: The request's own clips as neighbours (paths or samples), read when its batch runs.
    references: tuple = ()
    reference_caption: str = ""
    reference_mode: str = ""
    #: A timeline's segments: (first latent frame, prompt); each window is conditioned by the ones it covers.
    segments: tuple = ()
    #: What the neighbours bring: "both" (captions and audio), "captions" or "audio" (the other masked out).
    neighbour_context: str = "both"

    def windows(self) -> WindowPlan:
        return plan_windows(self.frames, self.window, self.overlap, circular=self.loop)

    @property
    def windowed(self) -> bool:
        return self.loop or self.frames > self.window


class Planner:
    """Requests → :class:`Resolved` requests → batches, for one bundle.

    ``embed_text`` is called only to look up neighbours before generation (see the module
    docstring); ``audio_root`` is where the database's relative audio paths start.
    """

    def __init__(
        self,
        bundle: Path,
        manifest: BundleManifest,
        db: RetrievalDB | None,
        embed_text: EmbedText,
        audio_root: str | Path | None = None,
    ) -> None:
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.db = db
        self._embed_text = embed_text
        self.audio_root = Path(audio_root) if audio_root is not None else None

    @classmethod
    def for_bundle(
        cls, bundle: str | Path, audio_root: str | Path | None = None, verify: bool = True, threads: int | None = 1
    ) -> Planner:
        """A planner that reads the manifest and database only; the text encoder is loaded (on the
        CPU) the first time neighbours must be looked up."""
        bundle = Path(bundle)
        manifest = read_bundle_manifest(bundle, verify=verify)
        db = RetrievalDB(bundle / manifest.retrieval.folder, verify=verify) if manifest.retrieval else None
        return cls(bundle, manifest, db, _LazyTextEncoder(bundle, manifest, threads), audio_root)

    def resolve(
        self,
        request: Request,
        index: int = 0,
        natural_duration: float | None = None,
        neighbour_init: tuple[str, Path] | None = None,
    ) -> Resolved:
        """Fill defaults and validate one request (``ValueError`` names the field).

        ``natural_duration`` replaces the bundle's default duration, ``neighbour_init`` (id, audio
        path) is the clip an ``init="neighbour"`` request starts from (see :meth:`resolve_all`).
        """
        d = self.manifest.defaults
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise ValueError(f"request {index}: prompt must be a non-empty string")
        # Every setting the request gives, by its declaration (the same rules as a prompt row's).
        for setting in settings.SETTINGS:
            value = getattr(request, setting.name, None) if setting.request else None
            if value is not None and setting.kind is not Path:
                try:
                    settings.check_request_value(setting, value)
                except settings.SettingError as exc:
                    raise ValueError(f"request {index}: {exc}") from None
        steps = d.steps if request.steps is None else int(request.steps)
        guidance = d.guidance if request.guidance is None else float(request.guidance)
        sampler = request.sampler or d.sampler
        k = 0
        if self.manifest.retrieval:
            k = self.manifest.retrieval.k if request.k is None else int(request.k)
        retrieval = ""
        if self.manifest.retrieval:
            retrieval = request.retrieval or self.default_retrieval
            if retrieval not in self.db.info.modes:
                raise ValueError(
                    f"request {index}: retrieval={retrieval!r}; this bundle's database offers "
                    f"{', '.join(self.db.info.modes)}"
                )
        for name, value in (("steps", steps), ("guidance", guidance), ("k", k)):
            lo, hi = settings.by_name()[name].limits
            if not lo <= value <= hi:
                raise ValueError(f"request {index}: {name}={value} out of range {lo}..{hi}")
        references, mode, reference_seconds = self._resolve_references(request, index)
        if references and mode == "replace":
            k = 0  # the reference clips are the neighbours
        if reference_seconds and request.init_audio is None and request.init is None:
            # "More like these": as long as they are (their median, at most the training length).
            natural_duration = float(np.clip(np.median(reference_seconds), 0.25, d.duration))
        strength, init_source, init_seconds, init_from = self._resolve_init(request, index, k, neighbour_init)
        if request.init_audio is not None and request.duration is None:
            natural_duration = init_seconds
        if request.timeline is not None:
            natural_duration = None  # a timeline's times are the clip's: the bundle's length unless given
        edit_seconds = self._edit_seconds(request, index, init_seconds)
        if edit_seconds is not None:
            natural_duration = edit_seconds
        latent = self.manifest.latent
        if request.initial_latent is not None:
            shape = request.initial_latent.shape
            if len(shape) != 3 or shape[0] != latent.channels or shape[2] != latent.freq:
                raise ValueError(
                    f"request {index}: initial_latent shape {shape}; expected ({latent.channels}, T, {latent.freq})"
                )
            frames = shape[1]
            samples = frames * self.manifest.samples_per_frame
        else:
            duration = d.duration if request.duration is None else float(request.duration)
            if request.duration is None and natural_duration is not None:
                duration = natural_duration
            lo, hi = settings.DURATION_RANGE
            if not lo <= duration <= hi:
                raise ValueError(f"request {index}: duration={duration} out of range {lo}..{hi} s")
            samples = round(duration * self.manifest.sample_rate)
            # Enough latent frames that the decoded waveform covers every requested sample.
            frames = -(-samples // self.manifest.samples_per_frame)
        natural = (
            natural_duration is not None
            and request.duration is None
            and request.initial_latent is None
            and request.init_audio is None
        )
        window, overlap = self._window_frames(request, index)
        if request.initial_latent is not None and request.window is None and not request.loop:
            window = max(window, frames)
        segments = self._segments(request, index, samples)
        if len(segments) > 1 and request.window is None:
            # Windows no longer than the shortest segment, so each prompt has windows of its own.
            starts = [start for start, _ in segments] + [frames]
            shortest = min(b - a for a, b in zip(starts, starts[1:]))
            window = max(2, min(window, shortest))
            overlap = min(window // 2, round(window / 4)) if request.overlap is None else min(overlap, window // 2)
        if request.loop:  # the loop's period is the whole latent: round up to a whole latent frame
            samples = frames * self.manifest.samples_per_frame
        edit = self._edit(request, samples, init_seconds) if edit_seconds is not None else None
        return Resolved(
            index,
            request,
            samples,
            frames,
            steps,
            guidance,
            sampler,
            k,
            retrieval,
            natural and not request.loop,
            bool(request.loop),
            window,
            overlap,
            strength,
            init_source,
            init_from,
            edit,
            references,
            (request.reference_caption or request.prompt) if references else "",
            mode,
            segments,
            self._neighbour_context(request, index, k, references),
        )

    def _neighbour_context(self, request: Request, index: int, k: int, references: tuple) -> str:
        """A request's ``neighbour_context``, checked against what the bundle's neighbours feed."""
        choice = request.neighbour_context or "both"
        if choice == "both":
            return choice
        if not k and not references:
            raise ValueError(
                f"request {index}: neighbour_context={choice} needs neighbours (k >= 1 or reference clips)"
            )
        every = tuple(self.manifest.retrieval.contexts) if self.manifest.retrieval else ()
        kept = [name for name in every if name in settings.NEIGHBOUR_CONTEXTS[choice]]
        if not kept or len(kept) == len(every):
            raise ValueError(
                f"request {index}: neighbour_context={choice}; this bundle's neighbours condition clips through "
                f"{', '.join(every) or 'nothing'}, so {choice} cannot be kept alone"
            )
        return choice

    def _segments(self, request: Request, index: int, samples: int) -> tuple[tuple[int, str], ...]:
        """A timeline's segments as (first latent frame, prompt); () without one."""
        if request.timeline is None:
            return ()
        where = f"request {index}"
        for name in ("loop", "inpaint", "extend", "reference", "initial_latent"):
            value = getattr(request, name)
            if value is not None and value is not False:
                raise ValueError(f"{where}: timeline and {name} exclude each other")
        seconds = samples / self.manifest.sample_rate
        segments = settings.timeline_segments(settings.canonical_timeline(request.timeline))
        late = [at for at, _ in segments if at >= seconds]
        if late:
            raise ValueError(
                f"{where}: timeline {request.timeline!r} has a prompt at {late[0]:g} s, past the clip's "
                f"{seconds:.2f} s; set a duration that covers it"
            )
        per_frame = self.manifest.samples_per_frame
        return tuple((round(at * self.manifest.sample_rate / per_frame), text) for at, text in segments)

    def _edit_seconds(self, request: Request, index: int, init_seconds: float) -> float | None:
        """An edited clip's length (the start clip's, plus an extension), or None for no edit."""
        if request.inpaint is None and not request.extend:
            return None
        where = f"request {index}"
        for name in ("duration", "loop", "initial_latent"):
            value = getattr(request, name)
            if value is not None and value is not False:
                raise ValueError(f"{where}: {name} and inpaint/extend exclude each other (an edit sets the length)")
        if request.inpaint is not None:
            ranges = settings.time_ranges(settings.canonical_ranges(request.inpaint))
            if ranges[0][0] >= init_seconds:
                raise ValueError(
                    f"{where}: inpaint {request.inpaint!r} starts after the start clip's end ({init_seconds:.3f} s)"
                )
            return init_seconds
        total = init_seconds + abs(float(request.extend))
        if total > settings.DURATION_RANGE[1]:
            raise ValueError(
                f"{where}: the extended clip would last {total:.1f} s; at most {settings.DURATION_RANGE[1]:g}"
            )
        return total

    def _edit(self, request: Request, samples: int, init_seconds: float) -> Edit:
        rate = self.manifest.sample_rate
        if request.inpaint is not None:
            ranges = settings.time_ranges(settings.canonical_ranges(request.inpaint))
            generated = tuple(
                (round(a * rate), min(samples, round(b * rate))) for a, b in ranges if round(a * rate) < samples
            )
            return Edit(0, generated)
        added = samples - min(samples, round(init_seconds * rate))
        if float(request.extend) > 0:
            return Edit(0, ((samples - added, samples),))
        return Edit(added, ((0, added),))

    def _resolve_init(
        self, request: Request, index: int, k: int, neighbour_init: tuple[str, Path] | None
    ) -> tuple[float, object, float, str]:
        """Strength, start clip (path or samples), its seconds and its origin of a request
        (1.0, None, 0.0, "" when it starts from noise). Files are checked here, read when their batch runs."""
        where = f"request {index}"
        if request.init is not None and request.init not in settings.INIT_KINDS:
            raise ValueError(
                f"{where}: init={request.init!r}; valid: {', '.join(settings.INIT_KINDS)} (or init_audio=PATH)"
            )
        problem = settings.start_problem(
            request.init_audio, request.init, request.strength, inpaint=request.inpaint, extend=request.extend
        )
        if problem:
            raise ValueError(f"{where}: {problem}")
        if request.init is None and request.init_audio is None:
            return 1.0, None, 0.0, ""
        if request.initial_latent is not None:
            raise ValueError(f"{where}: initial_latent and init_audio/init exclude each other")
        default = 1.0 if (request.inpaint is not None or request.extend) else self.manifest.defaults.strength
        strength = default if request.strength is None else float(request.strength)
        try:
            settings.check_value(settings.by_name()["strength"], strength)
        except settings.SettingError as exc:
            raise ValueError(f"{where}: {exc} (1: ignore the start clip)") from None
        if "vae_encoder" not in self.manifest.stages:
            raise ValueError(
                f"{where}: {self.bundle} has no VAE encoder (vae_encoder stage), so it cannot start "
                "from a clip; export the model again with this reaudio (from a VAE with its encoder)"
            )
        if request.init_audio is not None:
            seconds = check_init_audio(request.init_audio, self.manifest.sample_rate, where, settings.DURATION_RANGE)
            return strength, request.init_audio, seconds, "audio"
        if k < 1:
            raise ValueError(f"{where}: init=neighbour needs retrieval (k >= 1; this request has k={k})")
        if neighbour_init is None:
            raise ValueError(f"{where}: init=neighbour: the database found no neighbour for this prompt")
        item_id, path = neighbour_init
        return strength, path, 0.0, item_id

    def _resolve_references(self, request: Request, index: int) -> tuple[tuple, str, list[float]]:
        """A request's reference clips (checked, not read), their mode and their seconds."""
        where = f"request {index}"
        refs = request.reference
        problem = settings.reference_problem(refs, request.reference_caption, request.reference_mode)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if refs is None or (isinstance(refs, (list, tuple)) and not len(refs)):
            return (), "", []
        if isinstance(refs, np.ndarray) and refs.dtype.kind in "UO":  # file names through a table (Ray rows)
            refs = refs.tolist()
        refs = tuple(refs) if isinstance(refs, (list, tuple)) else (refs,)
        if len(refs) > settings.MAX_REFERENCES:
            raise ValueError(f"{where}: {len(refs)} reference clips; at most {settings.MAX_REFERENCES}")
        mode = request.reference_mode or settings.REFERENCE_MODES[0]
        if mode not in settings.REFERENCE_MODES:
            raise ValueError(f"{where}: reference_mode={mode!r}; valid: {', '.join(settings.REFERENCE_MODES)}")
        spec = self.manifest.retrieval
        if spec is None or not spec.contexts:
            raise ValueError(
                f"{where}: reference clips stand in for retrieved neighbours, and {self.bundle}'s model "
                "retrieves none; use a retrieval-augmented bundle (the default model is one)"
            )
        if "audio_encoder" not in self.manifest.stages:
            raise ValueError(f"{where}: {self.bundle} has no CLAP audio encoder to hear reference clips with")
        seconds = []
        for n, ref in enumerate(refs):
            try:
                seconds.append(
                    check_init_audio(ref, self.manifest.sample_rate, f"{where} reference {n}", settings.DURATION_RANGE)
                )
            except ValueError as exc:
                raise ValueError(str(exc).replace("init_audio", "reference", 1)) from None
        return refs, mode, seconds

    def _window_frames(self, request: Request, index: int) -> tuple[int, int]:
        """The request's denoising window and overlap in latent frames."""
        d = self.manifest.defaults
        if not isinstance(request.loop, (bool, np.bool_)):
            raise ValueError(f"request {index}: loop={request.loop!r} must be true or false")
        window = d.window_seconds if request.window is None else float(request.window)
        overlap = (
            (d.overlap_seconds if request.window is None else window / 4)
            if request.overlap is None
            else float(request.overlap)
        )
        lo, hi = settings.DURATION_RANGE
        if not lo <= window <= hi:
            raise ValueError(f"request {index}: window={window} s out of range {lo}..{hi} s")
        if not 0 <= overlap <= window / 2:
            raise ValueError(f"request {index}: overlap={overlap} s must be in 0..{window / 2:g} s (half the window)")
        frames = self.seconds_to_frames(window)
        return frames, min(frames // 2, round(overlap * self.manifest.sample_rate / self.manifest.samples_per_frame))

    def seconds_to_frames(self, window: float) -> int:
        """A window's latent frames, counted like a clip's, so a clip of the window's length is one window."""
        return max(2, -(-round(window * self.manifest.sample_rate) // self.manifest.samples_per_frame))

    @property
    def default_retrieval(self) -> str:
        """The bundle's retrieval mode ("text", the legacy name, is "caption")."""
        key = self.manifest.retrieval.key if self.manifest.retrieval else ""
        return {"text": "caption"}.get(key, key) or self.db.info.default_mode

    def resolve_all(self, requests: list[Request]) -> list[Resolved]:
        """:meth:`resolve` for every request, with natural durations and start neighbours looked up in one batch."""
        natural, starts = self._natural_durations(requests)
        return [self.resolve(r, i, natural.get(i), starts.get(i)) for i, r in enumerate(requests)]

    def neighbour_audio(self, item: dict) -> Path:
        """The audio file of a database item (``ValueError`` when the database cannot reach it)."""
        audio = item.get("audio")
        if not audio:
            raise ValueError(
                f"database item {item.get('id')!r} records no audio file (databases built before "
                "items recorded their audio list clips without it; `db add` the clips again)"
            )
        path = Path(audio)
        if not path.is_absolute():
            if self.audio_root is None:
                raise ValueError(
                    f"database item {item.get('id')!r}: its audio {audio!r} is relative to a corpus "
                    "folder; pass --audio-root (the embedded default model's corpus: "
                    "`reaudio data build-sfx --out DIR`)"
                )
            path = self.audio_root / path
        if not path.is_file():
            raise ValueError(f"database item {item.get('id')!r}: audio file {path} not found")
        return path

    def _natural_durations(self, requests: list[Request]) -> tuple[dict[int, float], dict[int, tuple[str, Path]]]:
        """Median duration of each eligible request's neighbours, clamped to the training length;
        for ``init="neighbour"`` requests the top neighbour's duration, and its (id, audio file)."""
        if not self.manifest.retrieval or not len(self.db):
            return {}, {}
        k_default = self.manifest.retrieval.k
        durations = "duration" in self.db.items[0]
        todo = [
            i
            for i, r in enumerate(requests)
            if (
                r.init == "neighbour"
                or durations
                and r.duration is None
                and r.initial_latent is None
                and r.init_audio is None
            )
            and isinstance(r.k, (int, type(None)))
            and (k_default if r.k is None else r.k) > 0
            and isinstance(r.prompt, str)
            and r.prompt.strip()
        ]
        if not todo:
            return {}, {}
        out: dict[int, float] = {}
        starts: dict[int, tuple[str, Path]] = {}
        # In chunks, so a prompt file's size does not set the memory: the text encoder's token
        # features alone are ~100 KB a prompt.
        for first in range(0, len(todo), PLAN_CHUNK):
            chunk = todo[first : first + PLAN_CHUNK]
            film, _, _ = self._embed_text([requests[i].prompt for i in chunk])
            self._neighbour_facts(requests, chunk, film, durations, out, starts)
        return out, starts

    def _neighbour_facts(self, requests, todo, film, durations: bool, out, starts) -> None:
        """Natural durations (``out``; ``durations``: the database records them) and start neighbours
        (``starts``) of the requests ``todo``, whose prompts' CLAP embeddings are ``film``."""
        k_default, longest = self.manifest.retrieval.k, self.manifest.defaults.duration
        modes = [requests[i].retrieval or self.default_retrieval for i in todo]
        for mode in sorted(set(modes)):
            if mode not in self.db.info.modes:
                continue  # resolve() reports it
            sel = [j for j, m in enumerate(modes) if m == mode]
            ks = [k_default if requests[todo[j]].k is None else int(requests[todo[j]].k) for j in sel]
            rows = self.db.search(film[sel], max(ks), mode=mode)
            for j, k, row in zip(sel, ks, rows):
                request = requests[todo[j]]
                found = [float(self.db.items[r].get("duration", longest)) for r in row[:k] if r >= 0]
                if request.init == "neighbour" and found:
                    item = self.db.items[row[0]]
                    try:
                        starts[todo[j]] = (item["id"], self.neighbour_audio(item))
                    except ValueError as exc:
                        raise ValueError(f"request {todo[j]}: init=neighbour: {exc}") from None
                    found = found[:1]
                if found and request.duration is None and durations:
                    out[todo[j]] = float(np.clip(np.median(found), 0.25, longest))

    def plan_batches(self, requests: list[Request], batch_size: int) -> list[list[int]]:
        """Indices of ``requests`` per batch, as :meth:`Engine.stream` would run them (a distributed job
        that keeps these batches gets byte-identical audio: results depend on batch composition)."""
        resolved = self.resolve_all(requests)
        return [[r.index for r in batch] for batch in self.batches(resolved, batch_size)]

    def batches(self, resolved: list[Resolved], batch_size: int) -> list[list[Resolved]]:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        groups: dict[tuple, list[Resolved]] = {}
        for r in resolved:
            key = (r.frames, r.steps, r.sampler, r.strength, r.windowed and (r.loop, r.window, r.overlap))
            groups.setdefault((*key, r.edit is not None), []).append(r)
        # Windowed clips (long ones, loops) run after the others, so a 5-minute ambience does not hold
        # back a library's short clips; within each kind, in order of first appearance.
        ordered = sorted(groups.values(), key=lambda g: g[0].windowed)
        return [g[i : i + batch_size] for g in ordered for i in range(0, len(g), batch_size)]


class _LazyTextEncoder:
    """The text encoder stage on the CPU, opened on the first call."""

    def __init__(self, bundle: Path, manifest: BundleManifest, threads: int | None) -> None:
        self.bundle, self.manifest, self.threads = bundle, manifest, threads
        self._encode: EmbedText | None = None

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._encode is None:
            from .stages.backends import OrtRunner
            from .stages.text_tokenizer import TextTokenizer

            spec = self.manifest.stages["text_encoder"]
            runner = OrtRunner(self.bundle / spec.file, spec, ["CPUExecutionProvider"], self.threads)
            tokenizer = TextTokenizer.from_file(
                self.bundle / self.manifest.tokenizer.file, self.manifest.tokenizer.max_length
            )
            self._encode = lambda texts: text_embeddings(tokenizer, runner, texts)
        return self._encode(texts)


def text_embeddings(tokenizer, runner, texts: list[str], length: int | None = None):
    """CLAP text embeddings (N, E), token features (N, L, H) and mask (N, L) of ``texts``."""
    ids, mask = tokenizer(texts, length=length)
    emb, tokens = runner.run({"input_ids": ids, "attention_mask": mask})
    return emb, tokens, mask.astype(bool)
