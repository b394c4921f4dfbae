"""AudioLDM as users have it: a hub id in the offline Hugging Face cache, fp16 and sharded
weights, and the model card's licence carried through to every generated clip."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from reaudio.engine.bundle.manifest import read_bundle_manifest  # noqa: E402
from reaudio.engine.jobs.bulk import GenerateJob, run_job  # noqa: E402
from reaudio.export.hub_cache import HubCacheError, resolve_model  # noqa: E402
from reaudio.export.import_audioldm import import_audioldm, load_audioldm, weight_files  # noqa: E402
from reaudio.training.toy_audioldm import make  # noqa: E402

REPO = "tiny-org/tiny-audioldm"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CARD = "---\nlicense: cc-by-nc-sa-4.0\ntags:\n- text-to-audio\n---\n# tiny AudioLDM\n"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return make(tmp_path_factory.mktemp("audioldm"))


@pytest.fixture(scope="module")
def cache(pipeline_dir, tmp_path_factory):
    """The hub cache layout (models--org--name/refs/main → snapshots/<commit>/) holding the
    pipeline as fp16-variant weights, sharded, with a model card."""
    root = tmp_path_factory.mktemp("hf-cache")
    repo = root / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    pipe = diffusers.AudioLDMPipeline.from_pretrained(str(pipeline_dir), local_files_only=True)
    pipe.to(torch.float16).save_pretrained(str(snapshot), variant="fp16", max_shard_size="100KB")
    (snapshot / "README.md").write_text(CARD)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


def test_the_cached_snapshot_is_fp16_and_sharded(cache):
    snapshot = resolve_model(REPO, cache_dir=cache)
    assert snapshot.name == COMMIT
    files, variant = weight_files(snapshot / "unet")
    assert variant == "fp16" and len(files) > 1, files  # the layout the test means to cover
    assert not (snapshot / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_fp16_sharded_weights_load_as_the_rounded_originals(pipeline_dir, cache):
    _, full, _ = load_audioldm(pipeline_dir)
    _, half, _ = load_audioldm(resolve_model(REPO, cache_dir=cache))
    for name in ("unet", "vae", "vocoder", "text_encoder"):
        ours, theirs = full[name].state_dict(), half[name].state_dict()
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            expected = value.half().float() if value.is_floating_point() else value
            assert theirs[key].dtype == value.dtype, key
            torch.testing.assert_close(theirs[key], expected, rtol=0, atol=0, msg=key)


def test_cli_imports_a_hub_id_offline_and_records_the_licence(cache, tmp_path):
    out = tmp_path / "bundle"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reaudio", "-q", "import", "audioldm", REPO, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cc-by-nc-sa-4.0" in proc.stdout and "non-commercial" in proc.stdout
    licence = read_bundle_manifest(out).licence
    assert (licence.name, licence.source, licence.model) == ("cc-by-nc-sa-4.0", "model card", REPO)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog barks\n")
    said: list[str] = []
    job = GenerateJob(prompts=prompts, out=tmp_path / "lib", bundle=out, steps=2, duration=1.0, backend="cpu")
    summary = run_job(job, progress=False, echo=said.append)
    assert summary.written == 1
    assert any("cc-by-nc-sa-4.0" in line and "non-commercial" in line for line in said), said
    row = json.loads((tmp_path / "lib" / "library.jsonl").read_text().splitlines()[0])
    assert row["licence"] == {"name": "cc-by-nc-sa-4.0", "source": "model card", "model": REPO}


def test_a_hub_id_missing_from_the_cache_names_the_cache_and_the_fetch_command(tmp_path):
    with pytest.raises(HubCacheError, match=r"cvssp/audioldm-s-full-v2 is not in the Hugging Face cache") as err:
        resolve_model("cvssp/audioldm-s-full-v2", cache_dir=tmp_path)
    assert str(tmp_path) in str(err.value) and "hf download cvssp/audioldm-s-full-v2" in str(err.value)
    with pytest.raises(HubCacheError, match="no such folder, and not a hub id"):
        resolve_model(tmp_path / "nowhere" / "at" / "all")


def test_licence_flag_and_unknown_licence(pipeline_dir, tmp_path):
    unknown = import_audioldm(pipeline_dir, tmp_path / "a")  # a folder without a model card
    assert unknown.licence.name == "unknown" and "check the model's terms" in unknown.licence.notice()
    given = import_audioldm(pipeline_dir, tmp_path / "b", licence="apache-2.0")
    assert (given.licence.name, given.licence.source) == ("apache-2.0", "--licence")
    assert not given.licence.non_commercial


def test_bundles_without_a_licence_write_no_licence_field(tiny_bundle, tmp_path):
    bundle = tiny_bundle
    assert read_bundle_manifest(bundle).licence is None
    prompts = tmp_path / "p.txt"
    prompts.write_text("rain\n")
    run_job(
        GenerateJob(prompts=prompts, out=tmp_path / "lib", bundle=bundle, steps=2, duration=1.0),
        progress=False,
        echo=lambda *a: None,
    )
    row = json.loads((tmp_path / "lib" / "library.jsonl").read_text().splitlines()[0])
    assert "licence" not in row
    assert np.isfinite(row["duration_s"])
