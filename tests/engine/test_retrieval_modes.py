"""Caption, audio and hybrid neighbour search; clips added with captions are found by them;
natural durations from the neighbours."""

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.jobs.db_commands import add_clips, read_clip_list
from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.retrieval.database import DatabaseInfo, Items, RetrievalDB


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _db(folder, n=40, dim=16, caption_keys=True, seed=0, **info):
    rng = np.random.default_rng(seed)
    audio, caption = _unit(rng.normal(size=(n, dim))), _unit(rng.normal(size=(n, dim)))
    db = RetrievalDB.create(
        folder,
        DatabaseInfo(
            key="audio",
            embed_dim=dim,
            audio_tokens=2,
            audio_dim=4,
            caption_tokens=3,
            caption_dim=4,
            caption_keys=caption_keys,
            **info,
        ),
    )
    items = Items(
        [{"id": f"i{r}", "caption": f"c{r}"} for r in range(n)],
        audio,
        np.zeros((n, 2, 4), np.float32),
        np.zeros((n, 3, 4), np.float32),
        np.ones((n, 3), bool),
        caption if caption_keys else None,
    )
    return db.add(items), audio, caption


def test_the_same_database_builds_the_same_hnsw_index(tmp_path):
    # A multi-threaded usearch build links the graph in a different order each run.
    extra = {"exact_threshold": 1, "index": "hnsw", "index_mode": "hybrid"}
    first, _, _ = _db(tmp_path / "a", n=400, hybrid_weight=0.3, **extra)
    second, _, _ = _db(tmp_path / "b", n=400, hybrid_weight=0.3, **extra)
    a, b = (db.generation / "index.usearch" for db in (first, second))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("index", ["exact", "hnsw", "ivf"])
def test_each_mode_ranks_by_its_own_score(tmp_path, index):
    extra = {} if index == "exact" else {"exact_threshold": 1, "index": index, "ivf_probe": 64, "index_mode": "hybrid"}
    db, audio, caption = _db(tmp_path / "db", hybrid_weight=0.3, **extra)
    queries = _unit(np.random.default_rng(1).normal(size=(8, 16)))
    expected = {
        "audio": queries @ audio.T,
        "caption": queries @ caption.T,
        "hybrid": queries @ (0.3 * audio + 0.7 * caption).T,
    }
    for mode, scores in expected.items():
        top = db.search(queries, 3, mode=mode)
        # fp16 storage: compare against the scores of the stored keys
        np.testing.assert_array_equal(top[:, 0], np.argmax(scores, axis=1), err_msg=mode)
    assert not np.array_equal(db.search(queries, 1, mode="audio"), db.search(queries, 1, mode="caption"))


def test_a_mode_the_database_lacks_is_refused_with_the_fix(tmp_path):
    db, _, _ = _db(tmp_path / "db", caption_keys=False)
    assert db.info.modes == ("audio",)
    with pytest.raises(ValueError, match="retrieval mode 'caption' not offered.*has: audio.*rebuild"):
        db.search(np.ones((1, 16), np.float32), 1, mode="caption")
    with pytest.raises(ValueError, match="index_mode='hybrid'"):
        DatabaseInfo(
            key="audio", embed_dim=4, audio_tokens=1, audio_dim=1, caption_tokens=1, caption_dim=1, index_mode="hybrid"
        )


def test_clips_added_with_captions_are_found_by_their_captions(tiny_bundle, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    things = [
        "kettle",
        "doorbell",
        "typewriter",
        "bicycle bell",
        "ship horn",
        "owl",
        "cuckoo clock",
        "gong",
        "frog",
        "vacuum cleaner",
        "hair dryer",
        "church bell",
        "snoring",
        "applause",
        "camera shutter",
        "zipper",
        "sneeze",
        "rooster",
        "chainsaw",
        "cash register",
    ]
    rng = np.random.default_rng(0)
    for i, thing in enumerate(things):
        sf.write(folder / f"c{i}.wav", (0.3 * rng.normal(size=6000)).astype(np.float32), 8000)
        (folder / f"c{i}.txt").write_text(f"a recording of a {thing}")
    add_clips(tiny_bundle, read_clip_list(folder))
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    assert engine.db.info.modes == ("caption", "audio", "hybrid")
    captions = [f"a recording of a {thing}" for thing in things]
    emb, _, _ = engine.embed_text(captions)
    found = engine.db.item_ids(engine.db.search(emb, 1, mode="caption"))
    hits = sum(row == [f"c{i}"] for i, row in enumerate(found))
    assert hits / len(things) >= 0.9
    (result,) = engine.generate([Request(captions[3], k=1, duration=1.0, retrieval="caption")])
    assert result.neighbours[0]["id"] == "c3"


def test_request_retrieval_mode_is_validated(tiny_bundle):
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    with pytest.raises(
        ValueError, match="request 0: retrieval='lyrics'; this bundle's database offers caption, audio, hybrid"
    ):
        engine.generate([Request("a beep", retrieval="lyrics")])


def test_without_a_duration_a_clip_takes_its_neighbours_length(tiny_bundle):
    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    sr, longest = engine.sample_rate, engine.manifest.defaults.duration
    emb, _, _ = engine.embed_text(["a short high beep"])
    rows = engine.db.search(emb, engine.manifest.retrieval.k)
    median = float(np.median([engine.db.items[r]["duration"] for r in rows[0]]))
    assert median < longest
    natural, explicit, none = engine.generate(
        [
            Request("a short high beep"),
            Request("a short high beep", duration=longest),
            Request("a short high beep", k=0),
        ]
    )
    assert len(explicit.waveform) == round(longest * sr)
    assert len(none.waveform) == round(longest * sr)  # k = 0: no neighbours, the bundle's default
    assert len(natural.waveform) <= round(median * sr)


def test_trailing_silence_is_trimmed_with_a_fade():
    from reaudio.engine.audio.postprocess import trim_tail

    sr = 8000
    wav = np.zeros(4 * sr, np.float32)
    wav[: sr // 2] = 0.5 * np.sin(np.arange(sr // 2) * 0.3)
    wav[sr // 2 : sr] = 1e-4  # -74 dB below the tone: near-silence
    out = trim_tail(wav, sr)
    assert sr // 2 <= len(out) <= sr // 2 + 2 * int(0.05 * sr)
    assert out[-1] == 0.0 and np.array_equal(out[: sr // 4], wav[: sr // 4])
    assert len(trim_tail(np.zeros(sr, np.float32), sr)) == sr  # silence: nothing to measure against
    click = np.zeros(sr, np.float32)
    click[10] = 1.0
    assert len(trim_tail(click, sr)) == int(0.25 * sr)  # never shorter than a quarter second


def test_concurrent_adds_lose_nothing(tmp_path):
    import multiprocessing

    _db(tmp_path / "db", n=4)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(str(tmp_path / "db"), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = RetrievalDB(tmp_path / "db")
    assert len(db) == 4 + 3 * 5 and len({i["id"] for i in db.items}) == len(db)


def _add_many(folder: str, worker: int) -> None:
    rng = np.random.default_rng(worker)
    for j in range(5):
        db = RetrievalDB(folder)  # opened before the others' changes land: a stale view
        keys = _unit(rng.normal(size=(1, 16)))
        db.add(
            Items(
                [{"id": f"w{worker}-{j}", "caption": "x"}],
                keys,
                np.zeros((1, 2, 4), np.float32),
                np.zeros((1, 3, 4), np.float32),
                np.ones((1, 3), bool),
                keys,
            )
        )
