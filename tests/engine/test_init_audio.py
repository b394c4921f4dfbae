"""Starting from real audio: the strength schedule, audio-to-audio, neighbour-seeded clips, prompt-file columns."""

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.denoising.sampler import make_plan, noised_start, start_step
from reaudio.engine.denoising.schedule import NoiseScheduleConfig
from reaudio.engine.jobs.db_commands import add_clips, read_clip_list, remove_clips
from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file
from reaudio.engine.pipeline import Engine, Request

SCHEDULE = NoiseScheduleConfig()


def test_strength_schedule_edges():
    assert start_step(25, 1.0) == 0 and start_step(25, 0.6) == 10 and start_step(25, 0.01) == 25
    assert len(make_plan(SCHEDULE, "ddim", 25, 0.01)) == 0
    clean = np.ones((1, 2, 3), np.float32)
    assert np.array_equal(noised_start(make_plan(SCHEDULE, "ddim", 25, 0.01), clean, np.zeros_like(clean)), clean)
    with pytest.raises(ValueError, match=r"strength=0 must be in \(0, 1\]"):
        start_step(25, 0)


def _wave(engine, seconds, freq=440.0):
    t = np.arange(int(seconds * engine.sample_rate)) / engine.sample_rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * np.exp(-2 * t)).astype(np.float32)


def test_strength_one_ignores_the_clip_and_a_tiny_strength_returns_its_decode(tiny_bundle):
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    wave = _wave(engine, 1.0)
    plain, full, tiny, half = engine.generate(
        [
            Request("a bell", seed=3, duration=1.0),
            Request("a bell", seed=3, init_audio=wave, strength=1.0),
            Request("a bell", seed=3, init_audio=wave, strength=0.01),
            Request("a bell", seed=3, init_audio=wave, strength=0.5),
        ]
    )
    assert np.array_equal(plain.waveform, full.waveform)
    frames = -(-len(wave) // engine.manifest.samples_per_frame)
    decoded = engine.runners["decoder"].run({"latent": engine.encode_latents([wave], frames)})[0][0, : len(wave)]
    np.testing.assert_allclose(tiny.waveform, decoded, atol=1e-6)
    assert len(half.waveform) == len(wave)  # the input's duration
    assert half.strength == 0.5 and half.init_from == "audio"
    assert not np.allclose(half.waveform, plain.waveform) and not np.allclose(half.waveform, tiny.waveform)
    again = engine.generate([Request("a bell", seed=3, init_audio=wave, strength=0.5)])[0]
    assert np.array_equal(again.waveform, half.waveform)  # deterministic


def test_start_clip_errors_are_named_before_any_work(tiny_bundle, tmp_path):
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    cases = [
        (Request("x", init_audio=tmp_path / "missing.wav"), "missing.wav: no such file"),
        (Request("x", init_audio=np.zeros(10), strength=1.5), r"strength=1.5 must be in \(0, 1\]"),
        (Request("x", strength=0.5), "strength=0.5 needs init_audio or init=neighbour"),
        (Request("x", init="nearest"), "init='nearest'; valid: neighbour"),
        (Request("x", init="neighbour", k=0), "init=neighbour needs retrieval"),
        (Request("x", init="neighbour"), "records no audio file"),  # the tiny database lists synthetic clips
        (Request("x", init_audio=np.zeros((2, 10))), "must be 1-D mono"),
    ]
    for request, message in cases:
        with pytest.raises(ValueError, match=message):
            engine.generate([Request("fine"), request])
    del engine.runners["vae_encoder"]
    with pytest.raises(ValueError, match="no VAE encoder"):
        engine.generate([Request("x", init_audio=np.zeros(4000, np.float32))])


def test_neighbour_seeded_clip_starts_from_its_top_neighbour(tiny_bundle, tmp_path):
    clips = tmp_path / "mine"
    clips.mkdir()
    for name, freq, caption in (("low", 300, "a low tone"), ("high", 3000, "a high tone")):
        t = np.arange(12000) / 16000
        sf.write(clips / f"{name}.wav", (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)
        (clips / f"{name}.txt").write_text(caption)
    add_clips(tiny_bundle, read_clip_list(clips))
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    remove_clips(tiny_bundle, [i["id"] for i in engine.db.items if i["id"] not in ("low", "high")])
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    (result,) = engine.generate([Request("a high tone", init="neighbour", k=1, seed=1, strength=0.4)])
    top = result.neighbours[0]["id"]
    assert result.init_from == top and result.strength == 0.4
    assert (
        len(result.waveform) <= 12000 * engine.sample_rate // 16000 + engine.manifest.samples_per_frame
    )  # the neighbour's length


def test_relative_item_audio_needs_an_audio_root(tiny_bundle, tmp_path):
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    item = {"id": "x", "audio": "audio/x.flac"}
    with pytest.raises(ValueError, match="pass --audio-root"):
        engine.planner.neighbour_audio(item)
    engine.planner.audio_root = tmp_path
    with pytest.raises(ValueError, match="not found"):
        engine.planner.neighbour_audio(item)
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "x.flac", np.zeros(800, np.float32), 16000)
    assert engine.planner.neighbour_audio(item) == tmp_path / "audio" / "x.flac"


def test_prompt_file_start_columns_are_validated_with_file_and_line(tmp_path):
    sf.write(tmp_path / "step.wav", np.zeros(8000, np.float32), 8000)
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    good = tmp_path / "good.csv"
    good.write_text("prompt,init_audio,strength,negative_prompt\nfootsteps,step.wav,0.4,rain\nwind,,,\n")
    first, second = read_prompt_file(good)
    assert first.init_audio == str(tmp_path / "step.wav") and first.strength == 0.4 and first.negative_prompt == "rain"
    assert second.init_audio is None and second.strength is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                '{"prompt": "a", "init_audio": "nope.wav"}',
                '{"prompt": "b", "init_audio": "broken.wav"}',
                '{"prompt": "c", "init": "neighbour", "strength": 0}',
                '{"prompt": "d", "strength": 0.5}',
                '{"prompt": "e", "init": "neighbour", "init_audio": "step.wav"}',
                '{"prompt": "f", "init": "random"}',
            ]
        )
        + "\n"
    )
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(bad)
    text = str(err.value)
    for line, message in (
        (1, "no such file"),
        (2, "unreadable audio"),
        (3, "strength=0 must be"),
        (4, "strength needs init_audio or init"),
        (5, "not both"),
        (6, "valid: neighbour"),
    ):
        assert f"bad.jsonl:{line}: " in text and message in text, (line, message, text)


def test_candidates_are_ranked_by_clap_and_recorded(tiny_bundle, tmp_path):
    import json

    from reaudio.engine.jobs.bulk import GenerateJob, run_job
    from reaudio.engine.jobs.candidates import candidate_seed, clap_scores, generate_ranked

    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    (ranked,) = generate_ranked(engine, [Request("a bell", seed=5, duration=0.5, id="bell")], 3)
    assert [r.seed for r in sorted(ranked.results, key=lambda r: r.seed)] == [candidate_seed(5, j) for j in range(3)]
    assert ranked.scores == sorted(ranked.scores, reverse=True)
    recomputed = clap_scores(engine, ["a bell"] * 3, [r.waveform for r in ranked.results])
    np.testing.assert_allclose(recomputed, ranked.scores, rtol=1e-5)
    single = engine.generate([Request("a bell", seed=candidate_seed(5, 2), duration=0.5)])[0]
    match = [r for r in ranked.results if r.seed == candidate_seed(5, 2)][0]
    np.testing.assert_allclose(match.waveform, single.waveform, atol=1e-6)  # a candidate is an ordinary clip

    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,id,candidates\na bell,bell,3\na drum,drum,\n")
    job = GenerateJob(
        prompts=prompts, out=tmp_path / "lib", bundle=tiny_bundle, backend="cpu", duration=0.5, keep_candidates=True
    )
    summary = run_job(job, progress=False, echo=lambda *a: None)
    assert summary.written == 2
    entries = {e["key"]: e for e in map(json.loads, (tmp_path / "lib" / "library.jsonl").read_text().splitlines())}
    bell = [e for k, e in entries.items() if k.startswith("bell") and "~" not in k][0]
    scores = [c["clap_score"] for c in bell["candidates"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert sum("~c" in k for k in entries) == 2 and (tmp_path / "lib" / "bell-v0-c3.wav").is_file()
    assert "candidates" not in [e for k, e in entries.items() if k.startswith("drum")][0]
    again = run_job(job, progress=False, echo=lambda *a: None)
    assert again.written == 0 and again.skipped == 2  # resume: nothing redone
    with pytest.raises(ValueError, match="candidates 1 → 2"):
        run_job(
            GenerateJob(
                prompts=prompts, out=tmp_path / "lib", bundle=tiny_bundle, backend="cpu", duration=0.5, candidates=2
            ),
            progress=False,
            echo=lambda *a: None,
        )


def test_bulk_job_starts_rows_from_their_init_audio(tiny_bundle, tmp_path):
    import json

    from reaudio.engine.jobs.bulk import GenerateJob, run_job

    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    sf.write(tmp_path / "hit.wav", _wave(engine, 0.7), engine.sample_rate)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a hit", "id": "hit", "init_audio": "hit.wav", "strength": 0.5, "negative_prompt": "noise"}\n'
    )
    job = GenerateJob(prompts=prompts, out=tmp_path / "lib", bundle=tiny_bundle, backend="cpu")
    assert run_job(job, progress=False, echo=lambda *a: None).written == 1
    (entry,) = map(json.loads, (tmp_path / "lib" / "library.jsonl").read_text().splitlines())
    assert entry["start"] == {"from": "audio", "strength": 0.5}
    assert entry["settings"]["init"] == "hit.wav" and entry["settings"]["negative_prompt"] == "noise"
    assert abs(entry["duration_s"] - 0.7) < 0.01
    prompts.write_text('{"prompt": "a hit", "id": "hit", "init_audio": "hit.wav", "strength": 0.7}\n')
    with pytest.raises(ValueError, match="strength 0.5 → 0.7"):
        run_job(job, progress=False, echo=lambda *a: None)


def test_long_start_clips_are_encoded_in_chunks_that_match_one_shot_away_from_joints(tiny_bundle):
    from reaudio.engine.audio.init_audio import encode_latents

    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    wave = np.random.default_rng(0).standard_normal(engine.manifest.samples_per_frame * 60).astype(np.float32) * 0.1
    runner, mel = engine.runners["vae_encoder"], engine.manifest.mel
    whole = encode_latents(runner, mel, [wave], 60, engine.manifest.samples_per_frame)
    chunked = encode_latents(runner, mel, [wave], 60, engine.manifest.samples_per_frame, chunk=20)
    assert chunked.shape == whole.shape

    # Chunks land where they belong: the chunked latent matches the one-shot latent best unshifted.
    def corr(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    aligned = corr(chunked[:, :, 2:-2], whole[:, :, 2:-2])
    assert aligned > 0.5
    assert aligned > max(corr(chunked[:, :, 2 + d : 58 + d], whole[:, :, 2:-2]) for d in (-2, -1, 1, 2))
    assert np.isfinite(chunked).all()
