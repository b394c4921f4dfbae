"""Import a diffusers AudioLDM pipeline and prove the engine reproduces it."""

import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from reaudio.engine.pipeline import Engine, Request  # noqa: E402
from reaudio.export.import_audioldm import AudioLDMImportError, import_audioldm, load_audioldm  # noqa: E402
from reaudio.models.checkpoint import CheckpointError  # noqa: E402
from reaudio.training.toy_audioldm import make  # noqa: E402


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("audioldm"))


@pytest.fixture(scope="module")
def reference(pipeline_dir):
    pipe = diffusers.AudioLDMPipeline.from_pretrained(str(pipeline_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def imported(pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    import_audioldm(pipeline_dir, out)
    return out


@pytest.fixture(scope="module")
def ours(pipeline_dir):
    return load_audioldm(pipeline_dir)


def test_tokenizer_matches_the_pipeline_without_padding(reference, imported):
    engine = Engine.from_bundle(imported, backend="cpu")
    prompts = ["a dog barks", "rain falls on a tin roof, then thunder", ""]
    ids, mask = engine.tokenizer(prompts)
    expected = reference.tokenizer(prompts).input_ids
    for row, m, exp in zip(ids, mask, expected):
        assert row[m.astype(bool)].tolist() == exp
    assert len(set(map(tuple, expected))) == 3


def test_stage_parity_text_unet_vae_vocoder(reference, ours, imported):
    family, models, _ = ours
    engine = Engine.from_bundle(imported, backend="cpu")
    prompts = ["a dog barks", "thunder rumbles far away"]
    # Text embedding: diffusers pads to 512 tokens, the engine to the longest prompt.
    tok = reference.tokenizer(prompts, padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref_emb = torch.nn.functional.normalize(
            reference.text_encoder(tok.input_ids, attention_mask=tok.attention_mask).text_embeds, dim=-1
        ).numpy()
    emb, _, _ = engine.embed_text(prompts)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-5)
    assert ref_emb[0] @ ref_emb[1] < 0.999  # distinct prompts, distinct embeddings
    # One UNet evaluation.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 31, 4, generator=g)
    t = torch.tensor([999, 10])
    film = torch.from_numpy(ref_emb)
    with torch.no_grad():
        expected = reference.unet(x, t, encoder_hidden_states=None, class_labels=film).sample
        torch.testing.assert_close(models["unet"](x, t, film), expected, rtol=1e-4, atol=1e-5)
        # VAE decoder and vocoder.
        z = torch.randn(2, 4, 20, 4, generator=g)
        ref_mel = reference.vae.decode(z).sample
        torch.testing.assert_close(models["vae"].decode(z).unsqueeze(1), ref_mel, rtol=1e-4, atol=1e-5)
        mel = torch.randn(2, 30, 16, generator=g)
        torch.testing.assert_close(models["vocoder"](mel), reference.vocoder(mel), rtol=1e-4, atol=1e-6)


def test_vae_encoder_stage_matches_diffusers_vae_encode(reference, imported):
    engine = Engine.from_bundle(imported, backend="cpu")
    assert "vae_encoder" in engine.manifest.stages
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(2, 40, engine.manifest.mel.n_mels, generator=g)
    with torch.no_grad():
        expected = (
            reference.vae.encode(mel.unsqueeze(1)).latent_dist.mean * reference.vae.config.scaling_factor
        ).numpy()
    actual = engine.runners["vae_encoder"].run({"mel": mel.numpy()})[0]
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("frames, batch", [(125, 1), (125, 2), (256, 2)])
def test_engine_waveform_matches_diffusers(reference, imported, frames, batch):
    engine = Engine.from_bundle(imported, backend="cpu")
    m = engine.manifest
    prompts = ["a dog barks", "rain falls on a tin roof"][:batch]
    latent = np.random.default_rng(frames).standard_normal((1, m.latent.channels, frames, m.latent.freq))
    latents = np.repeat(latent.astype(np.float32), batch, axis=0)
    seconds = frames * m.latent.downsample * m.mel.hop_length / m.sample_rate
    expected = reference(
        prompts,
        audio_length_in_s=seconds,
        num_inference_steps=10,
        guidance_scale=2.5,
        latents=torch.from_numpy(latents),
        output_type="np",
    ).audios
    results = engine.generate(
        [Request(p, initial_latent=lat, steps=10, guidance=2.5, sampler="ddim") for p, lat in zip(prompts, latents)],
        batch_size=batch,
    )
    for res, ref in zip(results, expected):
        assert res.waveform.shape == ref.shape
        assert np.abs(res.waveform - ref).max() <= 1e-4 * np.abs(ref).max()
    if batch == 2:  # same noise, different prompts: the comparison covers the text path
        assert np.abs(expected[0] - expected[1]).max() > 1e-2 * np.abs(expected[0]).max()


def test_negative_prompt_matches_diffusers(reference, imported):
    engine = Engine.from_bundle(imported, backend="cpu")
    m = engine.manifest
    latent = np.random.default_rng(5).standard_normal((1, m.latent.channels, 64, m.latent.freq)).astype(np.float32)
    seconds = 64 * m.latent.downsample * m.mel.hop_length / m.sample_rate
    expected = reference(
        "a bell rings",
        negative_prompt="wind howls",
        audio_length_in_s=seconds,
        num_inference_steps=5,
        guidance_scale=3.0,
        latents=torch.from_numpy(latent),
        output_type="np",
    ).audios[0]
    (res,) = engine.generate(
        [Request("a bell rings", negative_prompt="wind howls", initial_latent=latent[0], steps=5, guidance=3.0)]
    )
    assert np.abs(res.waveform - expected).max() <= 1e-4 * np.abs(expected).max()


def test_manifest_records_the_family(imported):
    data = json.loads((imported / "manifest.json").read_text())
    assert data["family"] == "audioldm" and data["retrieval"] is None and data["null_condition"] == "empty_prompt"
    assert "audio_encoder" not in data["stages"]


def test_unknown_keys_fail_naming_them(pipeline_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "p"
    shutil.copytree(pipeline_dir, copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["down_blocks.0.extra.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"unexpected keys: down_stages\.0\.extra\.weight|extra\.weight"):
        load_audioldm(copy)


def test_unsupported_scheduler_settings_fail_naming_the_field(pipeline_dir, tmp_path):
    import shutil

    copy = tmp_path / "p"
    shutil.copytree(pipeline_dir, copy)
    path = copy / "scheduler" / "scheduler_config.json"
    data = json.loads(path.read_text())
    data["prediction_type"] = "v_prediction"
    path.write_text(json.dumps(data))
    with pytest.raises(AudioLDMImportError, match="prediction_type='v_prediction' is not supported"):
        load_audioldm(copy)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(AudioLDMImportError, match="model_index.json missing"):
        load_audioldm(tmp_path)


def test_cli_import(pipeline_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "b"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reaudio",
            "-q",
            "import",
            "audioldm",
            str(pipeline_dir),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "audioldm" in proc.stdout and (out / "manifest.json").is_file()
