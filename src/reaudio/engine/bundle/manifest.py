"""The bundle manifest: the one schema shared by ``export`` (writer) and the engine (reader).

Everything model-specific that the engine needs lives here; the engine holds no
magic constants of its own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio.frontend import MelConfig, fit_window, log_mel
from ..denoising.schedule import NoiseScheduleConfig
from .dataclass_io import from_dict, to_dict, write_json_atomic

FORMAT_VERSION = 1
BUNDLE_MANIFEST = "manifest.json"
#: Bundle paths that are not checksummed: per-machine caches.
UNHASHED_PREFIXES = ("plans/",)
DTYPES = ("float32", "float16", "int64", "bool")
NULL_CONDITIONS = ("zeros", "empty_prompt")
#: The precisions a stage may be tuned to, per CPU backend (bf16 is OpenVINO's arithmetic on the fp32 graph).
TUNABLE_PRECISIONS = {"cpu": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8", "int8-bf16")}
#: ``reaudio tune``'s measurements, beside the manifest: what each precision cost and which backend won.
TUNING_REPORT = "precision_report.json"


class BundleError(ValueError):
    """A bundle is missing, malformed or corrupted; the message names the file."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints, or names of dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec {self.name}: dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")


@dataclass(frozen=True)
class StageSpec:
    """One exported graph.

    Attributes:
        file: fp32 ONNX graph, relative to the bundle.
        inputs, outputs: the graph's I/O contract.
        fp16_file: the fp16 variant for GPU backends, if exported.
        int8_file: the int8 (quantised) variant for the CPU backend, if made.
        fused_file: the fp16 variant with onnxruntime's fused CUDA kernels (``--optimize gpu``);
            the CUDA backend only.
    """

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    fp16_file: str | None = None
    int8_file: str | None = None
    fused_file: str | None = None

    def variants(self) -> tuple[str, ...]:
        """Every graph file of this stage: fp32, then the variants that exist."""
        return tuple(f for f in (self.file, self.fp16_file, self.int8_file, self.fused_file) if f)


@dataclass(frozen=True)
class LatentSpec:
    """How latents relate to audio.

    Attributes:
        channels: latent channels.
        downsample: mel frames (and bands) per latent frame (band).
        freq: latent frequency bins.
        scaling_factor: the denoiser works on latents × this.
    """

    channels: int
    downsample: int
    freq: int
    scaling_factor: float


@dataclass(frozen=True)
class RetrievalSpec:
    """Retrieval settings the engine applies at run time.

    Attributes:
        k: default neighbours per prompt; 0 means the model uses no retrieval.
        key: the default retrieval mode: "caption" (the prompt against the database's caption
            embeddings), "audio" (against its CLAP audio embeddings), "hybrid" (a weighted sum
            of both scores), or "text" (a legacy database holding caption keys only).
        contexts: the denoiser's context inputs fed from neighbours.
        caption_tokens, audio_tokens: L and M, tokens per neighbour.
        caption_dim, audio_dim: token widths.
        folder: the database folder inside the bundle.
    """

    k: int
    key: str
    contexts: tuple[str, ...]
    caption_tokens: int
    audio_tokens: int
    caption_dim: int
    audio_dim: int
    folder: str = "retrieval"


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    max_length: int


@dataclass(frozen=True)
class Defaults:
    """Generation defaults a request may override.

    Attributes:
        duration: seconds of a clip (the length the model was trained on).
        window: seconds one denoising window spans; longer clips and loops are made of
            overlapping windows (None: ``duration``).
        overlap: seconds neighbouring windows share (None: a quarter of the window).
        strength: how far a clip started from real audio (init_audio, init) may move from it.
    """

    steps: int = 25
    guidance: float = 2.5
    sampler: str = "ddim"
    duration: float = 5.0
    window: float | None = None
    overlap: float | None = None
    strength: float = 0.6

    @property
    def window_seconds(self) -> float:
        return self.window if self.window is not None else self.duration

    @property
    def overlap_seconds(self) -> float:
        return self.overlap if self.overlap is not None else self.window_seconds / 4


@dataclass(frozen=True)
class AudioFrontend:
    """The audio encoder's own view of a clip, where it is not the generation front end
    (an imported LAION-CLAP: 48 kHz, its own mel bands, a fixed window).

    Attributes:
        mel: its log-mel front end; clips are resampled to ``mel.sample_rate`` first.
        window_seconds: clips are repeat-padded or centre-cropped to this length.
    """

    mel: MelConfig
    window_seconds: float

    def features(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """One mono clip at ``sample_rate`` → the encoder's input (frames, n_mels), float32."""
        wave = np.asarray(wave, dtype=np.float64)
        if sample_rate != self.mel.sample_rate:
            import soxr

            wave = soxr.resample(wave, sample_rate, self.mel.sample_rate)
        wave = fit_window(wave, round(self.window_seconds * self.mel.sample_rate))
        return log_mel(wave.astype(np.float32), self.mel)


@dataclass(frozen=True)
class Licence:
    """The terms of the weights a bundle was made from, shown to whoever generates with it.

    Attributes:
        name: the licence as the source states it (a model card's ``license:``, e.g.
            ``cc-by-nc-sa-4.0``), or "unknown".
        source: where ``name`` came from: the model card it was read off, or ``--licence``.
        model: the model the weights came from (a hub id or folder name).
    """

    name: str
    source: str
    model: str = ""

    @property
    def non_commercial(self) -> bool:
        return "-nc" in self.name.lower() or "noncommercial" in self.name.lower().replace("-", "")

    def notice(self) -> str:
        """One line for a terminal: the licence, where it was read, and what it forbids when it says so."""
        model = f" of {self.model}" if self.model else ""
        line = f"model licence{model}: {self.name} ({self.source})"
        if self.name == "unknown":
            return line + ": check the model's terms before using its sounds"
        if self.non_commercial:
            return line + ": non-commercial use only; sounds made with it inherit its terms"
        return line


@dataclass(frozen=True)
class BundleManifest:
    """A bundle's ``manifest.json``: its stages and their contracts, sizes, defaults and file hashes.

    (Not to be confused with a corpus's clip list, ``read_corpus``, a library's index,
    ``library.jsonl``, or the default model's ``pack.json``.)
    """

    format_version: int
    family: str
    name: str
    mel: MelConfig
    latent: LatentSpec
    schedule: NoiseScheduleConfig
    film_dim: int
    embed_dim: int
    tokenizer: TokenizerSpec
    stages: dict[str, StageSpec]
    retrieval: RetrievalSpec | None = None
    defaults: Defaults = field(default_factory=Defaults)
    #: The unconditional FiLM vector of guidance: "zeros" (models trained with condition
    #: dropout to zeros) or "empty_prompt" (the text encoder's embedding of "", AudioLDM).
    null_condition: str = "zeros"
    files: dict[str, str] = field(default_factory=dict)
    #: The source weights' licence (imported models); None: not recorded (our own models).
    licence: Licence | None = None
    #: The audio encoder's front end when it is not ``mel`` (None: ``mel`` at any length).
    audio_frontend: AudioFrontend | None = None
    #: How far the denoiser graph rescales guided predictions toward the conditional one's spread
    #: (0: plain guidance). Fixed at export (``reaudio export --guidance-rescale``); recorded here
    #: so a bundle says how it samples.
    guidance_rescale: float = 0.0
    #: The decoder's output rate when it is not the mel's: a decoder with a band-extension stage
    #: writes 44.1 kHz from the 22.05-kHz mel (a whole multiple of ``mel.sample_rate``). None: the mel's.
    output_rate: int | None = None
    #: Per CPU backend ("cpu", "openvino"), the precision each stage runs at under ``--precision
    #: auto``: the fastest that kept the sound when ``reaudio tune`` measured it (its numbers in
    #: ``precision_report.json``). A stage not named runs fp32.
    tuned_precision: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.null_condition not in NULL_CONDITIONS:
            raise ValueError(f"null_condition={self.null_condition!r}; valid: {', '.join(NULL_CONDITIONS)}")
        for backend, stages in self.tuned_precision.items():
            valid = TUNABLE_PRECISIONS.get(backend)
            if valid is None:
                raise ValueError(f"tuned_precision: backend {backend!r}; valid: {', '.join(TUNABLE_PRECISIONS)}")
            for stage, precision in stages.items():
                if precision not in valid:
                    raise ValueError(
                        f"tuned_precision.{backend}.{stage}: {precision!r}; valid on {backend}: {', '.join(valid)}"
                    )

    @property
    def sample_rate(self) -> int:
        """The rate of the audio the bundle writes, and of waveforms given to it (start clips)."""
        return self.output_rate or self.mel.sample_rate

    @property
    def samples_per_frame(self) -> int:
        """Output samples per latent frame: the VAE's time downsampling × the mel hop × output rate / mel rate."""
        return self.mel_samples_per_frame * self.sample_rate // self.mel.sample_rate

    @property
    def mel_samples_per_frame(self) -> int:
        """Samples at the mel's rate per latent frame: what the encoders' front end reads."""
        return self.latent.downsample * self.mel.hop_length

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BundleManifest:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest format_version {version!r} is not supported by this engine (expects {FORMAT_VERSION})"
            )
        manifest = from_dict(cls, data, where="manifest")
        _check_ranges(manifest)
        return manifest


#: Stages the engine cannot run without.
REQUIRED_STAGES = ("text_encoder", "denoiser", "decoder")


def _check_ranges(m: BundleManifest) -> None:
    """Values a well-typed manifest can still get wrong, each named with what is valid."""
    problems = []
    if not 1000 <= m.mel.sample_rate <= 192_000:
        problems.append(f"mel.sample_rate={m.mel.sample_rate}; valid: 1000 to 192000")
    elif m.output_rate is not None and (
        m.output_rate % m.mel.sample_rate or not 1 <= m.output_rate // m.mel.sample_rate <= 4
    ):
        problems.append(f"output_rate={m.output_rate}; valid: 1 to 4 times mel.sample_rate ({m.mel.sample_rate})")
    for name in ("channels", "downsample", "freq"):
        if not 1 <= getattr(m.latent, name) <= 4096:
            problems.append(f"latent.{name}={getattr(m.latent, name)}; valid: 1 to 4096")
    if not 0 < m.latent.scaling_factor < 1e6:
        problems.append(f"latent.scaling_factor={m.latent.scaling_factor}; must be positive")
    if not 0.0 <= m.guidance_rescale <= 1.0:
        problems.append(f"guidance_rescale={m.guidance_rescale}; valid: 0 to 1")
    missing = [s for s in REQUIRED_STAGES if s not in m.stages]
    if missing:
        problems.append(f"stages: missing {missing}")
    paths = [("tokenizer.file", m.tokenizer.file)] + [(f"stages.{n}.file", s.file) for n, s in m.stages.items()]
    for n, spec in m.stages.items():
        for kind in ("fp16_file", "int8_file", "fused_file"):
            if getattr(spec, kind):
                paths.append((f"stages.{n}.{kind}", getattr(spec, kind)))
    if m.retrieval:
        paths.append(("retrieval.folder", m.retrieval.folder))
        # Feature sizes allocate per neighbour and prompt: a crafted value must not ask for terabytes.
        for name in ("caption_tokens", "audio_tokens"):
            if not 1 <= getattr(m.retrieval, name) <= 4096:
                problems.append(f"retrieval.{name}={getattr(m.retrieval, name)}; valid: 1 to 4096")
        if not 0 <= m.retrieval.k <= 64:
            problems.append(f"retrieval.k={m.retrieval.k}; valid: 0 to 64")
    paths += [(f"files[{rel!r}]", rel) for rel in m.files]
    for name, rel in paths:
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or rel.startswith("~"):
            problems.append(f"{name}={rel!r} must be a path inside the bundle")
    if problems:
        raise BundleError("manifest: " + "; ".join(problems))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _unhashed(manifest: BundleManifest) -> tuple[str, ...]:
    """Per-machine caches, and the retrieval database: it changes with ``reaudio db add`` and
    carries checksums of its own per generation (see retrieval.database), so a change of it commits with
    one rename and never leaves ``manifest.json`` disagreeing with the files."""
    return UNHASHED_PREFIXES + ((manifest.retrieval.folder.rstrip("/") + "/",) if manifest.retrieval else ())


def hashed_files(bundle: Path, skip: tuple[str, ...] = UNHASHED_PREFIXES) -> dict[str, str]:
    """sha256 of every file in ``bundle`` except the manifest and the ``skip`` folders."""
    out = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel == BUNDLE_MANIFEST or rel.startswith(skip) or "/." in f"/{rel}":
            continue
        out[rel] = sha256_file(path)
    return out


def write_bundle_manifest(bundle: str | Path, manifest: BundleManifest) -> BundleManifest:
    """Hash the bundle's files into ``manifest.files`` and write ``manifest.json`` atomically."""
    from dataclasses import replace

    bundle = Path(bundle)
    manifest = replace(manifest, files=hashed_files(bundle, _unhashed(manifest)))
    write_json_atomic(bundle / BUNDLE_MANIFEST, manifest.to_dict())
    return manifest


def check_bundle_folder(bundle: str | Path) -> Path:
    """``bundle`` as a path, when it is a folder at all (a clear error otherwise, not an errno)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        what = "no such folder" if not bundle.exists() else "a file, not a folder"
        raise BundleError(
            f"{bundle}: {what}; a bundle is a folder holding {BUNDLE_MANIFEST} (made by reaudio export or import)"
        )
    return bundle


def read_bundle_manifest(bundle: str | Path, verify: bool = True) -> BundleManifest:
    """Load ``manifest.json``; with ``verify``, refuse files that do not match their checksums."""
    bundle = check_bundle_folder(bundle)
    path = bundle / BUNDLE_MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle ({BUNDLE_MANIFEST} missing)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path}: not UTF-8 (byte {exc.start}); the bundle is corrupted, re-export it") from exc
    try:
        manifest = BundleManifest.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{path}: {exc}") from exc
    if verify:
        verify_files(bundle, manifest)
    return manifest


def verify_files(bundle: Path, manifest: BundleManifest) -> None:
    skip = _unhashed(manifest)
    for rel, expected in manifest.files.items():
        if rel.startswith(skip):
            continue  # bundles written before the database verified itself listed its files here
        file = bundle / rel
        if not file.is_file():
            raise BundleError(f"{file}: listed in the manifest but missing from the bundle")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(
                f"{file}: checksum mismatch (manifest {expected[:12]}…, file {actual[:12]}…); "
                f"the bundle is corrupted or was edited; re-export it"
            )
    for stage, spec in manifest.stages.items():
        for rel in spec.variants():
            if rel not in manifest.files:
                raise BundleError(f"{bundle / rel}: stage {stage!r} file is not in the manifest's checksums")
