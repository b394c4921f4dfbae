"""The clip settings' one declaration: every surface is derived from it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import fields

import pytest

from reaudio.engine import settings
from reaudio.engine.jobs.generate_job import GenerateJob
from reaudio.engine.jobs.prompts import FIELDS, PromptRow
from reaudio.engine.planning import Request

# A setting declared in one place (settings.add), before anything derives from the schema; the
# script then reports what each surface made of it.
DUMMY = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from reaudio.engine import settings
    settings.add(settings.Setting("wobble", int, "how much to wobble", limits=(0, 9), legacy=0))

    from reaudio.engine.cli import build_parser
    from reaudio.engine.jobs import generate_job, prompts
    from reaudio.engine.jobs.ray_bulk import _FIELDS
    from reaudio.engine.planning import Request

    folder = Path(sys.argv[1])
    out = {}
    args = build_parser().parse_args(["generate", "p.txt", "--out", "o", "--wobble", "4"])
    out["flag"] = args.wobble
    job = generate_job.GenerateJob(prompts=folder / "p.jsonl", out=folder / "o", wobble=args.wobble)
    (folder / "p.jsonl").write_text('{"prompt": "a", "wobble": 7}\\n{"prompt": "b"}\\n{"prompt": "c", "wobble": 12}\\n')
    try:
        prompts.read_prompt_file(folder / "p.jsonl")
    except prompts.PromptFileError as exc:
        out["row_error"] = exc.problems
    (folder / "p.jsonl").write_text('{"prompt": "a", "wobble": 7}\\n{"prompt": "b"}\\n')
    rows = prompts.read_prompt_file(folder / "p.jsonl")
    out["rows"] = [row.wobble for row in rows]
    clips = generate_job.plan_clips(job, rows)
    out["requests"] = [generate_job.request_for(job, clip).wobble for clip in clips]
    out["ray_row"] = "wobble" in _FIELDS and "wobble" in {f for f in Request.__dataclass_fields__}
    out["resume_keys"] = "wobble" in settings.resume_keys()

    defaults = {"steps": 10, "guidance": 3.0, "sampler": "ddim", "k": 0, "strength": 0.6, "retrieval": ""}
    made = {"steps": 10, "guidance": 3.0, "sampler": "ddim", "k": 0}
    old = {"seed": clips[0].seed, "bundle_sha256": "h", "settings": made}
    out["resume"] = generate_job._differences(job, clips[0], old, defaults, "h")
    out["entry"] = generate_job.clip_settings(job, rows[1], {})["wobble"]
    print(json.dumps(out))
    """
)


def test_a_setting_declared_once_appears_on_every_surface(tmp_path):
    proc = subprocess.run([sys.executable, "-c", DUMMY, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["flag"] == 4  # generate --wobble
    assert seen["row_error"] == [f"{tmp_path / 'p.jsonl'}:3: wobble=12 is out of range; valid: 0 to 9"]
    assert seen["rows"] == [7, None]  # a prompt-file column
    assert seen["requests"] == [7, 4]  # the row wins over the job, else the job's value
    assert seen["ray_row"] and seen["resume_keys"]
    assert "wobble 0 → 7" in seen["resume"]  # an entry made before the setting existed holds its legacy value
    assert seen["entry"] == 4  # what a finished clip records


def test_the_installed_surfaces_follow_the_declaration():
    declared = {s.name for s in settings.SETTINGS}
    request = {f.name for f in fields(Request)} - {"prompt", "initial_latent", "id", "variation"}
    assert request == {s.name for s in settings.SETTINGS if s.request}
    assert set(FIELDS) - {"prompt", "id"} == {s.name for s in settings.SETTINGS if s.row}
    row = {f.name for f in fields(PromptRow)} - {"prompt", "id", "line", "id_from_text"}
    assert row == {s.name for s in settings.SETTINGS if s.row}
    job = {f.name for f in fields(GenerateJob)}
    assert {s.name for s in settings.SETTINGS if s.flag and not s.finish} <= job
    assert not ({s.name for s in settings.SETTINGS if s.finish} & job)  # those live in job.postprocess
    assert declared >= set(settings.resume_keys())


def test_values_are_parsed_and_checked_by_their_declaration():
    strength, loop, sampler = (settings.by_name()[n] for n in ("strength", "loop", "sampler"))
    assert settings.parse_value(strength, "0.5") == 0.5
    with pytest.raises(settings.SettingError, match=r"strength=0 must be in \(0, 1\]"):
        settings.parse_value(strength, 0)
    assert settings.parse_value(loop, "Yes") is True
    with pytest.raises(settings.SettingError, match="must be true or false"):
        settings.parse_value(loop, "maybe")
    with pytest.raises(settings.SettingError, match="valid: ddim, dpmpp-2m"):
        settings.parse_value(sampler, "euler")
    assert settings.parse_value(settings.by_name()["negative_prompt"], "  hum   and  hiss ") == "hum and hiss"
    with pytest.raises(ValueError, match="declared already"):
        settings.add(settings.Setting("steps", int, "again"))


def test_the_planner_checks_api_requests_by_the_same_declaration(tiny_bundle):
    from reaudio.engine.planning import Planner

    planner = Planner.for_bundle(tiny_bundle)
    for request, message in (
        (Request("x", steps=2.7), "request 0: steps=2.7 must be an integer"),
        (Request("x", guidance="high"), "request 0: guidance='high' must be a number"),
        (Request("x", loop="yes"), "request 0: loop='yes' must be true or false"),
        (Request("x", negative_prompt=3), "request 0: negative_prompt=3 must be text"),
        (Request("x", duration=601.0), "request 0: duration=601.0 is out of range"),
    ):
        with pytest.raises(ValueError, match=message):
            planner.resolve(request)
    assert planner.resolve(Request("x", steps=3, duration=1.0)).steps == 3
