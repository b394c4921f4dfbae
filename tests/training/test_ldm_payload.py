"""The LDM trains from a payload file exactly as from the corpus, and needs nothing else."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from reaudio.engine.cli import main as cli
from reaudio.models.checkpoint import load_checkpoint
from reaudio.training.ldm_payload import latent_posteriors, read_ldm_payload


@pytest.fixture(scope="module")
def short_manifest(tiny_manifest, tmp_path_factory):
    """The tiny corpus cut to 0.6 s, so every clip fits the tiny config's 1-s window (one encoding per clip)."""
    folder = tmp_path_factory.mktemp("short")
    rows = []
    for line in tiny_manifest.read_text().splitlines():
        row = json.loads(line)
        wav, sr = sf.read(tiny_manifest.parent / row["audio"])
        sf.write(folder / row["audio"], wav[: int(0.6 * sr)], sr)
        rows.append(row)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _ldm(*args, steps=3):
    common = ["-q", "train", "ldm", "--steps", str(steps), "--batch-size", "4", "--lr", "1e-3"]
    common += ["--warmup-steps", "1", "--log-every", "1", "--film-dropout", "0.3", "--context-dropout", "0.3"]
    return cli([*common, *args])


def _losses(run):
    with open(run / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _corpus_inputs(manifest, f):
    return ["--config", "tiny", "--data", str(manifest), "--vae", str(f / "vae"), "--clap", str(f / "clap")] + [
        "--database",
        str(f / "db"),
    ]


@pytest.fixture(scope="module")
def payloads(short_manifest, frozen_parts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("payloads")
    for precision in ("fp32", "fp16"):
        out = folder / f"{precision}.npz"
        args = ["--payload-out", str(out), "--payload-precision", precision]
        assert _ldm(*_corpus_inputs(short_manifest, frozen_parts), *args) == 0
    return folder


def test_a_run_from_an_fp32_payload_equals_the_run_from_the_corpus(short_manifest, frozen_parts, payloads, tmp_path):
    assert _ldm(*_corpus_inputs(short_manifest, frozen_parts), "--out", str(tmp_path / "corpus")) == 0
    assert _ldm("--payload", str(payloads / "fp32.npz"), "--out", str(tmp_path / "payload")) == 0
    corpus = load_checkpoint(tmp_path / "corpus" / "final" / "unet").state_dict()
    payload = load_checkpoint(tmp_path / "payload" / "final" / "unet").state_dict()
    assert all(torch.equal(v, payload[k]) for k, v in corpus.items())
    assert len(_losses(tmp_path / "corpus")) == 3 and _losses(tmp_path / "payload") == _losses(tmp_path / "corpus")
    family = json.loads((tmp_path / "payload" / "final" / "family.json").read_text())
    assert (
        family["vae"]["scaling_factor"]
        == json.loads((tmp_path / "corpus" / "config.json").read_text())["latent_scaling_factor"]
    )


def test_fp16_payload_holds_the_same_inputs_rounded_and_stores_captions_ragged(payloads, frozen_parts):
    meta32, a32 = read_ldm_payload(payloads / "fp32.npz")
    meta16, a16 = read_ldm_payload(payloads / "fp16.npz")
    assert meta32["clips"] == meta16["clips"] and len(meta32["clips"]) == 18
    for name in ("film", "caption_tokens", "audio_tokens"):
        assert a16[name].dtype == np.float16
        np.testing.assert_allclose(a16[name].astype(np.float32), a32[name], rtol=2e-3, atol=2e-3)
    # Posteriors in fixed steps: the mean within half a step, the std's log within half of its step.
    assert "latent_std" not in a16 and a16["latent_mean_i16"].dtype == np.int16
    mean16, std16 = latent_posteriors(a16)
    mean32, std32 = latent_posteriors(a32)
    assert np.array_equal(mean32, a32["latent_mean"])
    np.testing.assert_array_less(np.abs(mean16 - mean32), float(a16["latent_mean_step"]) / 2 + 1e-6)
    np.testing.assert_array_less(
        np.abs(np.log(std16) - np.log(std32)), float(a16["latent_log_std_range"][1]) / 2 + 1e-5
    )
    assert np.abs(mean16 - mean32).max() < 0.2 * std32.min()
    assert np.array_equal(a16["neighbours"], a32["neighbours"])
    # Ragged: exactly the real tokens of each stored neighbour caption, as the database masks them.
    from reaudio.engine.retrieval.database import RetrievalDB

    db = RetrievalDB(frozen_parts / "db")
    used = a32["database_rows"]
    assert np.array_equal(a32["caption_lengths"], db.arrays["caption_mask"][used].sum(axis=1))
    assert len(a32["caption_tokens"]) == a32["caption_lengths"].sum()
    assert a32["neighbours"].max() < len(a32["caption_lengths"])


def test_a_payload_run_imports_no_audio_retrieval_or_text_libraries(payloads, tmp_path):
    blocked = ["soundfile", "soxr", "usearch", "onnxruntime", "transformers", "sentence_transformers", "pyloudnorm"]
    # Looked up (torch probes for some) but never imported: a machine without them runs this.
    code = f"""
import sys
from reaudio.engine.cli import main
code = main(['-q', 'train', 'ldm', '--payload', {str(payloads / "fp16.npz")!r}, '--out', {str(tmp_path / "run")!r},
             '--steps', '2', '--batch-size', '4'])
print(sorted(name for name in sys.modules if name.split('.')[0] in {blocked!r}))
sys.exit(code)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "final" / "unet").is_dir()


def test_payload_errors_name_the_problem(short_manifest, tiny_manifest, frozen_parts, payloads, tmp_path, capsys):
    # Clips longer than the window are cropped anew each step: no payload can hold that.
    assert _ldm(*_corpus_inputs(tiny_manifest, frozen_parts), "--payload-out", str(tmp_path / "x.npz")) == 2
    assert "longer than one 1-s window" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()
    both = ["--payload", str(payloads / "fp16.npz"), "--out", str(tmp_path / "r")]
    assert _ldm(*both, "--vae", str(frozen_parts / "vae")) == 2
    assert "--payload holds what --vae would give" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"not a payload")
    assert _ldm("--payload", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "r")) == 2
    assert "not an LDM payload" in capsys.readouterr().err
    assert _ldm("--payload", str(payloads / "fp16.npz"), "--config", "sfx-small", "--out", str(tmp_path / "r")) == 2
    assert "does not take this payload's inputs" in capsys.readouterr().err
    assert _ldm("--data", str(short_manifest), "--out", str(tmp_path / "r")) == 2
    assert "needs --config and --data" in capsys.readouterr().err


def test_a_payload_run_warns_only_when_asked_for_another_loudness(payloads, tmp_path, caplog):
    payload = ["--payload", str(payloads / "fp16.npz")]
    assert _ldm(*payload, "--out", str(tmp_path / "same"), steps=1) == 0
    assert "the payload's level is what trains" not in caplog.text
    assert _ldm(*payload, "--loudness-db", "-20", "--out", str(tmp_path / "other"), steps=1) == 0
    assert "--loudness-db -20: the payload's clips were encoded at their own levels" in caplog.text


def test_single_context_dropout_reaches_the_steps_and_is_recorded(payloads, tmp_path):
    payload = str(payloads / "fp32.npz")
    assert _ldm("--payload", payload, "--out", str(tmp_path / "together")) == 0
    assert _ldm("--payload", payload, "--out", str(tmp_path / "alone"), "--single-context-dropout", "0.9") == 0
    config = json.loads((tmp_path / "alone" / "config.json").read_text())
    assert config["train"]["single_context_dropout"] == 0.9
    # the same seed and batches: only which context each item kept differs, and so do the losses
    assert _losses(tmp_path / "alone") != _losses(tmp_path / "together")
    bad = ["-q", "train", "ldm", "--payload", payload, "--out", str(tmp_path / "bad"), "--single-context-dropout", "2"]
    assert cli(bad) == 2
