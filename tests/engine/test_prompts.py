import subprocess
import sys

import pytest

from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file


def _write(tmp_path, name, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_txt_skips_comments_and_blank_lines(tmp_path):
    path = _write(tmp_path, "p.txt", "# sounds\n\na dog barks\n  rain   on a roof  \n#x\n")
    rows = read_prompt_file(path)
    assert [(r.prompt, r.line) for r in rows] == [("a dog barks", 3), ("rain on a roof", 4)]
    assert rows[0].id.startswith("a-dog-barks-") and len(rows[0].id) == len("a-dog-barks-") + 8


def test_csv_with_optional_columns(tmp_path):
    path = _write(
        tmp_path,
        "p.csv",
        'prompt,id,seed,duration,steps,guidance,k,variations\n"a door, creaking",door,5,2.5,20,3,2,2\nwind,,,,,,,\n',
    )
    door, wind = read_prompt_file(path)
    assert (door.prompt, door.id, door.seed, door.duration, door.steps, door.guidance, door.k, door.variations) == (
        "a door, creaking",
        "door",
        5,
        2.5,
        20,
        3.0,
        2,
        2,
    )
    assert wind.seed is None and wind.duration is None and wind.line == 3


def test_jsonl(tmp_path):
    path = _write(tmp_path, "p.jsonl", '{"prompt": "thunder", "id": "t1", "seed": 3, "sampler": "dpmpp-2m"}\n\n')
    (row,) = read_prompt_file(path)
    assert (row.id, row.seed, row.sampler) == ("t1", 3, "dpmpp-2m")


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path):
    lines = [
        '{"prompt": "ok", "id": "a"}',
        '{"id": "b"}',  # 2 missing prompt
        '{"prompt": "x", "colour": "red"}',  # 3 unknown field
        '{"prompt": "x", "duration": -1}',  # 4 negative duration
        '{"prompt": "x", "duration": 0}',  # 5 zero duration
        '{"prompt": "x", "duration": 1e9}',  # 6 absurd duration
        '{"prompt": "x", "steps": 0}',  # 7 steps out of range
        '{"prompt": "x", "guidance": 500}',  # 8 guidance out of range
        '{"prompt": "ok again", "id": "a"}',  # 9 duplicate id
        '{"prompt": "' + "long " * 300 + '"}',  # 10 over-long prompt
        '{"prompt": "x", "steps": 2.5}',  # 11 not an integer
        "not json",  # 12
    ]
    path = _write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(path)
    text = str(err.value)
    for line, phrase in [
        (2, "missing or empty prompt"),
        (3, "unknown field(s) ['colour']"),
        (4, "duration=-1"),
        (5, "duration=0"),
        (6, "duration=1000000000.0"),
        (7, "steps=0"),
        (8, "guidance=500"),
        (9, "duplicate id 'a' (first on line 1)"),
        (10, "at most 1000"),
        (11, "must be an integer"),
        (12, "invalid JSON"),
    ]:
        assert f"bad.jsonl:{line}: " in text and phrase in text, (line, phrase)
    assert len(err.value.problems) == 11


def test_bad_utf8_is_reported_with_its_line(tmp_path):
    path = _write(tmp_path, "p.txt", b"fine\nbad \xff byte\n")
    with pytest.raises(PromptFileError, match=r"p.txt:2: not valid UTF-8"):
        read_prompt_file(path)


def test_csv_header_problems(tmp_path):
    with pytest.raises(PromptFileError, match=r"unknown column\(s\) \['volume'\]"):
        read_prompt_file(_write(tmp_path, "a.csv", "prompt,volume\nx,3\n"))
    with pytest.raises(PromptFileError, match="no 'prompt' column"):
        read_prompt_file(_write(tmp_path, "b.csv", "id\nx\n"))
    with pytest.raises(PromptFileError, match=r"c.csv:3: 1 cells, the header has 2"):
        read_prompt_file(_write(tmp_path, "c.csv", "prompt,id\nx,a\ny\n"))


def test_unsafe_ids_and_unsupported_extension(tmp_path):
    with pytest.raises(PromptFileError, match="not usable in file names"):
        read_prompt_file(_write(tmp_path, "p.jsonl", '{"prompt": "x", "id": "../etc"}\n'))
    with pytest.raises(PromptFileError, match="use .txt, .csv or .jsonl"):
        read_prompt_file(_write(tmp_path, "p.yaml", "x"))


def test_cli_exits_2_before_any_work(tmp_path):
    path = _write(tmp_path, "p.jsonl", '{"prompt": "x", "steps": -3}\n{"prompt": ""}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reaudio.engine.cli",
            "generate",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--bundle",
            str(tmp_path / "no-such-bundle"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "p.jsonl:1: steps=-3" in proc.stderr and "p.jsonl:2: missing or empty prompt" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_seeds_keep_every_digit_up_to_the_documented_maximum(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(f"prompt,seed\nrain,{2**53 + 1}\nwind,{2**63 - 1}\nfire,4.0\n")
    assert [r.seed for r in read_prompt_file(path)] == [2**53 + 1, 2**63 - 1, 4]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(f'{{"prompt": "rain", "seed": {2**53 + 1}}}\n')
    assert read_prompt_file(jsonl)[0].seed == 2**53 + 1
    path.write_text(f"prompt,seed\nrain,{2**63}\nwind,1.5\n")
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(path)
    assert "p.csv:2: seed=" in str(err.value) and "p.csv:3: seed='1.5' must be an integer" in str(err.value)


def test_a_repeated_csv_column_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,prompt\nrain,wind\n")
    with pytest.raises(PromptFileError, match=r"p.csv:1: column\(s\) \['prompt'\] appear more than once"):
        read_prompt_file(path)


@pytest.mark.parametrize("reserved", ["CON", "nul", "com1", "aux.txt", "LPT9"])
def test_windows_reserved_ids_are_refused(tmp_path, reserved):
    path = tmp_path / "p.csv"
    path.write_text(f"prompt,id\nrain,{reserved}\nwind,console\n")
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(path)
    assert f"p.csv:2: id {reserved!r} is a reserved device name on Windows" in str(err.value)
    assert "p.csv:3" not in str(err.value)  # 'console' is fine


def test_txt_ids_follow_the_prompt_not_its_line(tmp_path):
    first = read_prompt_file(_write(tmp_path, "a.txt", "rain\nwind\nrain\n"))
    edited = read_prompt_file(_write(tmp_path, "b.txt", "thunder\nrain\nwind\nrain\n"))
    assert [r.id for r in first] == [r.id for r in edited[1:]]  # an inserted line renames nothing
    assert first[2].id == first[0].id + "-2"  # a repeated prompt is numbered
    assert len({r.id for r in edited}) == 4
