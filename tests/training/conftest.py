import json

import numpy as np
import pytest
import soundfile as sf

from tests.make_tiny_bundle import SOUNDS, synthetic_sound


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
