"""Long clips and seamless loops: window plans, windowed denoising and decoding, seams, loop files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.audio.postprocess import PostProcess, resample_loop
from reaudio.engine.audio.seams import compare, loop_seam
from reaudio.engine.denoising.window_plans import plan_decode, plan_windows

PLANS = [
    (63, 63, 16, False),
    (64, 63, 16, False),
    (188, 63, 16, False),
    (1000, 87, 22, False),
    (7500, 87, 0, False),
    (63, 63, 16, True),
    (19, 63, 16, True),
    (188, 63, 16, True),
    (7500, 87, 21, True),
    (5, 87, 0, True),
]


@pytest.mark.parametrize("total,window,overlap,circular", PLANS)
def test_windows_cover_every_frame_with_weights_summing_to_one(total, window, overlap, circular):
    plan = plan_windows(total, window, overlap, circular)
    sums = np.zeros(total)
    np.add.at(sums, plan.indices, plan.weights)
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-12)
    assert (plan.weights > 0).all() and plan.length <= window
    assert plan.indices.min() >= 0 and plan.indices.max() < total
    for row in plan.indices:
        assert len(set(row.tolist())) == len(row)  # a window never holds a frame twice
        assert np.all((np.diff(row) == 1) | (np.diff(row) == 1 - total))  # consecutive frames, maybe wrapping
    if not circular:
        starts = plan.indices[:, 0]
        assert starts[0] == 0 and plan.indices[-1, -1] == total - 1
        assert np.all(np.diff(starts) <= window - overlap)  # neighbours share at least the overlap
    else:
        assert len(plan) >= 2
        # Some window holds the last frame and then the first: the seam is seen from inside.
        assert any(np.any((row[:-1] == total - 1) & (row[1:] == 0)) for row in plan.indices)


def test_a_clip_that_fits_one_window_is_one_window_of_weight_one():
    plan = plan_windows(63, 63, 16)
    assert len(plan) == 1 and np.array_equal(plan.indices[0], np.arange(63)) and np.all(plan.weights == 1.0)
    assert len(plan_decode(63, 63, 8).windows) == 1


def test_window_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(100, 20, 20)
    with pytest.raises(ValueError, match="window"):
        plan_windows(100, 0, 0)


@pytest.mark.parametrize(
    "total,window,context,circular",
    [(188, 63, 8, False), (7500, 87, 11, False), (188, 63, 8, True), (30, 87, 11, True)],
)
def test_decode_windows_tile_the_clip(total, window, context, circular):
    plan = plan_decode(total, window, context, circular)
    covered = np.zeros(total, dtype=int)
    for i, w in enumerate(plan.windows):
        assert len(w.frames) <= window or circular and len(plan.windows) == 1
        lo, hi = w.keep
        assert 0 <= lo < hi <= len(w.frames)
        kept = (w.start + np.arange(hi - lo)) % total
        assert np.array_equal(w.frames[lo:hi], kept)  # the audio kept is of the frames it says
        head = plan.fade * 2 if (circular or i > 0) else 0
        tail = plan.fade * 2 if (circular or i < len(plan.windows) - 1) else 0
        covered[kept[head // 2 : hi - lo - tail // 2]] += 1
        if not circular:  # context on both sides of what is kept, except at the clip's ends
            assert w.frames[0] == 0 or lo >= plan.fade
    assert np.all(covered == 1)  # core + half of each fade: every frame exactly once


# -- the engine on the tiny bundle --------------------------------------------------------------


@pytest.fixture
def tiny_engine(tiny_bundle):
    from reaudio.engine.pipeline import Engine

    return Engine.from_bundle(tiny_bundle, backend="cpu")


class _Recorder:
    """A runner that records the latent shape of every call."""

    def __init__(self, runner) -> None:
        self.runner, self.shapes = runner, []
        self.input_dtypes = getattr(runner, "input_dtypes", None)

    def run(self, feeds):
        self.shapes.append(feeds["latent"].shape)
        return self.runner.run(feeds)


def test_the_windowed_loop_with_one_window_is_bit_identical_to_the_one_shot_loop(tiny_engine):
    from reaudio.engine.denoising.loop import denoise_host
    from reaudio.engine.denoising.sampler import make_plan
    from reaudio.engine.denoising.windowed_loops import denoise_windowed
    from reaudio.engine.pipeline import Request

    resolved = tiny_engine.planner.resolve_all(
        [Request("a dog barks", duration=1.0, seed=3, sampler="dpmpp-2m", steps=8)]
    )
    conditions, _, _ = tiny_engine._conditions(resolved)
    plan = make_plan(tiny_engine.manifest.schedule, "dpmpp-2m", 8)
    latent = tiny_engine._initial_latents(resolved)
    runner = tiny_engine.runners["denoiser"]
    one_shot = denoise_host(runner, plan, latent, conditions)
    windowed = denoise_windowed(runner, plan, latent, conditions, plan_windows(latent.shape[2], latent.shape[2], 0))
    assert np.array_equal(one_shot, windowed)


def test_a_clip_within_the_window_is_made_in_one_shot(tiny_engine):
    from reaudio.engine.pipeline import Request

    default, wider = tiny_engine.generate(
        [
            Request("rain", duration=1.0, seed=1, steps=5),
            Request("rain", duration=1.0, seed=1, steps=5, window=1.5, overlap=0.2),
        ]
    )
    assert np.array_equal(default.waveform, wider.waveform)


def test_a_long_clip_is_made_window_by_window(tiny_engine):
    from reaudio.engine.pipeline import Request

    denoiser = tiny_engine.runners["denoiser"] = _Recorder(tiny_engine.runners["denoiser"])
    decoder = tiny_engine.runners["decoder"] = _Recorder(tiny_engine.runners["decoder"])
    request = Request("wind", duration=6.0, seed=2, steps=4)
    (result,) = tiny_engine.generate([request])
    resolved = tiny_engine.planner.resolve(request)
    assert result.ok and len(result.waveform) == 6 * 8000 and np.isfinite(result.waveform).all()
    assert resolved.frames > 3 * resolved.window
    # No graph call ever sees more than one window: memory depends on the window, not the clip.
    assert {s[2] for s in denoiser.shapes} == {resolved.window}
    assert max(s[0] for s in denoiser.shapes) <= 8
    assert len(denoiser.shapes) == 4 * -(-len(resolved.windows()) // 8)
    assert max(s[2] for s in decoder.shapes) <= resolved.window
    assert np.sqrt(np.mean(result.waveform**2)) > 1e-3


def _smooth_latent(rng, channels, frames, freq, circular):
    """Noise low-passed along time: a latent with the temporal structure of a real one."""
    raw = rng.normal(size=(1, channels, frames + (0 if circular else 64), freq))
    spectrum = np.fft.rfft(raw, axis=2)
    spectrum[:, :, raw.shape[2] // 12 :] = 0
    smooth = np.fft.irfft(spectrum, n=raw.shape[2], axis=2)[:, :, :frames]
    return (2 * smooth / smooth.std()).astype(np.float32)


def _db(x):
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12)


def test_windowed_decoding_matches_one_shot_with_no_level_dip_at_the_joins(tiny_engine, rng):
    from reaudio.engine.denoising.windowed_loops import decode_windowed

    decoder = tiny_engine.runners["decoder"]
    latent = _smooth_latent(rng, 4, 400, 8, circular=False)
    whole = decoder.run({"latent": latent})[0][0]
    plan = plan_decode(400, 63, 8)
    parts = decode_windowed(decoder, latent, plan, 128)[0]
    assert parts.shape == whole.shape and len(plan.windows) > 5
    assert np.sqrt(np.mean((parts - whole) ** 2)) < 0.05 * np.sqrt(np.mean(whole**2))
    for w in plan.windows[1:]:  # each join: 40 ms around it, level against the one-shot decode
        join = (w.start + plan.fade) * 128
        region = slice(join - 160, join + 160)
        assert abs(_db(parts[region]) - _db(whole[region])) < 0.5


def test_a_loop_decodes_as_the_latent_repeated_forever(tiny_engine, rng):
    from reaudio.engine.denoising.windowed_loops import decode_windowed

    decoder = tiny_engine.runners["decoder"]
    latent = _smooth_latent(rng, 4, 150, 8, circular=True)
    n = 150 * 128
    repeated = decoder.run({"latent": np.concatenate([latent] * 3, axis=2)})[0][0][n : 2 * n]
    looped = decode_windowed(decoder, latent, plan_decode(150, 63, 8, circular=True), 128)[0]
    assert np.sqrt(np.mean((looped - repeated) ** 2)) < 0.05 * np.sqrt(np.mean(repeated**2))
    seam = slice(-200, None), slice(0, 200)  # 25 ms either side of the seam
    np.testing.assert_allclose(
        np.concatenate([looped[seam[0]], looped[seam[1]]]),
        np.concatenate([repeated[seam[0]], repeated[seam[1]]]),
        atol=0.05,
    )


def test_loop_length_is_whole_latent_frames(tiny_engine):
    from reaudio.engine.pipeline import Request

    (loop,) = tiny_engine.generate([Request("hum", duration=0.5, seed=0, steps=3, loop=True)])
    assert len(loop.waveform) == 32 * 128  # 0.5 s = 31.25 frames, rounded up


def test_bad_loop_and_window_values_are_refused(tiny_engine):
    from reaudio.engine.pipeline import Request

    for request, field in (
        (Request("x", loop="yes"), "loop"),
        (Request("x", window=0.0), "window"),
        (Request("x", window=1.0, overlap=0.6), "overlap"),
        (Request("x", overlap=-1.0), "overlap"),
    ):
        with pytest.raises(ValueError, match=field):
            tiny_engine.planner.resolve(request)


# -- seam measures --------------------------------------------------------------------------------


def _periodic_noise(rng, n, cutoff):
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum[int(cutoff * n) :] = 0
    x = np.fft.irfft(spectrum, n=n)
    return 0.3 * x / x.std()


def test_seam_measures_find_a_joint_that_is_not_seamless(rng):
    sr = 8000
    periodic = _periodic_noise(rng, 2 * sr, 0.02)  # a true loop of smooth noise
    cut = _periodic_noise(rng, 4 * sr, 0.02)[: 2 * sr]  # the same kind of sound, cut from a longer one
    ok, bad = loop_seam(periodic, sr), loop_seam(cut, sr)
    assert ok.worst_percentile() < 100
    assert bad.percentile["step"] == 100 and bad.at_joint["step"] > 2 * bad.interior_max["step"]
    tiled = compare(np.tile(periodic, 2), [len(periodic)], sr, circular=False)  # played twice: no click
    assert tiled.percentile["click"] < 100


def test_resampling_a_loop_keeps_it_seamless(rng):
    import soxr

    sr = 22050
    loop = _periodic_noise(rng, 2 * sr, 0.1).astype(np.float32)
    circular = resample_loop(loop, sr, 48000)
    plain = soxr.resample(loop, sr, 48000)
    assert len(circular) == 96000
    assert loop_seam(circular, 48000).worst_percentile() < 100
    assert loop_seam(plain, 48000).worst_percentile() == 100  # an ordinary resampler leaves an edge
    x, rate, _ = PostProcess(sample_rate=48000, trim_db=-20.0).finish(loop, sr, loop=True)
    assert rate == 48000 and np.array_equal(x, circular)  # resampled as a loop, never trimmed


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory):
    pytest.importorskip("torch")
    from reaudio.engine.bundle.default_model import pack_path
    from reaudio.export.default_pack import assemble

    return assemble(pack_path(), tmp_path_factory.mktemp("default") / "bundle")


def test_a_default_model_loop_has_no_seam_and_a_plain_clip_would(default_bundle):
    """The trained model, where sound has structure: the loop's seam is an ordinary point; the
    same clip made without --loop has a seam that stands out, so the measure can tell."""
    from reaudio.engine.pipeline import Engine, Request

    engine = Engine.from_bundle(default_bundle, backend="cpu")
    grid = engine.manifest.latent.downsample * engine.manifest.mel.hop_length
    looped, plain = engine.generate(
        [
            Request("wind blowing", duration=3.0, seed=1, steps=10, loop=True),
            Request("wind blowing", duration=3.0, seed=1, steps=10),
        ]
    )
    seam = loop_seam(looped.waveform, engine.sample_rate, grid=grid)
    assert seam.worst_percentile() < 100, seam
    assert all(seam.at_joint[m] <= seam.interior_max[m] for m in seam.at_joint)
    twice = compare(np.tile(looped.waveform, 2), [len(looped.waveform)], engine.sample_rate, circular=False, grid=grid)
    assert twice.percentile["click"] < 100
    cut = loop_seam(plain.waveform, engine.sample_rate, grid=grid)
    assert cut.worst_percentile() == 100, cut


# -- loop files ---------------------------------------------------------------------------------


def test_loop_files_carry_loop_points_and_the_library_says_loop(tiny_bundle, tmp_path):
    from mutagen.flac import FLAC
    from wavinfo import WavInfoReader

    from reaudio.engine.jobs.bulk import GenerateJob, run_job

    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,id,loop,duration\nrain on a roof,rain,yes,1.5\nthunder,thunder,,1\n")
    for fmt in ("wav", "flac"):
        out = tmp_path / fmt
        job = GenerateJob(
            prompts,
            out,
            tiny_bundle,
            backend="cpu",
            steps=3,
            audio_format=fmt,
            subtype="PCM_24",
            postprocess=PostProcess(trim_db=-20.0),
        )
        summary = run_job(job, progress=False)
        assert summary.written == 2 and not summary.failed
        entries = {e["id"]: e for e in map(json.loads, (out / "library.jsonl").read_text().splitlines())}
        assert entries["rain"]["loop"] is True and entries["thunder"]["loop"] is False
        rain = out / entries["rain"]["file"]
        frames = sf.info(str(rain)).frames
        assert frames == 94 * 128  # whole latent frames, and not trimmed
        if fmt == "wav":
            smpl = WavInfoReader(str(rain)).smpl
            assert smpl is not None and len(smpl.sample_loops) == 1
            loop = smpl.sample_loops[0]
            assert (loop.loop_type, loop.start, loop.end, loop.repetition_count) == (
                0,
                0,
                frames - 1,
                0,
            )
            assert smpl.sample_period_ns == round(1e9 / 8000)
            assert WavInfoReader(str(rain)).bext.description.startswith("rain on a roof")
            assert WavInfoReader(str(out / entries["thunder"]["file"])).smpl is None
        else:
            tags = FLAC(str(rain))
            assert tags["LOOPSTART"] == ["0"] and tags["LOOPLENGTH"] == [str(frames)]
            assert "LOOPSTART" not in FLAC(str(out / entries["thunder"]["file"]))


def test_a_library_made_without_loop_is_not_resumed_as_loops(tiny_bundle, tmp_path):
    from reaudio.engine.jobs.bulk import GenerateJob, run_job

    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\n")
    run_job(GenerateJob(prompts, tmp_path / "lib", tiny_bundle, backend="cpu", steps=2), progress=False)
    with pytest.raises(ValueError, match="loop False → True"):
        run_job(GenerateJob(prompts, tmp_path / "lib", tiny_bundle, backend="cpu", steps=2, loop=True), progress=False)
    with pytest.raises(ValueError, match="window None → 0.5"):
        run_job(GenerateJob(prompts, tmp_path / "lib", tiny_bundle, backend="cpu", steps=2, window=0.5), progress=False)
    again = run_job(GenerateJob(prompts, tmp_path / "lib", tiny_bundle, backend="cpu", steps=2), progress=False)
    assert (again.written, again.skipped) == (0, 1)


def test_a_bad_loop_column_is_reported_with_file_and_line(tmp_path):
    from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file

    path = tmp_path / "p.csv"
    path.write_text("prompt,loop\nrain,yes\nwind,maybe\nsea,FALSE\n")
    with pytest.raises(PromptFileError, match=r"p.csv:3: loop='maybe' must be true or false"):
        read_prompt_file(path)
    path.write_text("prompt,loop\nrain,yes\nsea,FALSE\n")
    assert [r.loop for r in read_prompt_file(path)] == [True, False]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "rain", "loop": true}\n{"prompt": "wind"}\n')
    assert [r.loop for r in read_prompt_file(jsonl)] == [True, None]


def test_long_clips_and_loops_run_after_the_short_clips_of_a_job(tiny_engine):
    from reaudio.engine.pipeline import Request

    requests = [
        Request("a long wind", duration=5.0),
        Request("a beep", duration=0.5),
        Request("a loop", duration=1.0, loop=True),
        Request("a hum", duration=1.0),
    ]
    batches = tiny_engine.planner.plan_batches(requests, batch_size=8)
    assert [b for b in batches] == [[1], [3], [0], [2]]
