"""The Python API: ``Engine.from_bundle(...).generate(requests)``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import (
    BackendUnavailable,
    has_native_plans,
    make_runners,
    resolve_backend,
    stage_file,
)
from .frontend import log_mel
from .init_audio import check_init_audio, encode_latents, fit_to, read_init_audio
from .loop import denoise_device, denoise_host
from .manifest import Manifest, read_manifest
from .postprocess import trim_tail
from .prompts import INIT_KINDS, LIMITS
from .retrieval_db import RetrievalDB
from .sampler import SAMPLERS, initial_noise, make_plan, noised_start
from .text_tokenizer import TextTokenizer
from .windowed import WINDOWS_PER_CALL, decode_windowed, denoise_windowed
from .windows import WindowPlan, plan_decode, plan_windows

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One clip to generate; None fields take the bundle's defaults.

    Attributes:
        prompt: the text prompt.
        duration: seconds of audio. None: the bundle's default, or, for a bundle whose
            database records clip durations and a request with k > 0, the median duration of
            the neighbours (clamped to the training length), with trailing near-silence trimmed.
        seed: seeds the initial noise (``numpy.random.PCG64(seed)``).
        steps: denoising steps.
        guidance: classifier-free guidance scale (1.0: conditional only).
        sampler: "ddim" or "dpmpp-2m".
        k: neighbours retrieved (0: none); ignored by bundles without retrieval.
        retrieval: how the prompt finds neighbours: "caption", "audio" or "hybrid" (None:
            the bundle's default; a database offers the modes whose keys it holds).
        initial_latent: explicit initial noise (C, T, F) instead of the seeded one, to
            compare with other implementations; fixes the duration to its frames and, unless
            ``window`` or ``loop`` is set, generates in one shot as other implementations do.
        negative_prompt: steer away from this text: its embedding replaces the null
            condition in the unconditional half of guidance.
        loop: make a seamless loop: the clip's end continues into its start (denoised and
            decoded with windows that wrap around); its tail is never trimmed.
        window, overlap: seconds one denoising window spans and neighbouring windows share
            (None: the bundle's). A clip longer than the window, or a loop, is denoised window
            by window and decoded the same way, so memory depends on the window, not the clip.
        init_audio: start from this clip (a path, or mono samples at the bundle's rate) instead
            of noise: audio-to-audio (SDEdit). The clip's duration is the input's unless given.
            Needs a bundle with a ``vae_encoder`` stage.
        init: "neighbour": start from the top retrieved clip's audio (its duration unless
            given); the database's items must reach their audio (see ``Engine.audio_root``).
        strength: how far from the start clip the result may move, in (0, 1] (None: the
            bundle's default, 0.6): the last ``int(steps · strength)`` steps run from the clip
            noised to that level; 1.0 ignores the clip (plain generation from the seed's noise).
        id, variation: labels carried into the result.
    """

    prompt: str
    duration: float | None = None
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    k: int | None = None
    retrieval: str | None = None
    initial_latent: np.ndarray | None = None
    negative_prompt: str | None = None
    loop: bool = False
    window: float | None = None
    overlap: float | None = None
    init_audio: np.ndarray | str | Path | None = None
    init: str | None = None
    strength: float | None = None
    id: str | None = None
    variation: int = 0


@dataclass
class Result:
    """A generated clip (``waveform`` None and ``error`` set when it failed)."""

    request: Request
    waveform: np.ndarray | None
    sample_rate: int
    seed: int
    steps: int
    guidance: float
    sampler: str
    k: int
    retrieval: str = ""
    neighbours: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    strength: float = 1.0
    init_from: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Resolved:
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

    def windows(self) -> WindowPlan:
        return plan_windows(self.frames, self.window, self.overlap, circular=self.loop)

    @property
    def windowed(self) -> bool:
        return self.loop or self.frames > self.window


class Engine:
    """A loaded bundle on one backend.

    Safe to share between threads for generation: onnxruntime sessions are
    thread-safe and a call keeps its state on its own stack. Changing the
    retrieval database (``reaudio db add``) is not seen by a running engine;
    load it again afterwards.
    """

    def __init__(
        self, bundle: Path, manifest: Manifest, backend: str, device_id: int, runners: dict, cuda_graphs: bool = False,
        verify: bool = True, audio_root: str | Path | None = None, precision: str = "auto",
    ) -> None:
        self.bundle = bundle
        #: What the runners compute in: "auto" (fp16 graphs on GPU backends), "fp32", "fp16" or "int8".
        self.precision = precision
        #: Where the database items' relative ``audio`` paths start (neighbour-seeded generation).
        self.audio_root = Path(audio_root) if audio_root is not None else None
        self.manifest = manifest
        self.backend = backend
        self.device_id = device_id
        self.runners = runners
        self.tokenizer = TextTokenizer.from_file(bundle / manifest.tokenizer.file, manifest.tokenizer.max_length)
        self.db = RetrievalDB(bundle / manifest.retrieval.folder, verify=verify) if manifest.retrieval else None
        self._fp32_runners: dict | None = None
        self._graphs = None
        self._empty_prompt: np.ndarray | None = None
        if cuda_graphs and backend == "cuda":
            from .cuda_graphs import CudaGraphDenoiser

            spec = manifest.stages["denoiser"]
            path = bundle / stage_file(spec, backend, precision)
            shapes = {i.name: list(i.shape) for i in spec.inputs}
            self._graphs = CudaGraphDenoiser(str(path), device_id, runners["denoiser"].input_dtypes, input_shapes=shapes)
        elif cuda_graphs:
            raise ValueError(f"--cuda-graphs needs backend 'cuda' (this engine runs on {backend!r}); "
                             "pass --backend cuda on a machine with onnxruntime-gpu, or leave out --cuda-graphs")  # fmt: skip

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        backend: str = "auto",
        device_id: int = 0,
        threads: int | None = None,
        precision: str = "auto",
        verify: bool = True,
        cuda_graphs: bool = False,
        audio_root: str | Path | None = None,
    ) -> Engine:
        """Load a bundle folder; ``backend`` is "auto", "cpu", "cuda", "tensorrt" or "trt-native".

        ``cuda_graphs`` replays the denoising loop as CUDA graphs (backend "cuda" only).
        ``audio_root``: the folder the database items' relative audio paths start from (the
        embedded default model's: a corpus built by ``reaudio data build-sfx``).
        """
        bundle = Path(path)
        manifest = read_manifest(bundle, verify=verify)
        chosen = resolve_backend(backend, bundle)
        runners = None
        if backend == "auto" and has_native_plans(bundle):
            try:  # plans built for this machine beat the onnxruntime backends
                runners = make_runners(bundle, manifest, "trt-native", device_id, threads, precision)
                chosen = "trt-native"
            except (BackendUnavailable, ImportError) as exc:
                log.warning("not using TensorRT plans: %s; falling back to %s", exc, chosen)
        if runners is None:
            runners = make_runners(bundle, manifest, chosen, device_id, threads, precision)
        log.info("loaded %s (%s, %s) on %s", bundle, manifest.name, manifest.family, chosen)
        return cls(bundle, manifest, chosen, device_id, runners, cuda_graphs=cuda_graphs, verify=verify,
                   audio_root=audio_root, precision=precision)  # fmt: skip

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def licence(self):
        """The source weights' :class:`~reaudio.engine.manifest.Licence`, or None when not recorded."""
        return self.manifest.licence

    # -- encoders ---------------------------------------------------------------------

    def embed_text(self, texts: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CLAP text embeddings (N, E), token features (N, L, H) and mask (N, L)."""
        ids, mask = self.tokenizer(texts, length=length)
        emb, tokens = self.runners["text_encoder"].run({"input_ids": ids, "attention_mask": mask})
        return emb, tokens, mask.astype(bool)

    def encode_audio(self, waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """CLAP audio embeddings (N, E) and pooled audio tokens (N, M, D) of mono clips at the bundle's rate."""
        if "audio_encoder" not in self.runners:
            raise ValueError(f"{self.bundle}: this bundle has no audio encoder (an imported model without our CLAP)")
        embs, tokens = [], []
        front = self.manifest.audio_frontend
        for wav in waveforms:
            mel = (front.features(wav, self.sample_rate) if front else log_mel(wav, self.manifest.mel))[None]
            e, t = self.runners["audio_encoder"].run({"mel": mel})
            embs.append(e[0])
            tokens.append(t[0])
        return np.stack(embs), np.stack(tokens)

    def encode_latents(self, waveforms: list[np.ndarray], frames: int) -> np.ndarray:
        """Scaled VAE latents (N, C, frames, F) of mono clips at the bundle's rate, each cut or
        padded to ``frames`` latent frames and brought to the level the model trained at."""
        if "vae_encoder" not in self.runners:
            raise ValueError(f"{self.bundle}: this bundle has no VAE encoder (vae_encoder stage), so clips cannot "
                             "enter its latent space; export the model again with this reaudio (from a VAE with its encoder)")  # fmt: skip
        window = self._seconds_to_frames(self.manifest.defaults.window_seconds)
        return encode_latents(self.runners["vae_encoder"], self.manifest.mel, waveforms, frames, self._per_frame,
                              chunk=window)  # fmt: skip

    @property
    def _per_frame(self) -> int:
        return self.manifest.latent.downsample * self.manifest.mel.hop_length

    # -- generation -------------------------------------------------------------------

    def generate(self, requests: Iterable[Request], batch_size: int = 8) -> list[Result]:
        """Generate every request; results in request order."""
        requests = list(requests)
        results: list[Result | None] = [None] * len(requests)
        for index, result in self._stream(requests, batch_size):
            results[index] = result
        return results  # type: ignore[return-value]

    def stream(self, requests: Iterable[Request], batch_size: int = 8) -> Iterator[Result]:
        """Yield results as their batches finish (grouped by shape, so not in request order)."""
        for _, result in self._stream(list(requests), batch_size):
            yield result

    def stream_indexed(self, requests: Iterable[Request], batch_size: int = 8) -> Iterator[tuple[int, Result]]:
        """:meth:`stream`, each result with its request's index."""
        yield from self._stream(list(requests), batch_size)

    def resolve(self, request: Request, index: int = 0, natural_duration: float | None = None,
                neighbour_init: tuple[str, Path] | None = None) -> _Resolved:  # fmt: skip
        """Fill defaults and validate one request (``ValueError`` names the field).

        ``natural_duration`` replaces the bundle's default duration, ``neighbour_init`` (id, audio
        path) is the clip an ``init="neighbour"`` request starts from (see :meth:`resolve_all`).
        """
        d = self.manifest.defaults
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise ValueError(f"request {index}: prompt must be a non-empty string")
        steps = d.steps if request.steps is None else int(request.steps)
        guidance = d.guidance if request.guidance is None else float(request.guidance)
        sampler = request.sampler or d.sampler
        k = 0
        if self.manifest.retrieval:
            k = self.manifest.retrieval.k if request.k is None else int(request.k)
        if sampler not in SAMPLERS:
            raise ValueError(f"request {index}: sampler={sampler!r}; valid: {', '.join(SAMPLERS)}")
        retrieval = ""
        if self.manifest.retrieval:
            retrieval = request.retrieval or self.default_retrieval
            if retrieval not in self.db.info.modes:
                raise ValueError(f"request {index}: retrieval={retrieval!r}; this bundle's database offers "
                                 f"{', '.join(self.db.info.modes)}")  # fmt: skip
        for name, value in (("steps", steps), ("guidance", guidance), ("k", k)):
            lo, hi = LIMITS[name]
            if not lo <= value <= hi:
                raise ValueError(f"request {index}: {name}={value} out of range {lo}..{hi}")
        if isinstance(request.seed, bool) or not isinstance(request.seed, (int, np.integer)):
            raise ValueError(f"request {index}: seed={request.seed!r} must be an integer in 0..2**63-1")
        if not 0 <= request.seed < 2**63:
            raise ValueError(f"request {index}: seed={request.seed} must be in 0..2**63-1")
        strength, init_source, init_seconds, init_from = self._resolve_init(request, index, k, neighbour_init)
        if request.init_audio is not None and request.duration is None:
            natural_duration = init_seconds
        mel, latent = self.manifest.mel, self.manifest.latent
        if request.initial_latent is not None:
            shape = request.initial_latent.shape
            if len(shape) != 3 or shape[0] != latent.channels or shape[2] != latent.freq:
                raise ValueError(
                    f"request {index}: initial_latent shape {shape}; expected ({latent.channels}, T, {latent.freq})"
                )
            frames = shape[1]
            samples = frames * latent.downsample * mel.hop_length
        else:
            duration = d.duration if request.duration is None else float(request.duration)
            if request.duration is None and natural_duration is not None:
                duration = natural_duration
            lo, hi = LIMITS["duration"]
            if not lo <= duration <= hi:
                raise ValueError(f"request {index}: duration={duration} out of range {lo}..{hi} s")
            samples = round(duration * mel.sample_rate)
            # Enough latent frames that the decoded waveform covers every requested sample.
            frames = -(-samples // (latent.downsample * mel.hop_length))
        natural = natural_duration is not None and request.duration is None and request.initial_latent is None \
            and request.init_audio is None  # fmt: skip
        window, overlap = self._window_frames(request, index)
        if request.initial_latent is not None and request.window is None and not request.loop:
            window = max(window, frames)
        if request.loop:  # the loop's period is the whole latent: round up to a whole latent frame
            samples = frames * latent.downsample * mel.hop_length
        return _Resolved(index, request, samples, frames, steps, guidance, sampler, k, retrieval,
                         natural and not request.loop, bool(request.loop), window, overlap, strength,
                         init_source, init_from)  # fmt: skip

    def _resolve_init(self, request: Request, index: int, k: int,
                      neighbour_init: tuple[str, Path] | None) -> tuple[float, object, float, str]:  # fmt: skip
        """Strength, start clip (path or samples), its seconds and its origin of a request
        (1.0, None, 0.0, "" when it starts from noise). Files are checked here, read when their batch runs."""
        where = f"request {index}"
        if request.init is not None and request.init not in INIT_KINDS:
            raise ValueError(f"{where}: init={request.init!r}; valid: {', '.join(INIT_KINDS)} (or init_audio=PATH)")
        if request.init is not None and request.init_audio is not None:
            raise ValueError(f"{where}: give init_audio or init, not both")
        if request.init is None and request.init_audio is None:
            if request.strength is not None:
                raise ValueError(f"{where}: strength={request.strength} needs init_audio or init=neighbour")
            return 1.0, None, 0.0, ""
        if request.initial_latent is not None:
            raise ValueError(f"{where}: initial_latent and init_audio/init exclude each other")
        strength = self.manifest.defaults.strength if request.strength is None else float(request.strength)
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"{where}: strength={strength} must be in (0, 1] (1.0: ignore the start clip)")
        if "vae_encoder" not in self.runners:
            raise ValueError(f"{where}: {self.bundle} has no VAE encoder (vae_encoder stage), so it cannot start "
                             "from a clip; export the model again with this reaudio (from a VAE with its encoder)")  # fmt: skip
        if request.init_audio is not None:
            seconds = check_init_audio(request.init_audio, self.sample_rate, where)
            return strength, request.init_audio, seconds, "audio"
        if k < 1:
            raise ValueError(f"{where}: init=neighbour needs retrieval (k >= 1; this request has k={k})")
        if neighbour_init is None:
            raise ValueError(f"{where}: init=neighbour: the database found no neighbour for this prompt")
        item_id, path = neighbour_init
        return strength, path, 0.0, item_id

    def _window_frames(self, request: Request, index: int) -> tuple[int, int]:
        """The request's denoising window and overlap in latent frames."""
        d = self.manifest.defaults
        if not isinstance(request.loop, (bool, np.bool_)):
            raise ValueError(f"request {index}: loop={request.loop!r} must be true or false")
        window = d.window_seconds if request.window is None else float(request.window)
        overlap = (d.overlap_seconds if request.window is None else window / 4) if request.overlap is None \
            else float(request.overlap)  # fmt: skip
        lo, hi = LIMITS["duration"]
        if not lo <= window <= hi:
            raise ValueError(f"request {index}: window={window} s out of range {lo}..{hi} s")
        if not 0 <= overlap <= window / 2:
            raise ValueError(f"request {index}: overlap={overlap} s must be in 0..{window / 2:g} s (half the window)")
        frames = self._seconds_to_frames(window)
        return frames, min(frames // 2, round(overlap * self.sample_rate / self._per_frame))

    def _seconds_to_frames(self, window: float) -> int:
        """A window's latent frames, counted like a clip's, so a clip of the window's length is one window."""
        return max(2, -(-round(window * self.sample_rate) // self._per_frame))

    @property
    def default_retrieval(self) -> str:
        """The bundle's retrieval mode ("text", the legacy name, is "caption")."""
        key = self.manifest.retrieval.key if self.manifest.retrieval else ""
        return {"text": "caption"}.get(key, key) or self.db.info.default_mode

    def resolve_all(self, requests: list[Request]) -> list[_Resolved]:
        """:meth:`resolve` for every request, with natural durations and start neighbours looked up in one batch."""
        natural, starts = self._natural_durations(requests)
        return [self.resolve(r, i, natural.get(i), starts.get(i)) for i, r in enumerate(requests)]

    def neighbour_audio(self, item: dict) -> Path:
        """The audio file of a database item (``ValueError`` when the database cannot reach it)."""
        audio = item.get("audio")
        if not audio:
            raise ValueError(f"database item {item.get('id')!r} records no audio file (databases built before "
                             "items recorded their audio list clips without it; `db add` the clips again)")  # fmt: skip
        path = Path(audio)
        if not path.is_absolute():
            if self.audio_root is None:
                raise ValueError(f"database item {item.get('id')!r}: its audio {audio!r} is relative to a corpus "
                                 "folder; pass --audio-root (the embedded default model's corpus: "
                                 "`reaudio data build-sfx --out DIR`)")  # fmt: skip
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
        todo = [i for i, r in enumerate(requests) if (r.init == "neighbour" or durations and r.duration is None
                and r.initial_latent is None and r.init_audio is None) and isinstance(r.k, (int, type(None)))
                and (k_default if r.k is None else r.k) > 0 and isinstance(r.prompt, str) and r.prompt.strip()]  # fmt: skip
        if not todo:
            return {}, {}
        film, _, _ = self.embed_text([requests[i].prompt for i in todo])
        longest = self.manifest.defaults.duration
        out: dict[int, float] = {}
        starts: dict[int, tuple[str, Path]] = {}
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
        return out, starts

    def plan_batches(self, requests: list[Request], batch_size: int) -> list[list[int]]:
        """Indices of ``requests`` per batch, as :meth:`stream` would run them (a distributed job
        that keeps these batches gets byte-identical audio: results depend on batch composition)."""
        resolved = self.resolve_all(requests)
        return [[r.index for r in batch] for batch in self._batches(resolved, batch_size)]

    def _batches(self, resolved: list[_Resolved], batch_size: int) -> list[list[_Resolved]]:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        groups: dict[tuple, list[_Resolved]] = {}
        for r in resolved:
            groups.setdefault((r.frames, r.steps, r.sampler, r.strength,
                               r.windowed and (r.loop, r.window, r.overlap)), []).append(r)  # fmt: skip
        # Windowed clips (long ones, loops) run after the others, so a 5-minute ambience does not hold
        # back a library's short clips; within each kind, in order of first appearance.
        ordered = sorted(groups.values(), key=lambda g: g[0].windowed)
        return [g[i : i + batch_size] for g in ordered for i in range(0, len(g), batch_size)]

    def _stream(self, requests: list[Request], batch_size: int) -> Iterator[tuple[int, Result]]:
        resolved = self.resolve_all(requests)  # all errors before any work
        batches = self._batches(resolved, batch_size)
        if not batches:
            return
        # Conditioning (tokenise, text encoder, retrieval) of batch n+1 overlaps the
        # denoising of batch n; onnxruntime releases the GIL while it runs.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reaudio-prep") as pool:
            pending = pool.submit(self._conditions, batches[0])
            for n, batch in enumerate(batches):
                conditions, neighbours, prep_s = pending.result()
                if n + 1 < len(batches):
                    pending = pool.submit(self._conditions, batches[n + 1])
                yield from self._run_batch(batch, conditions, neighbours, prep_s)

    def _conditions(self, batch: list[_Resolved]) -> tuple[dict[str, np.ndarray], list[list[dict]], float]:
        start = time.perf_counter()
        film, _, _ = self.embed_text([r.request.prompt for r in batch])
        conditions = {
            "film": film,
            "uncond_film": self._uncond_film(batch, film),
            "guidance": np.array([r.guidance for r in batch], np.float32),
        }
        neighbours: list[list[dict]] = [[] for _ in batch]
        spec = self.manifest.retrieval
        if spec:
            k_max = max(1, max(r.k for r in batch))  # one masked slot keeps shapes valid at k = 0
            rows = np.full((len(batch), k_max), -1, dtype=np.int64)
            for mode in sorted({r.retrieval for r in batch}) if len(self.db) else ():
                sel = [i for i, r in enumerate(batch) if r.retrieval == mode]
                rows[sel] = self.db.search(film[sel], k_max, mode=mode)
            for i, r in enumerate(batch):
                rows[i, r.k :] = -1
            gathered = self.db.gather(rows)
            for i, row in enumerate(rows):
                neighbours[i] = [
                    {"id": self.db.items[j]["id"], "caption": self.db.items[j].get("caption", "")} for j in row if j >= 0
                ]
            if "retrieved_text" in spec.contexts:
                conditions["retrieved_text"] = gathered.caption_tokens
                conditions["retrieved_text_mask"] = gathered.caption_mask
            if "retrieved_audio" in spec.contexts:
                conditions["retrieved_audio"] = gathered.audio_tokens
                conditions["retrieved_audio_mask"] = gathered.audio_mask
        return conditions, neighbours, time.perf_counter() - start

    def _uncond_film(self, batch: list[_Resolved], film: np.ndarray) -> np.ndarray:
        if self.manifest.null_condition == "zeros":
            uncond = np.zeros_like(film)
        else:
            if self._empty_prompt is None:  # the same for every batch: encode it once
                self._empty_prompt = self.embed_text([""])[0]
            uncond = np.repeat(self._empty_prompt, len(batch), axis=0)
        negatives = [(i, r.request.negative_prompt) for i, r in enumerate(batch) if r.request.negative_prompt]
        if negatives:
            emb = self.embed_text([text for _, text in negatives])[0]
            for (i, _), row in zip(negatives, emb):
                uncond[i] = row
        return uncond

    def _initial_latents(self, batch: list[_Resolved], plan=None) -> np.ndarray:
        """Each clip's starting latent: its seed's noise, or its start clip noised to the plan's first step."""
        c, f = self.manifest.latent.channels, self.manifest.latent.freq
        out = []
        starts = [i for i, r in enumerate(batch) if r.init_source is not None and r.strength < 1.0]
        waves = [fit_to(read_init_audio(batch[i].init_source, self.sample_rate, f"request {batch[i].index}"),
                        batch[i].samples) for i in starts]  # fmt: skip
        clean = self.encode_latents(waves, batch[0].frames) if starts else []
        for i, r in enumerate(batch):
            if r.request.initial_latent is not None:
                out.append(np.asarray(r.request.initial_latent, dtype=np.float32))
                continue
            noise = initial_noise(r.request.seed, (c, r.frames, f))
            out.append(noised_start(plan, clean[starts.index(i)], noise) if i in starts else noise)
        return np.stack(out)

    def _denoise(self, runners: dict, batch: list[_Resolved], conditions: dict) -> np.ndarray:
        plan = make_plan(self.manifest.schedule, batch[0].sampler, batch[0].steps, batch[0].strength)
        latent = self._initial_latents(batch, plan)
        if not len(plan):  # a strength too small for one step: the start clip as encoded
            return latent
        if batch[0].windowed:
            # Host loop over windows on every backend: a window's graph call is the unit of work.
            windows = batch[0].windows()
            frame_s = self.manifest.latent.downsample * self.manifest.mel.hop_length / self.sample_rate
            log.info("%d clip(s) of %.1f s%s: %d windows of %.1f s each, %d steps", len(batch),
                     batch[0].samples / self.sample_rate, " (loop)" if batch[0].loop else "", len(windows),
                     batch[0].window * frame_s, len(plan))  # fmt: skip
            every = max(1, len(plan) // 5)

            def on_step(done: int, steps: int) -> None:
                if len(windows) * len(batch) > WINDOWS_PER_CALL and (done % every == 0 or done == steps):
                    log.info("… step %d of %d", done, steps)

            return denoise_windowed(runners["denoiser"], plan, latent, conditions, windows,
                                    per_call=max(WINDOWS_PER_CALL, len(batch)), on_step=on_step)  # fmt: skip
        if runners is self.runners and self.backend == "trt-native":
            from .trt_native import denoise_trt

            return denoise_trt(runners["denoiser"], plan, latent, conditions)
        if runners is self.runners and self._graphs is not None:
            from .cuda_graphs import CudaGraphsUnavailable

            try:
                return self._graphs(plan, latent, conditions)
            except CudaGraphsUnavailable as exc:
                log.warning("CUDA graphs unavailable, running without them: %s", exc)
                self._graphs = None
        if runners is self.runners and self.backend in ("cuda", "tensorrt"):
            return denoise_device(runners["denoiser"], plan, latent, conditions, self.device_id)
        return denoise_host(runners["denoiser"], plan, latent, conditions)

    def _decode(self, runners: dict, batch: list[_Resolved], latent: np.ndarray) -> np.ndarray:
        r = batch[0]
        if not r.windowed:
            return runners["decoder"].run({"latent": latent})[0]
        # Decoder windows span the denoising window; their context is half the overlap.
        plan = plan_decode(r.frames, r.window, max(1, r.overlap // 2), circular=r.loop)
        return decode_windowed(runners["decoder"], latent, plan,
                               self.manifest.latent.downsample * self.manifest.mel.hop_length)  # fmt: skip

    def _run_batch(self, batch, conditions, neighbours, prep_s) -> Iterator[tuple[int, Result]]:
        t0 = time.perf_counter()
        try:
            latent = self._denoise(self.runners, batch, conditions)
            t1 = time.perf_counter()
            audio = self._decode(self.runners, batch, latent)
        except (RuntimeError, MemoryError) as exc:  # onnxruntime's allocation failures among them
            # One batch that cannot run (too long for this machine's memory, say) fails only its clips.
            log.error("a batch of %d clip(s) of %.1f s failed: %s", len(batch), batch[0].samples / self.sample_rate,
                      str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)  # fmt: skip
            for i, r in enumerate(batch):
                yield r.index, Result(request=r.request, waveform=None, sample_rate=self.sample_rate,
                                      seed=r.request.seed, steps=r.steps, guidance=r.guidance, sampler=r.sampler,
                                      k=r.k, retrieval=r.retrieval, neighbours=neighbours[i], strength=r.strength,
                                      init_from=r.init_from,
                                      error=f"the batch failed: {str(exc)[:200] or type(exc).__name__}")  # fmt: skip
            return
        t2 = time.perf_counter()
        for i, r in enumerate(batch):
            wav = audio[i, : r.samples]
            error = None
            if not np.isfinite(wav).all():
                wav, error = self._retry_fp32(r, conditions, i)
            if error is None and r.natural:
                wav = trim_tail(wav, self.sample_rate)
            timings = {"prepare_s": prep_s / len(batch), "denoise_s": (t1 - t0) / len(batch),
                       "decode_s": (t2 - t1) / len(batch)}  # fmt: skip
            yield r.index, Result(
                request=r.request,
                waveform=None if error else np.ascontiguousarray(wav, dtype=np.float32),
                sample_rate=self.sample_rate,
                seed=r.request.seed,
                steps=r.steps,
                guidance=r.guidance,
                sampler=r.sampler,
                k=r.k,
                retrieval=r.retrieval,
                neighbours=neighbours[i],
                timings=timings,
                error=error,
                strength=r.strength,
                init_from=r.init_from,
            )

    def _reduced_precision(self) -> bool:
        """True when some stage runs a graph other than its fp32 one."""
        if self.backend == "trt-native":
            return True
        return any(stage_file(s, self.backend, self.precision) != s.file for s in self.manifest.stages.values())

    def _retry_fp32(self, r: _Resolved, conditions: dict, i: int) -> tuple[np.ndarray | None, str | None]:
        """One retry of a non-finite clip with the fp32 graphs on CPU; else a reported failure."""
        if not self._reduced_precision():
            log.warning("clip %s came out non-finite; not written", r.request.id or r.index)
            return None, "non-finite audio (NaN/inf) from the model"
        if self._fp32_runners is None:
            self._fp32_runners = make_runners(self.bundle, self.manifest, "cpu", precision="fp32")
        single = {k: v[i : i + 1] for k, v in conditions.items()}
        latent = self._denoise(self._fp32_runners, [r], single)
        audio = self._decode(self._fp32_runners, [r], latent)
        wav = audio[0, : r.samples]
        if np.isfinite(wav).all():
            log.warning("clip %s was non-finite in reduced precision; regenerated in fp32", r.request.id or r.index)
            return wav, None
        return None, "non-finite audio (NaN/inf), also after an fp32 retry"
