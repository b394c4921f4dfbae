import json

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.cli import main as cli
from reaudio.training.dataset_tools import DatasetError, import_dataset, split_of


def _wav(path, seconds=1.0):
    sf.write(path, np.zeros(int(8000 * seconds), np.float32), 8000)


def test_import_writes_a_manifest_with_splits_by_source(tmp_path):
    for i in range(30):
        _wav(tmp_path / f"c{i}.wav")
    rows = [
        f'{{"audio": "c{i}.wav", "caption": "clip {i}", "label": "l{i % 3}", "source": "rec{i // 2}"}}'
        for i in range(30)
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    summary = import_dataset(tmp_path / "in.jsonl", tmp_path / "m.jsonl", test_percent=30)
    manifest = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert summary["clips"] == 30 and len(manifest) == 30
    by_source = {}
    for row in manifest:
        by_source.setdefault(row["source"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_source.values())  # recordings never straddle splits
    assert {"train", "test"} <= {r["split"] for r in manifest}
    assert split_of("rec1") == split_of("rec1")  # deterministic


def test_import_reports_every_bad_row_with_file_and_line(tmp_path):
    _wav(tmp_path / "ok.wav")
    _wav(tmp_path / "short.wav", 0.1)
    (tmp_path / "junk.wav").write_bytes(b"nope")
    (tmp_path / "in.csv").write_text(
        "audio,caption,label\nok.wav,a door,door\nok.wav,,door\nmissing.wav,x,y\njunk.wav,x,y\nshort.wav,x,y\n"
    )
    with pytest.raises(DatasetError) as err:
        import_dataset(tmp_path / "in.csv", tmp_path / "m.jsonl")
    text = str(err.value)
    for fragment in (
        "in.csv:3: empty caption",
        "in.csv:4: audio file",
        "in.csv:5: unreadable audio",
        "in.csv:6:",
        "at least 0.3 s",
    ):
        assert fragment in text
    assert not (tmp_path / "m.jsonl").exists()


def test_stats_cli_writes_frequencies_and_chart(tiny_manifest, tmp_path):
    assert cli(["-q", "data", "stats", str(tiny_manifest), "--out", str(tmp_path / "s")]) == 0
    stats = json.loads((tmp_path / "s" / "label_stats.json").read_text())
    assert stats["labels"] == 6 and stats["train_clips"] == 18 and stats["frequencies"]["beep"] == 3
    assert (tmp_path / "s" / "long_tail.png").stat().st_size > 1000
