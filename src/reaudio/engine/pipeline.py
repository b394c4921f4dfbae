"""The Python API, ``Engine.from_bundle(...).generate(requests)``: conditions, denoising, decoding."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soxr

from .audio.audio_io import load_audio
from .audio.frontend import log_mel
from .audio.init_audio import encode_latents, fit_to, read_init_audio, training_gain_db
from .audio.postprocess import trim_tail
from .audio.splice import EDGE_FADE_SECONDS, keep_original
from .bundle.manifest import BundleManifest, read_bundle_manifest
from .denoising.denoisers import Denoiser, Fp32Retry, choose_denoiser
from .denoising.known_regions import KnownLatent, keep_mask
from .denoising.sampler import SamplerPlan, initial_noise, make_plan, noised_start
from .denoising.window_plans import plan_decode, segment_shares
from .denoising.windowed_loops import WINDOWS_PER_CALL, decode_windowed
from .planning import Planner, Request, Resolved, text_embeddings
from .retrieval.database import Neighbours, RetrievalDB
from .retrieval.references import References, with_references
from .settings import NEIGHBOUR_CONTEXTS
from .stages.backends import (
    OPENVINO_PRECISIONS,
    make_runners,
    open_backend,
    run_errors,
    stage_file,
    stages_run_as,
)
from .stages.text_tokenizer import TextTokenizer

log = logging.getLogger(__name__)

#: Seconds of a reference clip its CLAP features are made from (db add's limit: the encoder's cost
#: grows with length).
REFERENCE_SECONDS = 30.0


@dataclass(frozen=True)
class EditedBatch:
    """What a batch of edited clips keeps: their latents' kept frames, and each start clip placed in
    its clip at the output rate (whose samples the files keep)."""

    known: KnownLatent
    originals: list[np.ndarray]
    #: Per clip, what undoes the gain the start clip got on its way into the latent space (the
    #: models' training level): the generated part comes out at the start clip's own level.
    level_back: np.ndarray


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


class Engine:
    """A loaded bundle on one backend.

    Safe to share between threads for generation: onnxruntime sessions are
    thread-safe and a call keeps its state on its own stack. Changing the
    retrieval database (``reaudio db add``) is not seen by a running engine;
    load it again afterwards. Planning (defaults, validation, batches, neighbour audio) is
    ``engine.planner``'s (:class:`~reaudio.engine.planning.Planner`).
    """

    def __init__(
        self,
        bundle: Path,
        manifest: BundleManifest,
        backend: str,
        device_id: int,
        runners: dict,
        cuda_graphs: bool = False,
        verify: bool = True,
        audio_root: str | Path | None = None,
        precision: str = "auto",
    ) -> None:
        self.bundle = bundle
        #: The precision asked for: "auto" (fp16 graphs on GPU backends, the tuned choice on the CPU),
        #: "fp32", "fp16", "int8", "bf16" or "int8-bf16"; ``stage_precision`` is what each stage runs.
        self.precision = precision
        self.manifest = manifest
        self.backend = backend
        #: What each stage computes in ("auto" resolved per stage, a tuned bundle's choice on the CPU;
        #: a stage without the asked-for graph named by the fp32 one it runs instead).
        self.stage_precision = stages_run_as(manifest, backend, precision)
        self.device_id = device_id
        self.runners = runners
        self._run_errors = run_errors()
        self.tokenizer = TextTokenizer.from_file(bundle / manifest.tokenizer.file, manifest.tokenizer.max_length)
        self.db = RetrievalDB(bundle / manifest.retrieval.folder, verify=verify) if manifest.retrieval else None
        self._empty_prompt: np.ndarray | None = None
        #: Defaults, validation and batching of requests (shared with the jobs).
        self.planner = Planner(bundle, manifest, self.db, self.embed_text, audio_root)
        graphs = None
        if cuda_graphs and backend == "cuda":
            from .denoising.cuda_graphs import CudaGraphDenoiser

            spec = manifest.stages["denoiser"]
            path = bundle / stage_file(spec, backend, precision)
            shapes = {i.name: list(i.shape) for i in spec.inputs}
            graphs = CudaGraphDenoiser(str(path), device_id, runners["denoiser"].input_dtypes, input_shapes=shapes)
        elif cuda_graphs:
            raise ValueError(
                f"--cuda-graphs needs backend 'cuda' (this engine runs on {backend!r}); "
                "pass --backend cuda on a machine with onnxruntime-gpu, or leave out --cuda-graphs"
            )
        #: How the denoising loop runs on this backend (chosen here, once).
        self.denoiser: Denoiser = choose_denoiser(backend, runners, device_id, graphs)
        #: fp32 on the CPU for clips that come out non-finite in reduced precision; None at fp32.
        self.fp32_retry = (
            Fp32Retry(lambda: make_runners(bundle, manifest, "cpu", precision="fp32"))
            if self._reduced_precision()
            else None
        )

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
        manifest = read_bundle_manifest(bundle, verify=verify)
        chosen, runners = open_backend(bundle, manifest, backend, device_id, threads, precision)
        log.info("loaded %s (%s, %s) on %s", bundle, manifest.name, manifest.family, chosen)
        return cls(
            bundle,
            manifest,
            chosen,
            device_id,
            runners,
            cuda_graphs=cuda_graphs,
            verify=verify,
            audio_root=audio_root,
            precision=precision,
        )

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def licence(self):
        """The source weights' :class:`~reaudio.engine.bundle.manifest.Licence`, or None when not recorded."""
        return self.manifest.licence

    # -- encoders ---------------------------------------------------------------------

    def embed_text(self, texts: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CLAP text embeddings (N, E), token features (N, L, H) and mask (N, L)."""
        return text_embeddings(self.tokenizer, self.runners["text_encoder"], texts, length)

    def embed_each(self, texts: list[str]) -> np.ndarray:
        """CLAP text embeddings (N, E), each text encoded alone: a batch pads its texts to the longest,
        which moves an embedding by ~1e-7, and 25 sampling steps grow that to ~1e-4 of a clip's peak;
        alone, a clip's audio does not depend on the prompts that share its batch."""
        unique = list(dict.fromkeys(texts))
        by_text = {text: self.embed_text([text])[0][0] for text in unique}
        return np.stack([by_text[text] for text in texts])

    def encode_audio(self, waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """CLAP audio embeddings (N, E) and pooled audio tokens (N, M, D) of mono clips at the bundle's rate."""
        if "audio_encoder" not in self.runners:
            raise ValueError(f"{self.bundle}: this bundle has no audio encoder (an imported model without our CLAP)")
        embs, tokens = [], []
        front = self.manifest.audio_frontend
        for wav in waveforms:
            mel = (
                front.features(wav, self.sample_rate) if front else log_mel(self._at_mel_rate(wav), self.manifest.mel)
            )[None]
            e, t = self.runners["audio_encoder"].run({"mel": mel})
            embs.append(e[0])
            tokens.append(t[0])
        return np.stack(embs), np.stack(tokens)

    def encode_latents(self, waveforms: list[np.ndarray], frames: int) -> np.ndarray:
        """Scaled VAE latents (N, C, frames, F) of mono clips at the bundle's rate, each cut or
        padded to ``frames`` latent frames and brought to the level the model trained at."""
        if "vae_encoder" not in self.runners:
            raise ValueError(
                f"{self.bundle}: this bundle has no VAE encoder (vae_encoder stage), so clips cannot "
                "enter its latent space; export the model again with this reaudio (from a VAE with its encoder)"
            )
        window = self.planner.seconds_to_frames(self.manifest.defaults.window_seconds)
        return encode_latents(
            self.runners["vae_encoder"],
            self.manifest.mel,
            [self._at_mel_rate(w) for w in waveforms],
            frames,
            self.manifest.mel_samples_per_frame,
            chunk=window,
        )

    def _at_mel_rate(self, wave: np.ndarray) -> np.ndarray:
        """A waveform at the bundle's output rate, at its mel's rate (they differ after a band extension)."""
        if self.sample_rate == self.manifest.mel.sample_rate or not len(wave):
            return wave
        return soxr.resample(wave, self.sample_rate, self.manifest.mel.sample_rate, quality="HQ").astype(np.float32)

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

    def _stream(self, requests: list[Request], batch_size: int) -> Iterator[tuple[int, Result]]:
        resolved = self.planner.resolve_all(requests)  # all errors before any work
        batches = self.planner.batches(resolved, batch_size)
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

    def _conditions(self, batch: list[Resolved]) -> tuple[dict[str, np.ndarray], list[list[dict]], float]:
        """The graph's conditions of a batch (a row per clip; a row per clip and window when a clip has a
        timeline), each clip's neighbours as records, and the seconds it took."""
        if _per_window(batch):
            return self._timeline_conditions(batch)
        start = time.perf_counter()
        film = self.embed_each([r.segments[0][1] if r.segments else r.request.prompt for r in batch])
        conditions = {
            "film": film,
            "uncond_film": self._uncond_film(batch, film),
            "guidance": np.array([r.guidance for r in batch], np.float32),
        }
        neighbours: list[list[dict]] = [[] for _ in batch]
        spec = self.manifest.retrieval
        if spec:
            gathered, neighbours = self.db.retrieve(film, [r.k for r in batch], [r.retrieval for r in batch])
            if any(r.references for r in batch):
                gathered = self._with_references(batch, gathered, neighbours)
            if "retrieved_text" in spec.contexts:
                conditions["retrieved_text"] = gathered.caption_tokens
                conditions["retrieved_text_mask"] = gathered.caption_mask
            if "retrieved_audio" in spec.contexts:
                conditions["retrieved_audio"] = gathered.audio_tokens
                conditions["retrieved_audio_mask"] = gathered.audio_mask
            _mask_unchosen_contexts(conditions, batch, spec.contexts)
        return conditions, neighbours, time.perf_counter() - start

    def _timeline_conditions(self, batch: list[Resolved]) -> tuple[dict[str, np.ndarray], list[list[dict]], float]:
        """A row per (clip, window): each segment's conditions as a prompt of its own; a window's FiLM is
        its segments' mixed by how much of the window's weight each covers, its neighbours those of the
        segment it covers most (a clip without a timeline: its own row in every window)."""
        start = time.perf_counter()
        windows = batch[0].windows()  # a batch shares its windows (the planner's batch key)
        parts, owners = [], []
        for b, r in enumerate(batch):
            for text in [t for _, t in r.segments] or [r.request.prompt]:
                parts.append(replace(r, request=replace(r.request, prompt=text), segments=()))
                owners.append(b)
        flat, records, _ = self._conditions(parts)
        rows, films, neighbours = [], [], []
        for b, r in enumerate(batch):
            mine = [i for i, owner in enumerate(owners) if owner == b]
            starts = [first for first, _ in r.segments] or [0]
            shares = segment_shares(windows, starts)
            films += [shares[w] @ flat["film"][mine] for w in range(len(windows))]
            rows += [mine[int(np.argmax(shares[w]))] for w in range(len(windows))]
            many = len(mine) > 1
            neighbours.append([{**n, "segment": s} if many else n for s, i in enumerate(mine) for n in records[i]])
        conditions = {name: value[rows] for name, value in flat.items()}
        conditions["film"] = np.stack(films).astype(flat["film"].dtype)
        return conditions, neighbours, time.perf_counter() - start

    def _with_references(self, batch: list[Resolved], gathered: Neighbours, neighbours: list[list[dict]]) -> Neighbours:
        """``gathered`` with each request's reference clips as neighbours (``neighbours`` gains their records)."""
        clips = [
            [self._reference_audio(ref, f"request {r.index} reference {n}") for n, ref in enumerate(r.references)]
            for r in batch
        ]
        names = [
            [Path(ref).name if isinstance(ref, (str, Path)) else f"clip {n}" for n, ref in enumerate(r.references)]
            for r in batch
        ]
        return with_references(
            gathered,
            neighbours,
            self.db.info,
            [References(c, r.reference_caption, n) for c, r, n in zip(clips, batch, names)],
            lambda waves: self.encode_audio(waves)[1],
            lambda text, length: self.embed_text([text], length=length)[1:],
        )

    def _reference_audio(self, ref, where: str) -> np.ndarray:
        """A reference clip at the output rate: its first ``REFERENCE_SECONDS`` stand for it, as in ``db add``."""
        if isinstance(ref, (str, Path)):
            return load_audio(ref, self.sample_rate, max_seconds=REFERENCE_SECONDS)
        return read_init_audio(ref, self.sample_rate, where)[: round(REFERENCE_SECONDS * self.sample_rate)]

    def _uncond_film(self, batch: list[Resolved], film: np.ndarray) -> np.ndarray:
        if self.manifest.null_condition == "zeros":
            uncond = np.zeros_like(film)
        else:
            if self._empty_prompt is None:  # the same for every batch: encode it once
                self._empty_prompt = self.embed_text([""])[0]
            uncond = np.repeat(self._empty_prompt, len(batch), axis=0)
        negatives = [(i, r.request.negative_prompt) for i, r in enumerate(batch) if r.request.negative_prompt]
        if negatives:
            emb = self.embed_each([text for _, text in negatives])
            for (i, _), row in zip(negatives, emb):
                uncond[i] = row
        return uncond

    def _initial_latents(self, batch: list[Resolved], plan=None) -> np.ndarray:
        """Each clip's starting latent: its seed's noise, or its start clip noised to the plan's first step."""
        c, f = self.manifest.latent.channels, self.manifest.latent.freq
        out = []
        starts = [i for i, r in enumerate(batch) if r.init_source is not None and r.strength < 1.0]
        waves = [self._start_clip(batch[i]) for i in starts]
        clean = self.encode_latents(waves, batch[0].frames) if starts else []
        for i, r in enumerate(batch):
            if r.request.initial_latent is not None:
                out.append(np.asarray(r.request.initial_latent, dtype=np.float32))
                continue
            noise = initial_noise(r.request.seed, (c, r.frames, f))
            out.append(noised_start(plan, clean[starts.index(i)], noise) if i in starts else noise)
        return np.stack(out)

    def _edited_latents(self, batch: list[Resolved], plan) -> tuple[np.ndarray, EditedBatch]:
        """Starting latents of edited clips (a batch holds only edits), and what they keep: the
        generated frames start from the seed's noise (or, at strength < 1, from the start clip noised
        to the plan's first step, as audio-to-audio does), the kept frames from the start clip noised."""
        c, f = self.manifest.latent.channels, self.manifest.latent.freq
        waves = [self._start_clip(r) for r in batch]
        clean = self.encode_latents(waves, batch[0].frames)
        noise = np.stack([initial_noise(r.request.seed, (c, r.frames, f)) for r in batch])
        keep = np.stack([self._keep(r)[None, :, None] for r in batch])
        noised = noised_start(plan, clean, noise)
        latent = noised if batch[0].strength < 1.0 else (keep * noised + (1 - keep) * noise).astype(np.float32)
        mel_samples = batch[0].frames * self.manifest.mel_samples_per_frame
        rate = self.manifest.mel.sample_rate
        gains = [training_gain_db(fit_to(self._at_mel_rate(w), mel_samples), rate) for w in waves]
        back = np.array([10 ** (-g / 20) for g in gains], dtype=np.float32)
        return latent, EditedBatch(KnownLatent(clean, keep, noise), waves, back)

    def _start_clip(self, r: Resolved) -> np.ndarray:
        """A start clip at the output rate, fitted to the clip (an edit's placed at its offset)."""
        wave = read_init_audio(r.init_source, self.sample_rate, f"request {r.index}")
        if r.edit is None:
            return fit_to(wave, r.samples)
        placed = np.zeros(r.samples, dtype=np.float32)
        part = wave[: r.samples - r.edit.offset]
        placed[r.edit.offset : r.edit.offset + len(part)] = part
        return placed

    def _spliced(self, edited: EditedBatch, i: int, r: Resolved, decoded: np.ndarray) -> np.ndarray:
        """Clip ``i`` of an edited batch as written: the model's audio, at the start clip's level, in
        the generated ranges; the start clip's own samples elsewhere."""
        fade = round(EDGE_FADE_SECONDS * self.sample_rate)
        return keep_original(decoded * edited.level_back[i], edited.originals[i], r.edit.generated, fade)

    def _keep(self, r: Resolved) -> np.ndarray:
        """(frames,) keep weights of an edited clip's latent."""
        per = self.manifest.samples_per_frame
        ranges = [(start // per, -(-end // per)) for start, end in r.edit.generated]
        return keep_mask(r.frames, ranges)

    def _starting_point(self, batch: list[Resolved]) -> tuple[SamplerPlan, np.ndarray, EditedBatch | None]:
        """A batch's sampler plan, starting latents and (edits) what they keep."""
        plan = make_plan(self.manifest.schedule, batch[0].sampler, batch[0].steps, batch[0].strength)
        if batch[0].edit is not None:
            latent, edited = self._edited_latents(batch, plan)
            return plan, latent, edited
        return plan, self._initial_latents(batch, plan), None

    def _denoise(
        self, denoiser: Denoiser, batch: list[Resolved], conditions: dict
    ) -> tuple[np.ndarray, EditedBatch | None]:
        plan, latent, edited = self._starting_point(batch)
        known = edited.known if edited is not None else None
        if not len(plan):  # a strength too small for one step: the start clip as encoded
            return latent, edited
        if batch[0].windowed:
            # Host loop over windows on every backend: a window's graph call is the unit of work.
            windows = batch[0].windows()
            frame_s = self.manifest.samples_per_frame / self.sample_rate
            log.info(
                "%d clip(s) of %.1f s%s: %d windows of %.1f s each, %d steps",
                len(batch),
                batch[0].samples / self.sample_rate,
                " (loop)" if batch[0].loop else "",
                len(windows),
                batch[0].window * frame_s,
                len(plan),
            )
            every = max(1, len(plan) // 5)

            def on_step(done: int, steps: int) -> None:
                if len(windows) * len(batch) > WINDOWS_PER_CALL and (done % every == 0 or done == steps):
                    log.info("… step %d of %d", done, steps)

            return denoiser.windowed(
                plan,
                latent,
                conditions,
                windows,
                per_call=max(WINDOWS_PER_CALL, len(batch)),
                on_step=on_step,
                known=known,
                per_window=_per_window(batch),
            ), edited
        return denoiser(plan, latent, conditions, known), edited

    def _decode(self, decoder, batch: list[Resolved], latent: np.ndarray) -> np.ndarray:
        r = batch[0]
        if not r.windowed:
            return decoder.run({"latent": latent})[0]
        # Decoder windows span the denoising window; their context is half the overlap.
        plan = plan_decode(r.frames, r.window, max(1, r.overlap // 2), circular=r.loop)
        return decode_windowed(decoder, latent, plan, self.manifest.samples_per_frame)

    def _run_batch(self, batch, conditions, neighbours, prep_s) -> Iterator[tuple[int, Result]]:
        t0 = time.perf_counter()
        try:
            latent, edited = self._denoise(self.denoiser, batch, conditions)
            t1 = time.perf_counter()
            audio = self._decode(self.runners["decoder"], batch, latent)
            if edited is not None:
                audio = [self._spliced(edited, i, r, audio[i, : r.samples]) for i, r in enumerate(batch)]
        except self._run_errors as exc:  # onnxruntime's allocation failures among them
            # One batch that cannot run (too long for this machine's memory, say) fails only its clips.
            log.error(
                "a batch of %d clip(s) of %.1f s failed: %s",
                len(batch),
                batch[0].samples / self.sample_rate,
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
            )
            error = f"the batch failed: {str(exc)[:200] or type(exc).__name__}"
            for i, r in enumerate(batch):
                yield r.index, self._result(r, None, neighbours[i], error=error)
            return
        t2 = time.perf_counter()
        for i, r in enumerate(batch):
            timings = {
                "prepare_s": prep_s / len(batch),
                "denoise_s": (t1 - t0) / len(batch),
                "decode_s": (t2 - t1) / len(batch),
            }
            yield (
                r.index,
                self._clip_result(r, audio[i][: r.samples], conditions, i, neighbours[i], timings, rows=len(batch)),
            )

    def _clip_result(
        self, r: Resolved, wav, conditions: dict, i: int, neighbours: list[dict], timings, rows: int = 1
    ) -> Result:
        """The result of a decoded clip: retried in fp32 when it is not finite, its tail trimmed when
        its length came from its neighbours (``conditions[...][i]``: the clip's, for the retry)."""
        error = None
        if not np.isfinite(wav).all():
            wav, error = self._retry_fp32(r, conditions, i, rows)
        if error is None and r.natural:
            wav = trim_tail(wav, self.sample_rate)
        waveform = None if error else np.ascontiguousarray(wav, dtype=np.float32)
        return self._result(r, waveform, neighbours, timings, error)

    def _result(self, r: Resolved, waveform, neighbours: list[dict], timings=None, error=None) -> Result:
        return Result(
            request=r.request,
            waveform=waveform,
            sample_rate=self.sample_rate,
            seed=r.request.seed,
            steps=r.steps,
            guidance=r.guidance,
            sampler=r.sampler,
            k=r.k,
            retrieval=r.retrieval,
            neighbours=neighbours,
            timings=timings or {},
            error=error,
            strength=r.strength,
            init_from=r.init_from,
        )

    def _reduced_precision(self) -> bool:
        """True when some stage runs a graph other than its fp32 one."""
        if self.backend == "trt-native":
            return True
        precisions = self.stage_precision
        return any(
            precisions[name] in OPENVINO_PRECISIONS or stage_file(spec, self.backend, precisions[name]) != spec.file
            for name, spec in self.manifest.stages.items()
        )

    def _retry_fp32(self, r: Resolved, conditions: dict, i: int, rows: int) -> tuple[np.ndarray | None, str | None]:
        """One retry of a non-finite clip with the fp32 graphs on CPU; else a reported failure (``rows``:
        the clips of the batch ``conditions`` belong to)."""
        if self.fp32_retry is None:
            log.warning("clip %s came out non-finite; not written", r.request.id or r.index)
            return None, "non-finite audio (NaN/inf) from the model"
        per = len(conditions["guidance"]) // rows  # a timeline's batch has a row per clip and window
        single = {k: v[i * per : (i + 1) * per] for k, v in conditions.items()}
        latent, edited = self._denoise(self.fp32_retry.denoiser, [r], single)
        wav = self._decode(self.fp32_retry.runners["decoder"], [r], latent)[0, : r.samples]
        if edited is not None:
            wav = self._spliced(edited, 0, r, wav)
        if np.isfinite(wav).all():
            log.warning("clip %s was non-finite in reduced precision; regenerated in fp32", r.request.id or r.index)
            return wav, None
        return None, "non-finite audio (NaN/inf), also after an fp32 retry"


def _per_window(batch: list[Resolved]) -> bool:
    """Whether a batch's conditions change from window to window (some clip has a timeline)."""
    return any(len(r.segments) > 1 for r in batch)


def _mask_unchosen_contexts(conditions: dict[str, np.ndarray], batch: list[Resolved], contexts) -> None:
    """Mask out, row by row, the contexts a clip left out (``neighbour_context``): as the training run
    that dropped one context alone showed the model."""
    for name in contexts:
        rows = [b for b, r in enumerate(batch) if name not in NEIGHBOUR_CONTEXTS[r.neighbour_context]]
        if rows:
            mask = conditions[f"{name}_mask"].copy()  # the database's arrays may be shared
            mask[rows] = 0
            conditions[f"{name}_mask"] = mask
