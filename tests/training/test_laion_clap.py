"""LAION-CLAP import: a checkpoint in the laion-clap package's key layout, generated here.

The writer below builds LAION's layout (``audio_branch.layers.i.blocks.j.attn.qkv``,
``text_branch.*``, ``text_projection.0``, the STFT/mel front-end weights, HTSAT's
classifier, the training-loss MLPs, shifted-window masks) from a random model,
independently of the importer's mapping; the import must give back that model's
embeddings exactly.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from reaudio.models.checkpoint import load_checkpoint  # noqa: E402
from reaudio.models.laion_clap import (  # noqa: E402
    LaionAudioConfig,
    LaionCheckpointError,
    LaionCLAP,
    LaionCLAPConfig,
    LaionTextConfig,
    fit_window,
    import_laion_clap,
)
from reaudio.models.mel import LogMel, MelConfig  # noqa: E402
from reaudio.training.toy_audioldm import make_tokenizer  # noqa: E402

HF_BLOCK = re.compile(r"audio_model\.audio_encoder\.layers\.(\d+)\.blocks\.(\d+)\.(.+)")
BLOCK_PARTS = {
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.self.relative_position_index": "attn.relative_position_index",
}


def laion_layout(model: LaionCLAP) -> dict[str, torch.Tensor]:
    """The model's weights under LAION-CLAP's names, with the extras LAION checkpoints carry."""
    out, qkv = {}, {}
    for key, value in model.model.state_dict().items():
        if key.startswith("text_model."):
            if not key.endswith(("position_ids", "token_type_ids")):
                out["text_branch." + key.removeprefix("text_model.")] = value
        elif m := re.fullmatch(r"(text|audio)_projection\.linear(1|2)\.(weight|bias)", key):
            out[f"{m[1]}_projection.{0 if m[2] == '1' else 2}.{m[3]}"] = value
        elif m := HF_BLOCK.fullmatch(key):
            layer, block, rest = m.groups()
            prefix = f"audio_branch.layers.{layer}.blocks.{block}."
            if q := re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", rest):
                qkv.setdefault((prefix, q[2]), {})[q[1]] = value
                continue
            for hf, laion in BLOCK_PARTS.items():
                if rest.startswith(hf):
                    out[prefix + laion + rest.removeprefix(hf)] = value
                    break
            else:
                raise AssertionError(f"test writer does not know {key}")
        elif key.startswith("audio_model.audio_encoder."):
            rest = key.removeprefix("audio_model.audio_encoder.")
            out["audio_branch." + rest.replace("batch_norm.", "bn0.", 1)] = value
        else:
            out[key] = value  # logit_scale_a, logit_scale_t
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    g = torch.Generator().manual_seed(1)
    extras = {
        "audio_branch.spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        "audio_branch.logmel_extractor.melW": (513, 64),
        "audio_branch.tscam_conv.weight": (527, 16, 2, 3),
        "audio_branch.head.weight": (527, 527),
        "text_transform.sequential.0.weight": (16, 16),
        "audio_transform.sequential.0.weight": (16, 16),
        "audio_branch.layers.0.blocks.1.attn_mask": (64, 64, 64),  # 8 × 8 windows of 8 × 8 patches
    }
    out.update({k: torch.randn(shape, generator=g) for k, shape in extras.items()})
    return out


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    tokenizer = make_tokenizer().backend_tokenizer.to_str()
    cfg = LaionCLAPConfig(
        text=LaionTextConfig(
            vocab_size=400, hidden_size=128, layers=2, heads=2, intermediate_size=256, max_positions=80
        ),
        audio=LaionAudioConfig(patch_width=8, depths=(2, 1), heads=(1, 2), window_size=8),
        embed_dim=16,
        tokenizer=tokenizer,
    )
    model = LaionCLAP(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong mapping shows
        bn = model.model.audio_model.audio_encoder.batch_norm
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def checkpoint(original, tmp_path_factory):
    path = tmp_path_factory.mktemp("laion") / "630k-audioset-best.pt"
    torch.save({"epoch": 45, "state_dict": {f"module.{k}": v for k, v in laion_layout(original).items()}}, path)
    return path


@pytest.fixture(scope="module")
def clip():
    t = np.arange(16000 * 3) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)).astype(np.float32)


def test_import_reproduces_the_model(original, checkpoint, clip):
    imported = import_laion_clap(checkpoint, original.cfg.tokenizer, text_heads=2)
    assert imported.cfg == original.cfg  # every size read back off the weights
    ids, mask = imported.tokenizer(["a dog barks", "rain falls on a tin roof"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    mel = LogMel(MelConfig(sample_rate=16000))
    feats = imported.audio_input(clip, mel)
    assert feats.shape == (1, 1, 1001, 64)
    with torch.no_grad():
        for fn in ("embed_text", "text_tokens"):
            torch.testing.assert_close(getattr(imported, fn)(ids_t, mask_t), getattr(original, fn)(ids_t, mask_t))
        torch.testing.assert_close(imported.embed_audio(feats), original.embed_audio(feats))
        torch.testing.assert_close(imported.audio_tokens(feats, 4), original.audio_tokens(feats, 4))
        # and what transformers' own CLAP computes from these weights
        reference = original.model.get_text_features(input_ids=ids_t, attention_mask=mask_t)
        reference = getattr(reference, "pooler_output", reference)
        torch.testing.assert_close(imported.embed_text(ids_t, mask_t), torch.nn.functional.normalize(reference, dim=-1))
        emb = imported.embed_audio(feats)
    assert emb.shape == (1, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(1))
    assert imported.audio_tokens(feats, 4).shape == (1, 4, 16)


def test_unknown_and_missing_keys_are_named(original, tmp_path):
    state = laion_layout(original)
    state["audio_branch.extra_layer.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(LaionCheckpointError, match=r"audio_branch\.extra_layer\.weight"):
        import_laion_clap(path, original.cfg.tokenizer, text_heads=2)
    del state["audio_branch.extra_layer.weight"], state["audio_branch.norm.weight"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match=r"missing keys: model\.audio_model\.audio_encoder\.norm\.weight"):
        import_laion_clap(path, original.cfg.tokenizer, text_heads=2)


def test_fusion_checkpoints_are_refused(original, tmp_path):
    state = laion_layout(original)
    state["audio_branch.fusion_model.local_att.0.weight"] = torch.zeros(1)
    path = tmp_path / "fusion.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(LaionCheckpointError, match="only non-fusion"):
        import_laion_clap(path, original.cfg.tokenizer, text_heads=2)


def test_window_is_repeat_padded_or_centre_cropped():
    np.testing.assert_array_equal(fit_window(np.array([1.0, 2.0]), 5), [1, 2, 1, 2, 0])
    np.testing.assert_array_equal(fit_window(np.arange(10.0), 4), [3, 4, 5, 6])
    with pytest.raises(ValueError, match="empty"):
        fit_window(np.zeros(0), 4)


def test_cli_import_then_database(original, checkpoint, tmp_path, clip):
    tok = tmp_path / "tokenizer.json"
    tok.write_text(original.cfg.tokenizer)
    out = tmp_path / "clap"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reaudio",
            "-q",
            "import",
            "laion-clap",
            str(checkpoint),
            "--tokenizer",
            str(tok),
            "--text-heads",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "laion-clap" in proc.stdout
    loaded = load_checkpoint(out)
    assert isinstance(loaded, LaionCLAP) and loaded.cfg == original.cfg

    from reaudio.models.retrieval_features import RetrievalConfig
    from reaudio.training.database import AudioItem, build_database

    items = [
        AudioItem(f"c{i}", np.roll(clip, 997 * i), caption, source=f"s{i}")
        for i, caption in enumerate(["a dog barks", "rain falls", "a bell rings"])
    ]
    retrieval = RetrievalConfig(k=1, audio_tokens=4, caption_tokens=8)
    db = build_database(tmp_path / "db", loaded, LogMel(MelConfig(sample_rate=16000)), retrieval, items, {})
    assert len(db) == 3 and db.info.audio_dim == 16 and db.info.caption_dim == 128
    with torch.no_grad():
        expected = original.embed_audio(original.audio_input(items[1].audio, LogMel(MelConfig(sample_rate=16000))))
    np.testing.assert_allclose(np.asarray(db.arrays["keys"][1], np.float32), expected[0].numpy(), atol=2e-3)
    assert db.search(expected.numpy(), 1)[0, 0] == 1


def test_cli_without_tokenizer_says_what_is_missing(checkpoint, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reaudio",
            "import",
            "laion-clap",
            str(checkpoint),
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--tokenizer" in proc.stderr


def _with_numpy1_names(path):
    """Rewrite a torch checkpoint's pickle so NumPy scalars carry NumPy 1's module name, as the
    published checkpoints (saved before NumPy 2) do."""
    import zipfile

    with zipfile.ZipFile(path) as src:
        parts = {name: src.read(name) for name in src.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name, data in parts.items():
            if name.endswith("data.pkl"):
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            dst.writestr(name, data)


def test_checkpoints_holding_numpy_scalars_load_weights_only(original, tmp_path):
    path = tmp_path / "630k-audioset-best.pt"
    torch.save(
        {
            "epoch": np.int64(45),
            "best_val": np.float64(0.7315),
            "lr": np.float32(1e-4),
            "state_dict": {f"module.{k}": v for k, v in laion_layout(original).items()},
        },
        path,
    )
    with pytest.raises(Exception, match="numpy"):  # what plain weights-only loading does with them
        torch.load(str(path), weights_only=True)
    _with_numpy1_names(path)
    with pytest.raises(Exception, match=r"numpy\.core\.multiarray\.scalar"):
        torch.load(str(path), weights_only=True)
    imported = import_laion_clap(path, original.cfg.tokenizer, text_heads=2)
    ids, mask = imported.tokenizer(["a dog barks"])
    with torch.no_grad():
        torch.testing.assert_close(
            imported.embed_text(torch.from_numpy(ids), torch.from_numpy(mask)),
            original.embed_text(torch.from_numpy(ids), torch.from_numpy(mask)),
        )


class _NotAWeight:
    pass


def test_arbitrary_objects_in_a_checkpoint_are_still_refused(original, tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": laion_layout(original), "hook": _NotAWeight()}, path)
    with pytest.raises(LaionCheckpointError, match=r"refused by the weights-only loader.*_NotAWeight"):
        import_laion_clap(path, original.cfg.tokenizer, text_heads=2)


def test_text_tower_layer_norms_use_robertas_epsilon(original):
    norms = [m for m in original.model.text_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 2 * original.cfg.text.layers  # embeddings + two per layer
    assert {m.eps for m in norms} == {1e-5}
    # and it is the value the computation uses: the embedding LayerNorm on a near-constant input
    emb = original.model.text_model.embeddings.LayerNorm
    x = torch.full((1, 1, emb.normalized_shape[0]), 0.5) + 1e-4 * torch.randn(1, 1, emb.normalized_shape[0])
    with torch.no_grad():
        expected = torch.nn.functional.layer_norm(x, emb.normalized_shape, emb.weight, emb.bias, eps=1e-5)
        wrong = torch.nn.functional.layer_norm(x, emb.normalized_shape, emb.weight, emb.bias, eps=1e-12)
        torch.testing.assert_close(emb(x), expected)
        assert (emb(x) - wrong).abs().max() > 1e-2


def test_laion_keyed_database_trains_exports_and_generates(original, checkpoint, tiny_manifest, tmp_path, clip):
    """import laion-clap → db build → train ldm → export → generate, and the bundle's own
    text/audio encoder stages reproduce the torch towers (what `db add` relies on)."""
    import json

    from reaudio.engine.bundle.manifest import read_bundle_manifest
    from reaudio.engine.cli import main as cli
    from reaudio.engine.pipeline import Engine, Request
    from reaudio.models.configs import load_config

    tok = tmp_path / "tokenizer.json"
    tok.write_text(original.cfg.tokenizer)
    clap = tmp_path / "clap"
    assert (
        cli(
            [
                "-q",
                "import",
                "laion-clap",
                str(checkpoint),
                "--tokenizer",
                str(tok),
                "--text-heads",
                "2",
                "--out",
                str(clap),
            ]
        )
        == 0
    )
    assert (
        cli(
            [
                "-q",
                "db",
                "build",
                "--clap",
                str(clap),
                "--data",
                str(tiny_manifest),
                "--config",
                "tiny",
                "--out",
                str(tmp_path / "db"),
            ]
        )
        == 0
    )
    run = tmp_path / "ldm"
    assert (
        cli(
            [
                "-q",
                "train",
                "ldm",
                "--config",
                "tiny",
                "--data",
                str(tiny_manifest),
                "--out",
                str(run),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--vae",
                str(_tiny_part(tmp_path, "vae")),
                "--clap",
                str(clap),
                "--database",
                str(tmp_path / "db"),
                "--vocoder",
                str(_tiny_part(tmp_path, "vocoder")),
            ]
        )
        == 0
    )
    family = json.loads((run / "final" / "family.json").read_text())
    assert family["clap"]["text"]["hidden_size"] == 128 and family["unet"]["film_dim"] == 16
    assert {c["name"]: c["dim"] for c in family["unet"]["contexts"]} == {"retrieved_text": 128, "retrieved_audio": 16}
    bundle = tmp_path / "bundle"
    assert cli(["-q", "export", str(run / "final"), "--out", str(bundle), "--database", str(tmp_path / "db")]) == 0

    manifest = read_bundle_manifest(bundle)
    assert manifest.audio_frontend is not None and manifest.audio_frontend.mel.sample_rate == 48000
    assert manifest.stages["audio_encoder"].inputs[0].shape == ("batch", 1001, 64)
    engine = Engine.from_bundle(bundle, backend="cpu")
    emb, tokens, mask = engine.embed_text(["a dog barks", "rain falls on a tin roof"])
    ids, tmask = original.tokenizer(["a dog barks", "rain falls on a tin roof"])
    with torch.no_grad():
        ref_emb, ref_tokens = original.encode_text(torch.from_numpy(ids), torch.from_numpy(tmask))
        ref_audio = original.encode_audio(original.audio_input(clip, LogMel(load_config("tiny").mel)), 4)
    np.testing.assert_allclose(emb, ref_emb.numpy(), atol=1e-4)
    np.testing.assert_allclose(tokens[mask], ref_tokens.numpy()[tmask.astype(bool)], atol=1e-4)
    audio_emb, audio_tokens = engine.encode_audio([clip])  # the clip at the bundle's 8 kHz
    np.testing.assert_allclose(audio_emb, ref_audio[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(audio_tokens, ref_audio[1].numpy(), atol=1e-4)
    (result,) = engine.generate([Request("a dog barks", steps=3, seed=1)])
    assert result.ok and len(result.neighbours) == 2 and np.isfinite(result.waveform).all()


def _tiny_part(tmp_path, name):
    """A random component of the tiny family saved as a checkpoint (the frozen VAE, the vocoder)."""
    from reaudio.models.checkpoint import save_checkpoint
    from reaudio.models.configs import load_config
    from reaudio.models.hifigan import HiFiGANGenerator
    from reaudio.models.vae import AutoencoderKL

    folder = tmp_path / "parts" / name
    if not folder.exists():
        torch.manual_seed(0)
        cfg = load_config("tiny")
        save_checkpoint(folder, AutoencoderKL(cfg.vae) if name == "vae" else HiFiGANGenerator(cfg.vocoder))
    return folder


def test_numpy_front_end_matches_transformers_clap_feature_extractor(original):
    from transformers import ClapFeatureExtractor

    a = original.cfg.audio
    extractor = ClapFeatureExtractor(
        feature_size=a.mel_bins,
        sampling_rate=a.sample_rate,
        hop_length=a.hop_length,
        fft_window_size=a.n_fft,
        max_length_s=a.max_seconds,
        frequency_min=a.fmin,
        frequency_max=a.fmax,
        truncation="rand_trunc",
        padding="repeatpad",
    )
    rng = np.random.default_rng(3)
    t = np.arange(a.sample_rate * 3) / a.sample_rate
    for wave in (0.1 * rng.standard_normal(len(t)) * np.exp(-t), 0.5 * np.sin(2 * np.pi * 1000 * t)):
        window = fit_window(wave.astype(np.float32), round(a.max_seconds * a.sample_rate))  # 3 s → 10 s repeat-pad
        expected = extractor(window, sampling_rate=a.sample_rate, return_tensors="np")["input_features"][0, 0]
        ours = a.frontend().features(wave, a.sample_rate)
        assert ours.shape == expected.shape == (1001, 64)
        np.testing.assert_allclose(ours, expected, atol=1e-3)  # dB values, -100 … +20
