"""User mistakes end in one line naming the problem, not a traceback (issue 16 item 9)."""

import subprocess
import sys

import pytest

from reaudio.engine.jobs.db_commands import ClipListError, read_clip_list

CLI = [sys.executable, "-m", "reaudio.engine.cli"]


def test_cuda_without_a_gpu_is_a_message(tiny_bundle, tmp_path):
    (tmp_path / "p.txt").write_text("rain\n")
    proc = subprocess.run(
        [
            *CLI,
            "generate",
            str(tmp_path / "p.txt"),
            "--out",
            str(tmp_path / "o"),
            "--bundle",
            str(tiny_bundle),
            "--backend",
            "cuda",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_out_under_a_file_is_a_message(tiny_bundle, tmp_path):
    (tmp_path / "p.txt").write_text("rain\n")
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run(
        [
            *CLI,
            "generate",
            str(tmp_path / "p.txt"),
            "--out",
            str(tmp_path / "afile" / "lib"),
            "--bundle",
            str(tiny_bundle),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "afile" in proc.stderr


def test_a_clip_list_line_that_is_not_an_object(tmp_path):
    (tmp_path / "clips.jsonl").write_text('["a.wav", "a sound"]\n')
    with pytest.raises(ClipListError, match="clips.jsonl:1: expected a JSON object, got list"):
        read_clip_list(tmp_path / "clips.jsonl")


def test_a_fractional_seed_in_the_api(tiny_bundle):
    from reaudio.engine.pipeline import Engine, Request

    with pytest.raises(ValueError, match="request 0: seed=1.5 must be an integer"):
        Engine.from_bundle(tiny_bundle, backend="cpu").generate([Request("rain", seed=1.5)])


@pytest.mark.parametrize("variations", [0, 10**8, 1.5])
def test_variations_are_bounded_up_front(tmp_path, variations):
    from reaudio.engine.jobs.generate_job import GenerateJob, plan_clips
    from reaudio.engine.jobs.prompts import read_prompt_file

    (tmp_path / "p.txt").write_text("rain\n")
    with pytest.raises(ValueError, match="--variations .* must be an integer from 1 to 1000"):
        plan_clips(
            GenerateJob(tmp_path / "p.txt", tmp_path / "o", variations=variations), read_prompt_file(tmp_path / "p.txt")
        )


def test_a_batch_that_cannot_run_fails_only_its_clips(tiny_bundle):
    from reaudio.engine.pipeline import Engine, Request

    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    real = engine._denoise

    def denoise(runners, batch, conditions):
        if batch[0].samples > engine.sample_rate:  # the long clips: as if memory ran out
            raise RuntimeError("Failed to allocate memory for requested buffer of size 61847529472")
        return real(runners, batch, conditions)

    engine._denoise = denoise
    results = engine.generate(
        [
            Request("rain", duration=0.5, steps=2),
            Request("wind", duration=2.0, steps=2),
            Request("fire", duration=0.5, steps=2, seed=1),
        ]
    )
    assert [r.ok for r in results] == [True, False, True]
    assert "Failed to allocate" in results[1].error


def test_db_add_encodes_at_most_30_seconds_of_a_clip(tiny_bundle, tmp_path, caplog):
    import numpy as np
    import soundfile as sf

    from reaudio.engine.jobs.db_commands import add_clips

    sf.write(tmp_path / "long.wav", (0.1 * np.random.default_rng(0).normal(size=40 * 8000)).astype(np.float32), 8000)
    (tmp_path / "long.txt").write_text("forty seconds of noise")
    with caplog.at_level("WARNING"):
        db = add_clips(tiny_bundle, read_clip_list(tmp_path))
    assert "its first 30 s are encoded" in caplog.text
    assert db.items[-1]["duration"] == 30.0


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["latent"].update(channels="8"), "latent.channels: expected an integer, got '8'"),
        (lambda m: m["latent"].update(downsample=0), "latent.downsample=0; valid: 1 to 4096"),
        (lambda m: m["stages"].pop("decoder"), "stages: missing \\['decoder'\\]"),
        (lambda m: m["mel"].update(sample_rate=10**12), "mel.sample_rate=1000000000000; valid"),
        (
            lambda m: m["stages"]["decoder"].update(file="../../etc/passwd"),
            "stages.decoder.file='../../etc/passwd' must be a path inside",
        ),
    ],
)
def test_manifest_values_are_checked(tiny_bundle, edit, message):
    import json

    from reaudio.engine.bundle.manifest import BUNDLE_MANIFEST, BundleError, read_bundle_manifest

    data = json.loads((tiny_bundle / BUNDLE_MANIFEST).read_text())
    edit(data)
    (tiny_bundle / BUNDLE_MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        read_bundle_manifest(tiny_bundle, verify=False)


def test_errors_name_the_file_with_bad_bytes(tmp_path):
    from reaudio.engine.bundle.manifest import BundleError, read_bundle_manifest

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_bytes(b'{"format_version": 1, "name": "\xff"}')
    with pytest.raises(BundleError, match="manifest.json: not UTF-8"):
        read_bundle_manifest(tmp_path / "b")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.wav").write_bytes(b"")
    (clips / "a.txt").write_bytes(b"caf\xe9 ambience")  # Latin-1
    with pytest.raises(ClipListError, match="a.txt: not valid UTF-8"):
        read_clip_list(clips)
    (tmp_path / "list.csv").write_bytes(b"audio,caption\na.wav,ok\nb.wav,caf\xe9\n")
    with pytest.raises(ClipListError, match="list.csv:3: not valid UTF-8"):
        read_clip_list(tmp_path / "list.csv")


def test_a_clip_too_short_for_the_audio_encoder_is_named(tiny_bundle, tmp_path):
    import numpy as np
    import soundfile as sf

    from reaudio.engine.jobs.db_commands import add_clips

    sf.write(tmp_path / "blip.wav", np.full(3, 0.5, np.float32), 8000)
    (tmp_path / "blip.txt").write_text("a blip")
    with pytest.raises(ClipListError, match="blip.txt: the audio encoder cannot take this clip .*too short"):
        add_clips(tiny_bundle, read_clip_list(tmp_path))
