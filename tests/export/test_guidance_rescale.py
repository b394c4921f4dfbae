"""Guidance rescale: the formula (against diffusers'), the exported denoiser (against the torch
reference sampler), the manifest record, the export flag and the default-model pack setting."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reaudio.engine.bundle.manifest import BundleError, read_bundle_manifest  # noqa: E402
from reaudio.engine.pipeline import Engine, Request  # noqa: E402
from reaudio.engine.retrieval.database import RetrievalDB  # noqa: E402
from reaudio.export.bundle import export_bundle  # noqa: E402
from reaudio.models.guidance_rescale import GuidanceRescale  # noqa: E402
from reaudio.models.system import load_system  # noqa: E402
from reaudio.training.torch_reference import TorchPipeline  # noqa: E402


def _predictions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(3, 4, 9, 5, generator=g) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1)
    uncond = torch.randn(3, 4, 9, 5, generator=g)
    return uncond + 6.0 * (cond - uncond), cond


@pytest.mark.parametrize("factor", [0.0, 0.3, 0.7, 1.0])
def test_rescale_matches_diffusers(factor):
    diffusers_sd = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    guided, cond = _predictions()
    expected = diffusers_sd.rescale_noise_cfg(guided.clone(), cond.clone(), guidance_rescale=factor)
    assert torch.allclose(GuidanceRescale(factor)(guided, cond), expected, rtol=1e-5, atol=1e-6)


def test_full_rescale_keeps_the_direction_at_the_conditional_spread():
    guided, cond = _predictions(1)
    out = GuidanceRescale(1.0)(guided, cond)
    assert torch.allclose(out.flatten(1).std(dim=1), cond.flatten(1).std(dim=1), rtol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(out.flatten(1), guided.flatten(1), dim=1)
    assert torch.allclose(cosine, torch.ones(3), atol=1e-6)
    assert (out.flatten(1).std(dim=1) < guided.flatten(1).std(dim=1) / 2).all()  # guidance 6 had inflated it
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
            GuidanceRescale(bad)


def test_a_bundle_with_rescale_samples_as_the_torch_reference(tiny_artifacts, tmp_path):
    cfg, models = load_system([tiny_artifacts / "system"])
    models["vocoder"].remove_weight_norm()
    bundle = tmp_path / "rescaled"
    export_bundle(cfg, {**models, "guidance_rescale": GuidanceRescale(0.7)}, bundle, database=tiny_artifacts / "db")
    engine = Engine.from_bundle(bundle, backend="cpu")
    assert engine.manifest.guidance_rescale == 0.7
    assert Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu").manifest.guidance_rescale == 0.0

    latents = np.random.default_rng(3).standard_normal((1, *cfg.latent_shape(40))).astype(np.float32)
    torch_pipeline = TorchPipeline(cfg, models, RetrievalDB(tiny_artifacts / "db"))

    def both(guidance: float, rescale: float) -> tuple[np.ndarray, np.ndarray]:
        request = Request("a rising chirp", initial_latent=latents[0], steps=8, guidance=guidance, k=2, sampler="ddim")
        ours = engine.generate([request])[0].waveform
        return ours, torch_pipeline.generate(["a rising chirp"], latents, 8, guidance, 2, guidance_rescale=rescale)[0]

    ours, reference = both(3.0, 0.7)
    tolerance = 1e-5 * np.abs(reference).max()
    assert np.abs(ours - reference).max() <= tolerance
    _, plain = both(3.0, 0.0)
    assert np.abs(plain - reference).max() > 100 * tolerance  # the rescale really is in the graph
    # At guidance 1 the guided prediction is the conditional one: nothing to rescale.
    ours, plain = both(1.0, 0.0)
    assert np.abs(ours - plain).max() <= 1e-5 * np.abs(plain).max()


def test_a_manifest_out_of_range_is_refused(tiny_bundle):
    path = tiny_bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["guidance_rescale"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"guidance_rescale=1.5; valid: 0 to 1"):
        read_bundle_manifest(tiny_bundle, verify=False)


def test_export_flag_records_it_and_refuses_a_bad_value(tiny_artifacts, tmp_path, capsys):
    from reaudio.engine.cli import main

    args = ["export", str(tiny_artifacts / "system"), "--out"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, str(tmp_path / "bad"), "--guidance-rescale", "1.5"])
    assert exit_info.value.code == 2 and "1.5 is outside 0 to 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert (
        main([*args, str(tmp_path / "ok"), "--guidance-rescale", "0.5", "--database", str(tiny_artifacts / "db")]) == 0
    )
    assert read_bundle_manifest(tmp_path / "ok").guidance_rescale == 0.5


def test_a_pack_setting_reaches_the_assembled_denoiser(tiny_artifacts, tmp_path, capsys):
    from reaudio.engine.cli import main
    from reaudio.export.default_pack import assemble, load_pack_models, verify_pack, write_pack

    pack = tmp_path / "pack"
    write_pack(tiny_artifacts / "system", tiny_artifacts / "db", pack)
    assert "guidance_rescale" not in load_pack_models(pack)[1]
    assert main(["default-model", "guidance-rescale", "0.7", "--pack", str(pack), "--measured", "a test"]) == 0
    assert "rescales guidance by 0.7" in capsys.readouterr().out
    meta = verify_pack(pack)
    assert meta["guidance_rescale"] == 0.7 and meta["provenance"]["guidance_rescale"]["measured"] == "a test"
    assert load_pack_models(pack)[1]["guidance_rescale"].factor == 0.7
    assert read_bundle_manifest(assemble(pack, tmp_path / "bundle")).guidance_rescale == 0.7

    assert main(["default-model", "guidance-rescale", "0", "--pack", str(pack)]) == 0
    meta = verify_pack(pack)
    assert "guidance_rescale" not in meta and "guidance_rescale" not in meta["provenance"]

    broken = tmp_path / "broken"
    shutil.copytree(pack, broken)
    meta["guidance_rescale"] = 2
    (broken / "pack.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"pack.json: guidance_rescale 2: .*must be in \[0, 1\]"):
        load_pack_models(broken)
