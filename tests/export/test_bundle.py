import json
import subprocess
import sys

import numpy as np
import pytest

from reaudio.engine.bundle.manifest import BundleError, read_bundle_manifest
from reaudio.engine.retrieval.database import RetrievalDB
from reaudio.engine.stages.backends import OrtRunner
from reaudio.export.bundle import export_bundle
from reaudio.models.configs import load_config
from reaudio.models.system import build_system


def _feeds(spec, batch=2, frames=11, tokens=7, k=2, l_cap=8, m_aud=4):
    dims = {
        "batch": batch,
        "frames": frames,
        "text_tokens": tokens,
        "mel_frames": frames * 2,
        "text_context": k * l_cap,
        "audio_context": k * m_aud,
    }
    rng = np.random.default_rng(0)
    feeds = {}
    for s in spec.inputs:
        shape = tuple(dims[d] if isinstance(d, str) else d for d in s.shape)
        if s.dtype == "int64":
            feeds[s.name] = rng.integers(1, 30, shape)
        elif s.dtype == "bool":
            feeds[s.name] = np.ones(shape, bool)
        elif s.name == "coefs":
            feeds[s.name] = np.tile([0.5, 0.8, 0.9, 0.1, 0.0], (batch, 1)).astype(np.float32)
        else:
            feeds[s.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds, dims


def test_every_stage_runs_with_the_manifest_names_and_shapes(tiny_bundle):
    manifest = read_bundle_manifest(tiny_bundle)
    assert set(manifest.stages) == {"text_encoder", "denoiser", "decoder", "audio_encoder", "vae_encoder"}
    assert manifest.family == "re-audioldm" and manifest.retrieval.k == 2
    for name, spec in manifest.stages.items():
        runner = OrtRunner(tiny_bundle / spec.file, spec, ["CPUExecutionProvider"], 1)
        feeds, dims = _feeds(spec)
        outputs = runner.run(feeds)
        for out_spec, out in zip(spec.outputs, outputs):
            dims["samples"] = 11 * manifest.latent.downsample * manifest.mel.hop_length
            expected = tuple(dims[d] if isinstance(d, str) else d for d in out_spec.shape)
            assert out.shape == expected, (name, out_spec.name)
            assert np.isfinite(out).all()


def test_manifest_lists_a_checksum_for_every_file(tiny_bundle):
    manifest = read_bundle_manifest(tiny_bundle)
    on_disk = {p.relative_to(tiny_bundle).as_posix() for p in tiny_bundle.rglob("*") if p.is_file()}
    # The database is the one mutable part: it carries checksums of its own per generation.
    database = {p for p in on_disk if p.startswith("retrieval/")}
    assert on_disk - set(manifest.files) == {"manifest.json"} | database
    assert all(len(h) == 64 for h in manifest.files.values())
    generation = RetrievalDB(tiny_bundle / "retrieval").generation
    listed = json.loads((generation / "checksums.json").read_text())
    assert set(listed) == {p.name for p in generation.iterdir() if p.is_file()} - {"checksums.json"}
    assert RetrievalDB(tiny_bundle / "retrieval", verify=True).verify_checksums()


def test_corrupted_file_is_refused_naming_it(tiny_bundle):
    target = tiny_bundle / "decoder" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder/model.onnx: checksum mismatch"):
        read_bundle_manifest(tiny_bundle)


def test_missing_file_and_wrong_version_are_refused(tiny_bundle):
    (tiny_bundle / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json: listed in the manifest but missing"):
        read_bundle_manifest(tiny_bundle)
    path = tiny_bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        read_bundle_manifest(tiny_bundle, verify=False)


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    cfg = load_config("tiny")
    models = build_system(cfg)
    (tmp_path / "bundle").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_bundle(cfg, models, tmp_path / "bundle")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_cli_export_from_a_system_folder(tiny_artifacts, tmp_path):
    out = tmp_path / "b"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reaudio",
            "-q",
            "export",
            str(tiny_artifacts / "system"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = read_bundle_manifest(out)
    assert manifest.stages["denoiser"].fp16_file is None
    assert (out / "retrieval" / "CURRENT").is_file()  # an empty database, ready for `db add`
