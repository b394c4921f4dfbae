"""The Debian sound-effect corpus builder on a synthetic package tree (no apt, no network)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from reaudio.training.data import read_corpus
from reaudio.training.sfx_captions import CaptionMap, tuxpaint_caption
from reaudio.training.sfx_corpus import (
    CorpusConfig,
    CorpusError,
    build_corpus,
    fetch_package,
    segments,
)
from reaudio.training.sfx_sources import SourceFile, drop_reason, lookup_keys, stem_label

RATE = 22050


def _tone(path: Path, seconds: float, rate: int = 44100, amplitude: float = 0.3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), amplitude * np.sin(2 * np.pi * 440 * t), rate)


def test_stem_labels_drop_numbering_and_expand_abbreviations():
    assert stem_label("fs_grass3.ogg") == "footstep_grass"
    assert stem_label("sel_barracks.ogg") == "select_barracks"
    assert stem_label("con_saw_01.ogg") == "construction_saw"
    assert stem_label("Footstep_Gravel_Running.ogg") == "footstep_gravel_running"
    assert stem_label("behemoth_attack1g.wav") == "behemoth_attack"
    assert stem_label("swordhit_12.ogg") == "swordhit"


def test_music_and_voice_are_dropped_effects_kept():
    assert drop_reason(SourceFile("0ad-data", "public.zip", "audio/music/Along_the_Nile.ogg")) == "music"
    assert drop_reason(SourceFile("0ad-data", "public.zip", "audio/voice/greek/civ/civ_female_attack_1.ogg")) == "voice"
    assert drop_reason(SourceFile("megaglest-data", "units/archer/sounds/archer_ack5.wav")) == "voice"
    assert drop_reason(SourceFile("megaglest-data", "units/archer/sounds/archer_select7.wav")) == "voice"
    assert drop_reason(SourceFile("hedgewars-data", "Data/Sounds/voices/Pirate/Yessir.ogg")) == "voice"
    assert drop_reason(SourceFile("tuxpaint-stamps-default", "stamps/animals/badger_desc_fr.ogg")) == "voice"
    assert drop_reason(SourceFile("0ad-data", "public.zip", "audio/actor/singlesteps/fs_grass1.ogg")) is None
    assert drop_reason(SourceFile("megaglest-data", "units/archer/sounds/archer_attack1.wav")) is None


def test_curated_map_loads_and_resolves_specific_keys_before_prefixes():
    captions = CaptionMap.load()
    assert len(captions) > 500
    grass = captions.lookup(SourceFile("0ad-data", "public.zip", "audio/actor/singlesteps/fs_grass1.ogg"))
    assert grass.label == "footsteps_grass" and all("fs" not in c.split() for c in grass.captions)
    crackle = captions.lookup(SourceFile("0ad-data", "public.zip", "audio/attack/fire/c_11.ogg"))
    assert crackle.label == "fire_crackle"
    snare = captions.lookup(SourceFile("hydrogen-drumkits", "drumkits/Pearl/PearlSnare-Hard.wav"))
    assert snare.label == "snare_drum"
    assert captions.lookup(SourceFile("0ad-data", "public.zip", "audio/actor/nothing/zzqx_1.ogg")) is None


def test_map_errors_name_the_line_and_reject_copied_abbreviations():
    with pytest.raises(ValueError, match=r"m.tsv:2: expected 3"):
        CaptionMap.parse("# comment\nkey\tonly two\n", "m.tsv")
    with pytest.raises(ValueError, match=r"m.tsv:1: caption 'fs on grass' copies the abbreviation 'fs'"):
        CaptionMap.parse("footstep_grass\t-\tfs on grass\n", "m.tsv")
    with pytest.raises(ValueError, match="appears twice"):
        CaptionMap.parse("a\t-\tx\na\t-\ty\n", "m.tsv")


def test_tuxpaint_descriptions_become_captions(tmp_path):
    audio = tmp_path / "badger.ogg"
    (tmp_path / "badger.txt").write_text("A badger.\nfr.utf8=Un blaireau.\n", encoding="utf-8")
    entry = tuxpaint_caption(audio)
    assert entry.label == "badger" and entry.captions[0] == "the sound of a badger"
    assert tuxpaint_caption(tmp_path / "nothing.ogg") is None


def test_links_out_of_the_unpacked_package_are_not_followed(tmp_path):
    from reaudio.training.sfx_corpus import list_sources

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("The root password.\n")
    _tone(outside / "elsewhere.wav", 1.0)
    root = tmp_path / "unpacked" / "tuxpaint-stamps-default"
    stamps = root / "stamps"
    stamps.mkdir(parents=True)
    _tone(stamps / "badger.wav", 1.0)
    (stamps / "badger.txt").symlink_to(outside / "secret.txt")
    (stamps / "linked.wav").symlink_to(outside / "elsewhere.wav")
    assert [s.path for s in list_sources("tuxpaint-stamps-default", root)] == ["stamps/badger.wav"]
    assert tuxpaint_caption(stamps / "badger.wav", within=root) is None
    assert tuxpaint_caption(stamps / "badger.wav").captions[0] == "the sound of the root password"  # unguarded


def test_long_files_are_cut_and_short_tails_dropped():
    cfg = CorpusConfig(out=Path("."), sample_rate=100, clip_seconds=4.0, min_tail_seconds=1.0, max_segments=3)
    assert [len(s) for s in segments(np.zeros(900), cfg)] == [400, 400, 100]
    assert [len(s) for s in segments(np.zeros(850), cfg)] == [400, 400]
    assert len(segments(np.zeros(5000), cfg)) == 3
    assert [len(s) for s in segments(np.zeros(50), cfg)] == [50]


def _fake_packages(out: Path) -> None:
    root = out / "unpacked" / "0ad-data"
    debs = out / "debs"
    debs.mkdir(parents=True)
    (debs / "0ad-data_1_all.deb").write_bytes(b"")
    (debs / "sonic-pi-samples_1_all.deb").write_bytes(b"")
    scratch = out / "scratch"
    for name, seconds in [("fs_grass1", 1.0), ("fs_grass2", 1.2), ("wind_11", 9.5), ("fs_snow1", 0.1)]:
        _tone(scratch / f"{name}.wav", seconds)
    (root / "mods").mkdir(parents=True)
    with zipfile.ZipFile(root / "mods" / "public.zip", "w") as archive:
        archive.write(scratch / "fs_grass1.wav", "audio/actor/singlesteps/fs_grass1.wav")
        archive.write(scratch / "fs_grass2.wav", "audio/actor/singlesteps/fs_grass2.wav")
        archive.write(scratch / "fs_snow1.wav", "audio/actor/singlesteps/fs_snow1.wav")
        archive.write(scratch / "wind_11.wav", "audio/ambient/weather/wind_11.wav")
        archive.write(scratch / "fs_grass1.wav", "audio/music/Theme.wav")
        archive.writestr("audio/actor/singlesteps/fs_rock1.wav", b"not audio")
        archive.write(scratch / "fs_grass1.wav", "audio/actor/odd/zzqx_1.wav")
    sonic = out / "unpacked" / "sonic-pi-samples" / "samples"
    _tone(sonic / "misc_crow.flac", 1.0)
    sonic.mkdir(parents=True, exist_ok=True)
    sf.write(str(sonic / "perc_snap.flac"), np.zeros(RATE), RATE)  # silent


def test_build_corpus_end_to_end_and_resume(tmp_path):
    out = tmp_path / "corpus"
    _fake_packages(out)
    cfg = CorpusConfig(out=out, sample_rate=RATE, clip_seconds=4.0, packages=("0ad-data", "sonic-pi-samples"))
    report = build_corpus(cfg, progress=False)

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_label = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    assert sorted(by_label) == ["crow", "footsteps_grass", "wind"]
    assert len(by_label["wind"]) == 3  # 9.5 s → 4 + 4 + 1.5
    assert {r["source"] for r in by_label["wind"]} == {"0ad-data/mods/public.zip!audio/ambient/weather/wind_11.wav"}
    assert len({r["split"] for r in by_label["wind"]}) == 1  # segments never straddle splits
    for row in rows:
        info = sf.info(str(out / row["audio"]))
        assert info.samplerate == RATE and info.channels == 1
        assert abs(info.frames / RATE - row["duration"]) < 1e-3
        assert row["caption"] in row["captions"] and "fs" not in row["caption"].split()
    assert report["dropped"] == {"music": 1, "corrupt": 1, "shorter than 0.3 s": 1, "silent": 1}
    assert report["unknown_labels"] == {"0ad-data:zzqx": 1}
    assert report["clips"] == len(rows) == 6
    # Full-band copies beside the model-rate ones: same segment, the source's rate, its bandwidth measured.
    for row in rows:
        assert row["source_rate"] == 44100 and row["fullband_rate"] == 44100
        full, full_rate = sf.read(str(out / row["fullband"]))
        model_rate = sf.read(str(out / row["audio"]))[0]
        assert full_rate == 44100 and abs(len(full) / full_rate - len(model_rate) / RATE) < 1e-3
        assert abs(row["bandwidth_hz"] - 440) < 50  # a 440 Hz tone
    assert report["fullband_clips"] == 6
    assert len({r["id"] for r in rows}) == len(rows)
    assert len(read_corpus(out / "manifest.jsonl")) == 6  # the training side reads it

    # A rerun does no work: no file is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.flac")}
    again = build_corpus(cfg, progress=False)
    assert again == report
    assert {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.flac")} == stamps

    # An interrupted build (journal cut mid-way) redoes only what is missing.
    journal = out / "journal" / "0ad-data.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    assert build_corpus(cfg, progress=False) == report


def test_a_heldout_package_is_kept_out_of_training(tmp_path):
    out = tmp_path / "corpus"
    _fake_packages(out)
    cfg = CorpusConfig(
        out=out,
        sample_rate=RATE,
        clip_seconds=4.0,
        packages=("0ad-data", "sonic-pi-samples"),
        heldout=("sonic-pi-samples",),
    )
    report = build_corpus(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows if r["package"] == "sonic-pi-samples"} == {"heldout"}
    assert "heldout" not in {r["split"] for r in rows if r["package"] == "0ad-data"}
    assert report["splits"]["heldout"] == 1
    clips = read_corpus(out / "manifest.jsonl")
    assert [c.label for c in clips if c.split == "heldout"] == ["crow"]
    # The held-out set changes with the configuration alone: no rebuild of the journal.
    build_corpus(
        CorpusConfig(out=out, sample_rate=RATE, clip_seconds=4.0, packages=cfg.packages, heldout=()), progress=False
    )
    assert "heldout" not in {c.split for c in read_corpus(out / "manifest.jsonl")}


def test_missing_package_needs_apt(tmp_path, monkeypatch):
    from reaudio.training import sfx_corpus

    monkeypatch.setattr(sfx_corpus, "_APT_UPDATED", [])
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)

        class Result:
            returncode, stderr = 100, "E: Unable to locate package"

        return Result()

    with pytest.raises(CorpusError, match="(?s)apt-get download hedgewars-data failed.*apt-get update"):
        fetch_package("hedgewars-data", tmp_path, run=fake_run)
    # One `apt-get update` and a second try, then a clear error.
    assert calls == [
        ["apt-get", "download", "hedgewars-data"],
        ["apt-get", "update"],
        ["apt-get", "download", "hedgewars-data"],
    ]


def test_reserved_packages_are_refused_by_name_before_anything_is_fetched(tmp_path):
    from reaudio.training.sfx_sources import RESERVED_PACKAGES

    assert set(RESERVED_PACKAGES) == {"minetest-data", "widelands-data", "lincity-ng-data"}
    for name in RESERVED_PACKAGES:
        with pytest.raises(ValueError, match=f"{name} are reserved for an independent evaluation"):
            build_corpus(CorpusConfig(out=tmp_path / "c", packages=("0ad-data", name)), progress=False)
        with pytest.raises(ValueError, match="reserved"):
            build_corpus(CorpusConfig(out=tmp_path / "c", heldout=(name,)), progress=False)
        with pytest.raises(ValueError, match="reserved"):
            fetch_package(name, tmp_path / "debs", run=lambda *a, **k: pytest.fail("apt-get was called"))
    assert not (tmp_path / "c").exists() and not (tmp_path / "debs").exists()


def test_reserved_packages_are_refused_on_the_command_line(tmp_path, capsys):
    from reaudio.engine.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build-sfx", "--out", str(tmp_path / "c"), "--packages", "0ad-data", "widelands-data"])
    assert exit_info.value.code == 2
    assert "widelands-data are reserved for an independent evaluation" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_bandwidth_is_where_99_percent_of_the_energy_lies():
    from reaudio.training.sfx_corpus import bandwidth_hz

    rng = np.random.default_rng(0)
    noise = rng.standard_normal(44100).astype(np.float32)
    assert bandwidth_hz(noise, 44100) > 21000  # white: energy up to Nyquist
    spectrum = np.fft.rfft(noise)
    spectrum[np.fft.rfftfreq(len(noise), 1 / 44100) > 6000] = 0
    assert 5800 < bandwidth_hz(np.fft.irfft(spectrum, len(noise)), 44100) < 6100
    assert bandwidth_hz(np.zeros(100, np.float32), 44100) == 0.0


def test_unknown_package_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown package"):
        build_corpus(CorpusConfig(out=tmp_path, packages=("freeciv-data",)), progress=False)


def test_lookup_keys_are_most_specific_first():
    keys = lookup_keys(SourceFile("0ad-data", "public.zip", "audio/attack/fire/c_11.ogg"))
    assert keys == ("0ad-data:fire/c", "0ad-data:c", "c")
