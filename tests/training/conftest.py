import json

import numpy as np
import pytest
import soundfile as sf

from reaudio.training.toy_bundle import SOUNDS, synthetic_sound


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """Synthetic clips of six kinds at the tiny front end's rate; test split by source."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    rows = []
    for kind, caption in SOUNDS.items():
        for i in range(4):
            path = folder / f"{kind}-{i}.wav"
            sf.write(path, synthetic_sound(kind, 8000, 1.2, rng), 8000)
            split = "test" if i == 3 else "train"
            rows.append(
                {
                    "id": f"{kind}-{i}",
                    "audio": path.name,
                    "caption": caption,
                    "label": kind,
                    "source": f"{kind}-{i}.wav",
                    "split": split,
                }
            )
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="session")
def frozen_parts(tiny_manifest, tmp_path_factory):
    """A random tiny VAE, CLAP and vocoder, and a database over the tiny corpus with that CLAP."""
    import torch

    from reaudio.models.checkpoint import save_checkpoint
    from reaudio.models.configs import load_config
    from reaudio.models.system import build_system
    from reaudio.training.database import build_database_from_manifest

    folder = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(0)
    cfg = load_config("tiny")
    models = build_system(cfg)
    for name in ("vae", "clap", "vocoder"):
        save_checkpoint(folder / name, models[name])
    build_database_from_manifest(tiny_manifest, folder / "clap", cfg, folder / "db")
    return folder
