"""The embedded default model, as a user meets it: `reaudio generate` without --bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from reaudio.engine.bundle import default_model  # noqa: E402
from reaudio.engine.bundle.manifest import read_bundle_manifest  # noqa: E402
from reaudio.engine.cli import main  # noqa: E402
from reaudio.export.default_pack import verify_pack  # noqa: E402


def test_pack_is_committed_small_and_intact():
    pack = default_model.pack_path()
    meta = verify_pack(pack)  # every file's checksum
    size = sum(p.stat().st_size for p in pack.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"the default pack is {size / 2**20:.1f} MiB; the budget is 20 MiB"
    assert meta["database"]["info"]["count"] > 1000


def test_generate_without_bundle_assembles_and_uses_the_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("REAUDIO_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("footsteps crunch on gravel\n")
    code = main(
        ["generate", str(prompts), "--out", str(tmp_path / "lib"), "--steps", "5", "--duration", "1.0", "--quiet"]
    )
    assert code == 0
    bundle = default_model.assembled_bundle()
    assert bundle.parent == tmp_path / "cache"
    manifest = read_bundle_manifest(bundle, verify=True)  # checksums of every bundle file hold
    assert manifest.name == "sfx-small" and manifest.retrieval.k > 0
    measured = verify_pack(default_model.pack_path()).get("defaults", {})
    assert measured and manifest.defaults.guidance == measured["guidance"]  # the pack's measured default
    entry = json.loads((tmp_path / "lib" / "library.jsonl").read_text().splitlines()[0])
    assert len(entry["neighbours"]) == manifest.retrieval.k  # the retrieval database is live
    audio, rate = sf.read(str(tmp_path / "lib" / entry["file"]))
    # The decoder ends with the band extension: 44.1 kHz from the 22.05-kHz mel, with a top band.
    assert rate == manifest.sample_rate == 44100 == 2 * manifest.mel.sample_rate and len(audio) == rate  # 1.0 s
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    assert spectrum[(freqs >= 11000) & (freqs < 16000)].sum() > 1e-6 * spectrum[freqs < 8000].sum()
    assert np.all(np.isfinite(audio)) and np.sqrt(np.mean(audio**2)) > 1e-3  # finite, not silent


def test_without_torch_generate_explains_how_to_assemble(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setenv("REAUDIO_CACHE", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "torch", None)  # as on the runtime-only install
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\n")
    assert main(["-q", "generate", str(prompts), "--out", str(tmp_path / "lib")]) == 2
    err = capsys.readouterr().err
    assert "not assembled yet" in err and "reaudio default-model assemble" in err and "--bundle" in err
    assert not (tmp_path / "lib" / "library.jsonl").exists()


def test_pack_defaults_are_checked():
    from reaudio.export.default_pack import pack_defaults

    assert pack_defaults({"defaults": {"guidance": 6.0}}, 4.0).guidance == 6.0
    assert pack_defaults({}, 4.0).duration == 4.0
    with pytest.raises((TypeError, ValueError), match="guidance"):
        pack_defaults({"defaults": {"guidance": "loud"}}, 4.0)
