"""Each training loop learns, resumes exactly, runs under DDP, and feeds export."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from reaudio.engine.cli import main as cli
from reaudio.engine.pipeline import Engine, Request
from reaudio.models.checkpoint import load_checkpoint
from reaudio.models.configs import load_config
from reaudio.training.tasks import VocoderTask, tail_parameter_names
from reaudio.training.trainer import TrainConfig


def _train(model, manifest, out, *extra, steps=30, batch=8, lr="2e-3"):
    args = [
        "-q",
        "train",
        model,
        "--config",
        "tiny",
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--lr",
        lr,
        "--warmup-steps",
        "3",
        "--log-every",
        "1",
        *extra,
    ]
    assert cli(args) == 0
    with open(out / "metrics.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _mean(xs):
    return sum(xs) / len(xs)


def test_vae_loss_goes_down_and_reports_test_error(tiny_manifest, tmp_path):
    losses = _train("vae", tiny_manifest, tmp_path / "vae", steps=40)
    assert _mean(losses[-5:]) < 0.8 * _mean(losses[:5])
    summary = json.loads((tmp_path / "vae" / "summary.json").read_text())
    assert summary["test_mel_l1"] > 0
    assert load_checkpoint(tmp_path / "vae" / "final" / "vae").cfg == load_config("tiny").vae


def test_resume_after_interruption_gives_identical_weights(tiny_manifest, tmp_path):
    _train("vae", tiny_manifest, tmp_path / "straight", "--checkpoint-every", "3", steps=6)
    _train("vae", tiny_manifest, tmp_path / "resumed", "--checkpoint-every", "3", steps=3)
    metrics = tmp_path / "resumed" / "metrics.csv"
    with open(metrics) as f:
        header = f.readline().strip().split(",")
    with open(metrics, "a") as f:  # rows a run killed after step 3's checkpoint would have left
        f.write(",".join("4" if h == "step" else "-1" for h in header) + "\n")
    _train("vae", tiny_manifest, tmp_path / "resumed", "--checkpoint-every", "3", steps=6)
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 6 and all(r["lr"] != "-1" for r in rows)
    a = load_checkpoint(tmp_path / "straight" / "final" / "vae").state_dict()
    b = load_checkpoint(tmp_path / "resumed" / "final" / "vae").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    different_seed = tmp_path / "seed1"
    _train("vae", tiny_manifest, different_seed, "--seed", "1", steps=6)
    c = load_checkpoint(different_seed / "final" / "vae").state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not list((tmp_path / "resumed" / "checkpoints").glob(".*"))  # no temp files left


def test_time_limit_stops_with_a_checkpoint_and_reruns_finish_as_one_run(tiny_manifest, tmp_path):
    cosine = ("--lr-decay", "cosine", "--final-lr-fraction", "0.1", "--checkpoint-every", "100")
    _train("vae", tiny_manifest, tmp_path / "straight", *cosine, steps=4)
    sliced = tmp_path / "sliced"
    args = ["-q", "train", "vae", "--config", "tiny", "--data", str(tiny_manifest), "--out", str(sliced)]
    args += ["--steps", "4", "--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "3", "--log-every", "1", *cosine]
    # A limit every step outlasts: each call trains one step, saves it and says it is not done.
    for step in (1, 2, 3):
        assert cli([*args, "--time-limit", "1e-9"]) == 3
        assert torch.load(sliced / "checkpoints" / "last.pt", weights_only=True)["step"] == step
        assert not (sliced / "final").exists() and not (sliced / "summary.json").exists()
    assert cli([*args, "--time-limit", "1e-9"]) == 0  # the last step finishes the run
    with open(sliced / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    a = load_checkpoint(tmp_path / "straight" / "final" / "vae").state_dict()
    b = load_checkpoint(sliced / "final" / "vae").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cli([*args, "--time-limit", "-1"]) == 2


def test_vocoder_mel_loss_goes_down(tiny_manifest, tmp_path):
    _train("vocoder", tiny_manifest, tmp_path / "voc", "--discriminator-width", "0.125", steps=25, batch=4)
    with open(tmp_path / "voc" / "metrics.csv") as f:
        mel = [float(r["loss_mel"]) for r in csv.DictReader(f)]
    assert _mean(mel[-5:]) < 0.9 * _mean(mel[:5])
    summary = json.loads((tmp_path / "voc" / "summary.json").read_text())
    assert summary["test_mel_l1_after"] < summary["test_mel_l1_before"]


def test_vocoder_fine_tunes_its_tail_on_decoded_mels(tiny_manifest, frozen_parts, tmp_path, capsys):
    f = frozen_parts
    out = tmp_path / "voc"
    args = ("--vocoder", str(f / "vocoder"), "--decoded-by", str(f / "vae"), "--discriminator-width", "0.125")
    _train("vocoder", tiny_manifest, out, *args, "--train-stages", "1", steps=4, batch=4)
    before = load_checkpoint(f / "vocoder")
    after = load_checkpoint(out / "final" / "vocoder").state_dict()
    tail = set(tail_parameter_names(before, 1))
    assert tail and any(k.startswith("conv_post.") for k in tail) and any(k.startswith("ups.") for k in tail)
    assert all(torch.equal(v, after[k]) for k, v in before.state_dict().items() if k not in tail)
    assert all(not torch.equal(v, after[k]) for k, v in before.state_dict().items() if k in tail)
    run = json.loads((out / "config.json").read_text())
    assert run["inputs"]["decoded_by"] == str(f / "vae") and run["train_stages"] == 1
    bad = ["train", "vocoder", "--config", "tiny", "--data", str(tiny_manifest), "--out", str(tmp_path / "bad")]
    assert cli([*bad, *args, "--train-stages", "9"]) == 2
    assert "--train-stages 9: choose 1 to 3 (this vocoder has 3 up-sampling stages)" in capsys.readouterr().err
    assert cli([*bad, "--train-stages", "1"]) == 2
    assert "--train-stages fine-tunes a trained vocoder: pass it with --vocoder" in capsys.readouterr().err


def test_decoded_mels_line_up_with_their_audio_segments(tiny_manifest, frozen_parts):
    """Each training segment's audio is paired with the frames of the same instants: with an
    identity in place of the VAE, the paired mel is the segment's own (inner frames)."""
    from types import SimpleNamespace

    from torch import nn

    task = VocoderTask(load_config("tiny"), tiny_manifest, decoded_by=frozen_parts / "vae")
    cfg = SimpleNamespace(loudness_db=-20.0, discriminator_width=0.125, batch_size=6, seed=3)
    trainer = SimpleNamespace(device=torch.device("cpu"), cfg=cfg, rank=0, world=1)
    task.setup(trainer)
    task.decoder = nn.Identity()
    for step in range(3):
        task._decoded.clear()
        wav, heard = task._training_batch(trainer, step)
        assert wav.shape[1] == heard.shape[1] * task.family.mel.hop_length
        own = task.mel(wav)
        assert torch.allclose(heard[:, 2:-2], own[:, 2:-2], atol=1e-4)


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_manifest, tmp_path):
    import pickle

    out = tmp_path / "run"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / "checkpoints").mkdir(parents=True)
    with open(out / "checkpoints" / "last.pt", "wb") as f:
        pickle.dump({"step": 1, "x": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        _train("vae", tiny_manifest, out, steps=2)
    assert not marker.exists()


def test_ldm_learns_and_its_final_folder_exports_and_generates(tiny_manifest, frozen_parts, tmp_path):
    f = frozen_parts
    losses = _train(
        "ldm",
        tiny_manifest,
        tmp_path / "ldm",
        "--vae",
        str(f / "vae"),
        "--clap",
        str(f / "clap"),
        "--database",
        str(f / "db"),
        "--vocoder",
        str(f / "vocoder"),
        steps=30,
        lr="2e-3",
    )
    assert _mean(losses[-5:]) < 0.85 * _mean(losses[:5])
    config = json.loads((tmp_path / "ldm" / "config.json").read_text())
    assert config["latent_scaling_factor"] > 0 and config["train"]["ema_decay"] == 0.999
    bundle = tmp_path / "bundle"
    assert (
        cli(["-q", "export", str(tmp_path / "ldm" / "final"), "--out", str(bundle), "--database", str(f / "db")]) == 0
    )
    (result,) = Engine.from_bundle(bundle, backend="cpu").generate([Request("a short high beep", steps=4)])
    assert result.ok and len(result.neighbours) == 2


def test_ldm_neighbours_exclude_self_and_same_source(tiny_manifest, frozen_parts, tmp_path):
    from reaudio.training.tasks import LDMTask
    from reaudio.training.trainer import TrainConfig, Trainer

    f = frozen_parts
    task = LDMTask(load_config("tiny"), tiny_manifest, f / "vae", f / "clap", f / "db")
    Trainer(task, tmp_path / "run", TrainConfig(steps=0), {})
    items = task.db.items
    for clip, rows in zip(task.train.clips, task.neighbours):
        assert len(rows) == 2
        assert all(items[r]["id"] != clip.id and items[r]["source"] != clip.source for r in rows)


def test_ldm_encodes_each_training_clip_once_when_clips_fit_a_window(tiny_manifest, frozen_parts, tmp_path):
    import numpy as np

    from reaudio.training.tasks import LDMTask
    from reaudio.training.trainer import TrainConfig, Trainer

    f = frozen_parts
    task = LDMTask(load_config("tiny"), tiny_manifest, f / "vae", f / "clap", f / "db")
    trainer = Trainer(task, tmp_path / "run", TrainConfig(steps=0, batch_size=3), {})
    assert task.posteriors is None  # 1.2-s clips, 1-s window: cropped at random every step
    task.train.audio = [w[: task.clip_samples * 3 // 4] for w in task.train.audio]
    task.posteriors = task._cache_posteriors()
    assert task.posteriors is not None
    wav = torch.from_numpy(np.pad(task.train.audio[1], (0, task.clip_samples - len(task.train.audio[1]))))[None]
    with torch.no_grad():
        direct = task.vae.encode(task.mel(wav))
    torch.testing.assert_close(task.posteriors[0][1:2], direct.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(task.posteriors[1][1:2], direct.std, rtol=1e-4, atol=1e-5)
    idx, z0 = task._latents(trainer, 5)
    assert z0.shape == (3, *direct.mean.shape[1:]) and len(idx) == 3
    torch.manual_seed(0)
    again = task._latents(trainer, 5)[1]
    torch.manual_seed(1)
    assert not torch.equal(again, task._latents(trainer, 5)[1])  # a fresh posterior sample each step


def test_ddp_two_cpu_processes_end_with_identical_weights(tiny_manifest, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "reaudio.training",
        "vae",
        "--config",
        "tiny",
        "--data",
        str(tiny_manifest),
        "--out",
        str(out),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--quiet",
    ]
    # A first slice cut by the time limit: both ranks stop at step 1 with one checkpoint
    # (a rank that went on alone would hang in its next all-reduce).
    proc = subprocess.run([*cmd, "--time-limit", "1e-9"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "stopped by the time limit" in proc.stderr, proc.stderr[-3000:]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 1
    assert not (out / "final").exists()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks_identical"] is True
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    # Resume across a change of world size: the 2-process run's checkpoint continues in 1 process.
    resumed = [
        sys.executable,
        "-m",
        "reaudio.training",
        "vae",
        "--config",
        "tiny",
        "--data",
        str(tiny_manifest),
        "--out",
        str(out),
        "--steps",
        "6",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
    ]
    proc = subprocess.run(resumed, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 4" in proc.stderr  # continued, not restarted
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    assert json.loads((out / "config.json").read_text())["world_size"] == 1


def test_cli_db_build_over_the_train_split(tiny_manifest, frozen_parts, tmp_path):
    from reaudio.engine.retrieval.database import RetrievalDB

    out = tmp_path / "db"
    assert (
        cli(
            [
                "-q",
                "db",
                "build",
                "--clap",
                str(frozen_parts / "clap"),
                "--config",
                "tiny",
                "--data",
                str(tiny_manifest),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    db = RetrievalDB(out)
    assert len(db) == 18 and all(not item["id"].endswith("-3") for item in db.items)  # test clips left out
    assert db.info.provenance["manifest_sha256"] and db.info.provenance["splits"] == ["train"]


def test_clap_loss_goes_down_and_recall_is_reported(tiny_manifest, tmp_path):
    losses = _train("clap", tiny_manifest, tmp_path / "clap", steps=40)
    assert _mean(losses[-5:]) < 0.7 * _mean(losses[:5])
    summary = json.loads((tmp_path / "clap" / "summary.json").read_text())
    for key in ("text_to_audio_r@1", "audio_to_text_r@10", "baseline_text_to_audio_r@1"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["test_clips"] == 6
    clap = load_checkpoint(tmp_path / "clap" / "final" / "clap")
    assert clap.cfg == load_config("tiny").clap


def test_recall_at_k_by_hand():
    import numpy as np

    from reaudio.training.clap_task import recall_at

    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.0, 0.2, 0.1]])
    # Row 0: rank 0; row 1: one item above (0.8) → rank 1; row 2: one above (0.2) → rank 1.
    assert recall_at(sim, (1, 2)) == {"r@1": 1 / 3, "r@2": 1.0}


def _changed_halves(before_folder, after_folder) -> set[str]:
    """Which halves of a VAE ("encoder", "decoder") differ between two checkpoint folders."""
    from safetensors.torch import load_file

    before = load_file(str(before_folder / "model.safetensors"))
    after = load_file(str(after_folder / "model.safetensors"))
    assert set(before) == set(after)
    halves = {k.split(".")[0] for k in before}
    assert {"encoder", "decoder"} <= halves
    return {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}


def test_frozen_decoder_training_changes_only_the_encoder(tiny_manifest, tmp_path):
    _train("vae", tiny_manifest, tmp_path / "full", steps=3)
    source = tmp_path / "full" / "final" / "vae"
    losses = _train("vae", tiny_manifest, tmp_path / "enc", "--frozen-decoder", str(source), steps=30)
    assert _mean(losses[-5:]) < _mean(losses[:5])
    assert _changed_halves(source, tmp_path / "enc" / "final" / "vae") == {"encoder"}


def test_frozen_encoder_training_changes_only_the_decoder_and_starts_from_it(tiny_manifest, tmp_path):
    _train("vae", tiny_manifest, tmp_path / "full", steps=40)
    source = tmp_path / "full" / "final" / "vae"
    tuned = _train("vae", tiny_manifest, tmp_path / "dec", "--frozen-encoder", str(source), steps=20)
    fresh = _train("vae", tiny_manifest, tmp_path / "fresh", steps=20)
    # it starts where the source ended, not from random weights
    assert _mean(tuned[:5]) < _mean(fresh[:5])
    assert _changed_halves(source, tmp_path / "dec" / "final" / "vae") == {"decoder"}
    from reaudio.training.tasks import VAETask

    with pytest.raises(ValueError, match="not both"):
        VAETask(load_config("tiny"), tiny_manifest, frozen_decoder=source, frozen_encoder=source)


def test_adversarial_vae_training_judges_mels_and_ships_only_the_vae(tiny_manifest, tmp_path):
    import csv

    from safetensors.torch import load_file

    out = tmp_path / "adv"
    _train("vae", tiny_manifest, out, "--adversarial-weight", "0.1", steps=6)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(float(r["loss_d"]) > 0 and float(r["loss_adv"]) > 0 for r in rows)
    # the loss is the L1 (+ KL) plus the weighted adversarial terms
    assert all(float(r["loss"]) > float(r["loss_rec"]) + 0.05 * float(r["loss_adv"]) for r in rows)
    weights = load_file(str(out / "final" / "vae" / "model.safetensors"))
    assert not any(k.startswith("discriminator") or "convs" in k for k in weights)
    assert load_checkpoint(out / "final" / "vae").cfg == load_config("tiny").vae


def test_ldm_fine_tunes_the_default_model_from_its_unpacked_pack(tiny_manifest, tiny_artifacts, tmp_path, capsys):
    from reaudio.engine.retrieval.database import RetrievalDB
    from reaudio.export.default_pack import load_pack_models, unpack, write_pack

    pack = tmp_path / "pack"
    write_pack(tiny_artifacts / "system", tiny_artifacts / "db", pack)
    base = unpack(pack, tmp_path / "base")
    _, packed = load_pack_models(pack)
    for name in ("unet", "vae", "clap"):
        state = load_checkpoint(base / name).state_dict()
        assert all(torch.equal(state[k], v) for k, v in packed[name].state_dict().items()), name
    assert len(RetrievalDB(base / "db").items) == len((pack / "db" / "items.jsonl").read_text().splitlines())
    with pytest.raises(FileExistsError, match="--overwrite"):
        unpack(pack, base)

    inputs = ["--config", str(base / "family.json"), "--vae", str(base / "vae"), "--clap", str(base / "clap")]
    inputs += ["--database", str(base / "db")]
    _train("ldm", tiny_manifest, tmp_path / "tuned", *inputs, "--unet", str(base / "unet"), steps=2, lr="1e-6")
    _train("ldm", tiny_manifest, tmp_path / "fresh", *inputs, steps=2, lr="1e-6")
    start = packed["unet"].state_dict()

    def moved(run):
        final = load_checkpoint(run / "final" / "unet").state_dict()
        return max(float((final[k] - v).abs().max()) for k, v in start.items())

    # a tiny learning rate: the continued run ends where the pack's UNet was, a fresh one does not
    assert moved(tmp_path / "tuned") < 1e-3 < moved(tmp_path / "fresh")
    args = ["train", "ldm", "--data", str(tiny_manifest), "--out", str(tmp_path / "wrong"), "--steps", "1", *inputs]
    assert cli([*args, "--unet", str(base / "vae")]) == 2
    assert "not a UNet checkpoint" in capsys.readouterr().err


def test_cosine_lr_decay_warms_up_then_falls_to_the_floor_on_the_last_step(tiny_manifest, tmp_path):
    cosine = ("--lr-decay", "cosine", "--final-lr-fraction", "0.1")
    _train("vae", tiny_manifest, tmp_path / "run", *cosine, steps=12, lr="1e-3")
    with open(tmp_path / "run" / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert len(lrs) == 12
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # warm-up (3 steps), then the peak
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # decays on every step after the peak
    assert lrs[-1] == pytest.approx(1e-4)
    assert lrs[7] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    constant = tmp_path / "constant"
    _train("vae", tiny_manifest, constant, steps=6, lr="1e-3")
    with open(constant / "metrics.csv") as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)][2:] == [1e-3] * 4


def test_lr_decay_refuses_unknown_curves_and_floors():
    with pytest.raises(ValueError, match="lr_decay 'linear' is not one of constant, cosine"):
        TrainConfig(lr_decay="linear")
    with pytest.raises(ValueError, match="final_lr_fraction 1.5 is outside"):
        TrainConfig(final_lr_fraction=1.5)
