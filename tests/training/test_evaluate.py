import importlib.util
import json

import numpy as np
import pytest
import torch

from reaudio.engine.cli import main as cli

HAS_AISFX = importlib.util.find_spec("aisfx") is not None


@pytest.fixture(scope="module")
def eval_manifest(tmp_path_factory):
    """More clips per label than the training fixture, so the label classifier has data."""
    import soundfile as sf

    from reaudio.training.toy_bundle import SOUNDS, synthetic_sound

    folder = tmp_path_factory.mktemp("evalclips")
    rng = np.random.default_rng(1)
    rows = []
    for kind, caption in SOUNDS.items():
        for i in range(7):
            sf.write(folder / f"{kind}-{i}.wav", synthetic_sound(kind, 8000, 1.0, rng), 8000)
            rows.append(
                {
                    "id": f"{kind}-{i}",
                    "audio": f"{kind}-{i}.wav",
                    "caption": caption,
                    "label": kind,
                    "source": f"{kind}-{i}",
                    "split": "test" if i >= 5 else "train",
                }
            )
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "m.jsonl"


def test_eval_scores_a_bundle_with_a_pluggable_backbone(tiny_artifacts, eval_manifest, tmp_path):
    out = tmp_path / "eval"
    rc = cli(
        [
            "-q",
            "eval",
            "--bundle",
            str(tiny_artifacts / "bundle"),
            "--data",
            str(eval_manifest),
            "--out",
            str(out),
            "--steps",
            "4",
            "--backbone",
            "tests.training.fake_backbone:make",
            "--backend",
            "cpu",
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["clips"] == 12 and results["backbone"] == "band-energies"
    assert results["fad"] > 0 and results["kl"] > 0 and 1.0 <= results["inception_score"] <= 6.0
    assert -1.0 <= results["clap_score"] <= 1.0
    assert results["long_tail"]["2–10"]["clips"] == 12  # 5 training clips per label
    assert "| fad |" in (out / "report.md").read_text()
    # the top-1 neighbours are clips of this manifest, so copying them is scored too, as read and as
    # they come back through the bundle's VAE and vocoder (a different, worse copy with random weights)
    copy, decoded = results["copy_top1"], results["copy_decoded"]
    assert decoded["fad"] > 0 and decoded["fad"] != copy["fad"]
    assert "copy through the decoder" in (out / "report.md").read_text()


def test_ablation_table_over_k(tiny_artifacts, eval_manifest, tmp_path):
    out = tmp_path / "abl"
    rc = cli(
        [
            "-q",
            "eval",
            "--bundle",
            str(tiny_artifacts / "bundle"),
            "--data",
            str(eval_manifest),
            "--out",
            str(out),
            "--steps",
            "3",
            "--limit",
            "4",
            "--ks",
            "0",
            "2",
            "--backbone",
            "tests.training.fake_backbone:make",
            "--backend",
            "cpu",
        ]
    )
    assert rc == 0
    table = (out / "ablation.md").read_text()
    assert "| no retrieval (k=0) |" in table and "| k=2 |" in table
    bundle = tiny_artifacts / "bundle"
    rc = cli(
        [
            "-q",
            "eval",
            "--data",
            str(eval_manifest),
            "--out",
            str(tmp_path / "cmp"),
            "--steps",
            "3",
            "--limit",
            "3",
            "--compare",
            f"audio+text k=1={bundle}@1",
            f"default={bundle}",
            "--backbone",
            "tests.training.fake_backbone:make",
            "--backend",
            "cpu",
        ]
    )
    assert rc == 0
    table = (tmp_path / "cmp" / "ablation.md").read_text()
    assert "| audio+text k=1 |" in table and "| default |" in table


def test_ablation_table_over_retrieval_types(tiny_artifacts, eval_manifest, tmp_path):
    out = tmp_path / "types"
    args = ["-q", "eval", "--bundle", str(tiny_artifacts / "bundle"), "--data", str(eval_manifest)]
    args += ["--out", str(out), "--steps", "3", "--limit", "3", "--k", "2", "--backend", "cpu"]
    kinds = ("none", "captions", "audio", "both")
    args += ["--backbone", "tests.training.fake_backbone:make", "--retrieval-types", *kinds]
    assert cli(args) == 0
    table = (out / "ablation.md").read_text()
    rows = ["none (k=0)", "neighbours' captions only", "neighbours' audio only", "captions and audio"]
    assert all(f"| {row} |" in table for row in rows)
    runs = {kind: json.loads((out / kind / "results.json").read_text()) for kind in kinds}
    assert runs["none"]["settings"]["k"] == 0 and runs["both"]["settings"]["k"] == 2
    assert [runs[kind]["settings"]["neighbour_context"] for kind in ("captions", "audio", "both")] == [
        "captions",
        "audio",
        "both",
    ]
    # the same clips and seeds: what the neighbours bring reached the engine and changed the sound
    assert len({runs[kind]["fad"] for kind in runs}) == 4


def test_eval_scores_the_sampler_it_is_given(tiny_artifacts, eval_manifest, tmp_path):
    results = {}
    for sampler in ("ddim", "dpmpp-2m"):
        args = ["-q", "eval", "--bundle", str(tiny_artifacts / "bundle"), "--data", str(eval_manifest)]
        args += ["--out", str(tmp_path / sampler), "--steps", "3", "--limit", "3", "--sampler", sampler]
        assert cli([*args, "--backbone", "tests.training.fake_backbone:make", "--backend", "cpu"]) == 0
        results[sampler] = json.loads((tmp_path / sampler / "results.json").read_text())
    assert [r["settings"]["sampler"] for r in results.values()] == ["ddim", "dpmpp-2m"]
    # same clips, seeds and neighbours: only the sampler differs, and it reached the engine
    assert results["ddim"]["fad"] != results["dpmpp-2m"]["fad"]
    assert results["ddim"]["copy_top1"]["fad"] == results["dpmpp-2m"]["copy_top1"]["fad"]


def test_eval_shows_its_progress_unless_quiet(tiny_artifacts, eval_manifest, tmp_path, capsys):
    args = ["eval", "--bundle", str(tiny_artifacts / "bundle"), "--data", str(eval_manifest), "--steps", "2"]
    args += ["--limit", "3", "--backbone", "tests.training.fake_backbone:make", "--backend", "cpu"]
    assert cli([*args, "--out", str(tmp_path / "shown"), "--candidates", "2"]) == 0
    err = capsys.readouterr().err
    assert "generating (best of 2)" in err and "3/3" in err
    assert cli(["-q", *args, "--out", str(tmp_path / "quiet")]) == 0
    assert "generating" not in capsys.readouterr().err
    shown = json.loads((tmp_path / "shown" / "results.json").read_text())
    assert shown["clips"] == 3 and shown["settings"]["candidates"] == 2


def test_eval_threads_reach_the_engine_and_torch(tiny_artifacts, eval_manifest, tmp_path, monkeypatch):
    from reaudio.training import evaluate as evaluate_module

    engines = []
    opened = evaluate_module.Engine.from_bundle

    def spy(*args, **kwargs):
        engines.append(opened(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(evaluate_module.Engine, "from_bundle", spy)
    args = ["-q", "eval", "--bundle", str(tiny_artifacts / "bundle"), "--data", str(eval_manifest)]
    args += ["--out", str(tmp_path / "e"), "--steps", "2", "--limit", "2", "--backend", "cpu"]
    args += ["--backbone", "tests.training.fake_backbone:make"]
    before = torch.get_num_threads()
    try:
        assert cli([*args, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    sessions = [r.session for r in engines[0].runners.values() if hasattr(r, "session")]
    assert sessions and {s.get_session_options().intra_op_num_threads for s in sessions} == {1}
    assert cli([*args, "--threads", "0"]) == 2


@pytest.mark.skipif(not HAS_AISFX, reason="aisfx wheel not installed (pip install --no-deps aisfx)")
def test_aisfx_network_matches_the_package_and_separates_sounds():
    from reaudio.models.pretrained import wheel_data
    from reaudio.training.backbones import AISFXBackbone

    backbone = AISFXBackbone()
    # The package's own network, loaded from its file without importing the package
    # (whose __init__ needs librosa and old numpy).
    path = wheel_data("aisfx", "models/cnn2d.py", "aisfx")
    spec = importlib.util.spec_from_file_location("aisfx_cnn2d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    theirs = module.EmbeddingNet("max", 3, 1, 64)
    theirs.load_state_dict(backbone.net.state_dict())
    theirs.eval()
    x = torch.rand(2, 100, 96)
    with torch.no_grad():
        torch.testing.assert_close(backbone.net(x), theirs(x))
    sr = backbone.sample_rate
    t = np.arange(sr * 3) / sr
    beeps = [np.sin(2 * np.pi * f * t) * (t % 0.5 < 0.1) for f in (1000, 1100)]
    noise = np.random.default_rng(0).normal(0, 0.3, len(t))
    e = backbone.embed([*beeps, noise])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_a_band_extended_bundle_is_scored_against_full_band_copies(tiny_artifacts, eval_manifest, tmp_path):
    """At a rate above the mel's, real clips are read from their full-band copies (where the corpus
    kept them) and a 22.05-kHz-style bundle's clips are resampled to that rate: one scale for both."""
    import soundfile as sf

    from reaudio.training.data import read_corpus
    from reaudio.training.evaluate import EvalConfig, evaluate, real_file

    # Full-band copies of every clip: the 8-kHz clip at 16 kHz plus a quiet band above 4 kHz.
    folder = eval_manifest.parent / "with_fullband"
    folder.mkdir(exist_ok=True)
    rows = [json.loads(line) for line in eval_manifest.read_text().splitlines()]
    rng = np.random.default_rng(2)
    for row in rows:
        wave, rate = sf.read(eval_manifest.parent / row["audio"], dtype="float32")
        import soxr

        full = soxr.resample(wave, rate, 2 * rate) + 0.01 * rng.standard_normal(2 * len(wave)).astype(np.float32)
        sf.write(folder / row["audio"], wave, rate)
        sf.write(folder / f"full-{row['audio']}", full, 2 * rate)
        row["fullband"] = f"full-{row['audio']}"
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clip = read_corpus(manifest)[0]
    assert real_file(clip, 16000, 8000) == clip.fullband and real_file(clip, 8000, 8000) == clip.audio

    common = dict(data=manifest, limit=4, steps=3, backbone="tests.training.fake_backbone:make", backend="cpu")
    full = evaluate(EvalConfig(bundle=tiny_artifacts / "bundle-fullband", out=tmp_path / "a", progress=False, **common))
    plain = evaluate(
        EvalConfig(bundle=tiny_artifacts / "bundle", out=tmp_path / "b", progress=False, score_rate=16000, **common)
    )
    for metrics in (full, plain):
        assert metrics["settings"]["score_rate"] == 16000 and metrics["clips"] == 4
        assert metrics["settings"]["backend"] == "cpu" and set(metrics["settings"]["stage_precision"].values()) == {
            "fp32"
        }
        assert "top_band" in metrics and np.isfinite(metrics["fad"])
        assert np.isfinite(metrics["copy_decoded"]["fad"]) and np.isfinite(metrics["real_floor"]["fad"])
    # Same real clips, same references: the floor is the same number for both bundles.
    assert full["real_floor"]["fad"] == pytest.approx(plain["real_floor"]["fad"])
