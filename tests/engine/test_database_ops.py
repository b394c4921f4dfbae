import importlib.util
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.bundle.manifest import read_bundle_manifest
from reaudio.engine.jobs.db_commands import ClipListError, add_clips, read_clip_list, remove_clips
from reaudio.engine.pipeline import Engine, Request

CLI = [sys.executable, "-m", "reaudio.engine.cli"]


def _clip(folder, name, freq, caption):
    t = np.arange(8000) / 8000
    sf.write(folder / f"{name}.wav", (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000)
    (folder / f"{name}.txt").write_text(caption)


@pytest.fixture
def empty_bundle(tiny_artifacts, tmp_path):
    """The tiny models exported without a database (``reaudio export``; a runtime-only run copies
    the one ``reaudio.training.toy_bundle --empty`` made)."""
    out = tmp_path / "empty"
    made = tiny_artifacts / "bundle-empty"
    if made.is_dir() and importlib.util.find_spec("torch") is None:
        shutil.copytree(made, out)
        return out
    proc = subprocess.run(
        [*CLI, "-q", "export", str(tiny_artifacts / "system"), "--out", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_added_clip_is_retrieved_immediately(empty_bundle, tmp_path):
    clips = tmp_path / "mine"
    clips.mkdir()
    _clip(clips, "whistle", 1200, "my kettle whistling")
    proc = subprocess.run(
        [*CLI, "db", "add", str(clips), "--bundle", str(empty_bundle)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "holds 1 clip" in proc.stdout
    read_bundle_manifest(empty_bundle)  # checksums were updated with the database
    engine = Engine.from_bundle(empty_bundle, backend="cpu")
    (result,) = engine.generate([Request("a kettle", k=1, seed=0)])
    assert result.neighbours == [{"id": "whistle", "caption": "my kettle whistling"}]


def test_added_clip_is_its_own_nearest_neighbour(tiny_bundle, tmp_path):
    clips = tmp_path / "mine"
    clips.mkdir()
    _clip(clips, "a", 300, "a low tone")
    _clip(clips, "b", 3000, "a high tone")
    db = add_clips(tiny_bundle, read_clip_list(clips))
    assert len(db) == 18 + 2
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    wave, _ = sf.read(clips / "b.wav", dtype="float32")
    emb, _ = engine.encode_audio([wave])
    rows = engine.db.search(emb, 1)
    assert engine.db.item_ids(rows) == [["b"]]
    db = remove_clips(tiny_bundle, ["a"])
    assert len(db) == 19 and "a" not in {i["id"] for i in db.items}
    listed = subprocess.run([*CLI, "db", "list", "--bundle", str(tiny_bundle)], capture_output=True, text=True)
    assert "b\t\ta high tone" in listed.stdout and "\ta low tone" not in listed.stdout


def test_clip_list_errors_name_file_and_line(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"junk")
    (tmp_path / "clips.csv").write_text("audio,caption\nx.wav,\nmissing.wav,a sound\n")
    with pytest.raises(ClipListError) as err:
        read_clip_list(tmp_path / "clips.csv")
    text = str(err.value)
    assert "clips.csv:2: empty caption" in text and "clips.csv:3: audio file" in text


def test_unreadable_audio_is_reported_before_the_database_changes(tiny_bundle, tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"junk")
    (tmp_path / "clips.jsonl").write_text('{"audio": "bad.wav", "caption": "broken"}\n')
    before = read_bundle_manifest(tiny_bundle).files
    with pytest.raises(ClipListError, match="clips.jsonl:1: .*unreadable audio"):
        add_clips(tiny_bundle, read_clip_list(tmp_path / "clips.jsonl"))
    assert read_bundle_manifest(tiny_bundle).files == before


def test_remove_counts_each_clip_once_and_add_warns_of_silence_and_duplicates(tiny_bundle, tmp_path, caplog):
    clips = tmp_path / "mine"
    clips.mkdir()
    _clip(clips, "a", 300, "a low tone")
    _clip(clips, "b", 300, "the same low tone")
    sf.write(clips / "quiet.wav", np.zeros(8000, np.float32), 8000)
    (clips / "quiet.txt").write_text("nothing at all")
    with caplog.at_level("WARNING"):
        add_clips(tiny_bundle, read_clip_list(clips))
    assert "quiet.wav is silent" in caplog.text and "b.wav has the same audio as clip 'a'" in caplog.text
    proc = subprocess.run(
        [*CLI, "db", "remove", "a", "a", "--bundle", str(tiny_bundle)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "removed 1; 20 clip(s) left" in proc.stdout


def test_db_changes_commit_with_one_rename_and_the_database_checks_itself(tiny_bundle, tmp_path):
    from reaudio.engine.bundle.manifest import BUNDLE_MANIFEST, BundleError

    before = (tiny_bundle / BUNDLE_MANIFEST).read_bytes()
    clips = tmp_path / "mine"
    clips.mkdir()
    _clip(clips, "a", 300, "a low tone")
    add_clips(tiny_bundle, read_clip_list(clips))
    assert (tiny_bundle / BUNDLE_MANIFEST).read_bytes() == before  # a kill at any point leaves a loadable bundle
    assert not any(rel.startswith("retrieval/") for rel in read_bundle_manifest(tiny_bundle).files)
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    keys = engine.db.generation / "keys.npy"
    data = bytearray(keys.read_bytes())
    data[-1] ^= 0xFF
    keys.write_bytes(bytes(data))
    with pytest.raises((BundleError, ValueError), match="keys.npy: checksum mismatch"):
        Engine.from_bundle(tiny_bundle, backend="cpu")


def test_repair_brings_back_a_bundle_an_older_db_add_left_half_done(tiny_bundle, tmp_path):
    import json as json_

    from reaudio.engine.bundle.manifest import BUNDLE_MANIFEST, hashed_files
    from reaudio.engine.retrieval.database import CHECKSUMS, RetrievalDB

    # An older reaudio hashed the database into manifest.json and changed it in two steps.
    manifest = json_.loads((tiny_bundle / BUNDLE_MANIFEST).read_text())
    manifest["files"] = hashed_files(tiny_bundle)
    (tiny_bundle / BUNDLE_MANIFEST).write_text(json_.dumps(manifest))
    db = RetrievalDB(tiny_bundle / "retrieval")
    db.remove([db.items[0]["id"]])  # ... killed before the rehash
    generation = RetrievalDB(tiny_bundle / "retrieval").generation
    (generation / CHECKSUMS).unlink()  # as an older one wrote it: no checksums, and db.json not saying it had them
    info = json_.loads((generation / "db.json").read_text())
    info.pop("checksummed")
    (generation / "db.json").write_text(json_.dumps(info))
    Engine.from_bundle(tiny_bundle, backend="cpu")  # loads: database files are not the manifest's business
    proc = subprocess.run([*CLI, "db", "repair", "--bundle", str(tiny_bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "17 clip(s) checksummed; manifest.json rewritten" in proc.stdout
    assert not any(
        k.startswith("retrieval/") for k in json_.loads((tiny_bundle / BUNDLE_MANIFEST).read_text())["files"]
    )
    assert (RetrievalDB(tiny_bundle / "retrieval").generation / CHECKSUMS).is_file()


def test_a_crafted_current_pointer_cannot_reach_out_of_its_bundle(tiny_bundle, tmp_path):
    from reaudio.engine.retrieval.database import CURRENT

    other = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, other)
    live = (other / "retrieval" / CURRENT).read_text().strip()
    (tiny_bundle / "retrieval" / CURRENT).write_text(f"../../other-bundle/retrieval/{live}\n")
    clips = tmp_path / "mine"
    clips.mkdir()
    _clip(clips, "a", 300, "a low tone")
    proc = subprocess.run([*CLI, "db", "add", str(clips), "--bundle", str(tiny_bundle)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a generation of this database" in proc.stderr, proc.stderr
    assert (other / "retrieval" / live / "db.json").is_file()  # the other bundle's live database is untouched
    with pytest.raises(ValueError, match="not a generation of this database"):
        Engine.from_bundle(tiny_bundle, backend="cpu")


def test_a_change_killed_between_its_rename_and_the_pointer_swap_is_recovered(tiny_bundle, tmp_path):
    from reaudio.engine.retrieval.database import CURRENT, RetrievalDB

    folder = tiny_bundle / "retrieval"
    live = (folder / CURRENT).read_text().strip()
    number = int(live.split("-")[1])
    # What a kill -9 leaves: the next generation renamed into place, CURRENT still naming the old one,
    # and an unfinished temporary folder of another writer.
    shutil.copytree(folder / live, folder / f"gen-{number + 1:06d}")
    (folder / f".gen-{number + 2:06d}.x1y2z3").mkdir()
    clips = tmp_path / "mine"
    clips.mkdir()
    _clip(clips, "a", 300, "a low tone")
    db = add_clips(tiny_bundle, read_clip_list(clips))  # was: "Directory not empty"
    assert len(db) == 19
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert names == [RetrievalDB(folder).generation.name]
    # db repair finds and removes such leftovers too.
    shutil.copytree(folder / names[0], folder / "gen-999999")
    proc = subprocess.run([*CLI, "db", "repair", "--bundle", str(tiny_bundle)], capture_output=True, text=True)
    assert proc.returncode == 0 and "removed 1 folder(s) a killed change left" in proc.stdout, proc.stderr
    assert not (folder / "gen-999999").exists()
