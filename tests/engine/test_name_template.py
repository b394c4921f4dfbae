"""--name-template cannot build paths outside the library (hostile-user audit, issue 16 item 1)."""

import pytest

from reaudio.engine.jobs.generate_job import GenerateJob, plan_clips
from reaudio.engine.jobs.library import check_template
from reaudio.engine.jobs.prompts import read_prompt_file


@pytest.mark.parametrize(
    "template",
    [
        "{id:/>{seed}.0}tmp{id:/>{seed}.0}{id}",  # nested spec: '/' padding per row
        "{id:.>{seed}.0}{id:/>{seed}.0}{id}",
        "{id.__class__}",
        "{id[0]}",
        "{id!r}",
        "{id:>300}",
        "",
        "{nope}",
        "../{id}",
        ".{id}",
        "{id",
    ],
)
def test_templates_beyond_bare_fields_are_refused(template):
    with pytest.raises(ValueError, match="--name-template"):
        check_template(template)


def test_every_planned_name_is_checked_before_any_work(tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,id,seed\nrain,pwned,1\n" + f"wind,{'w' * 120},2\n")
    rows = read_prompt_file(prompts)
    for template in ("{id:/>{seed}.0}tmp{id:/>{seed}.0}{id}", "{id:.>{seed}.0}{id:/>{seed}.0}{id}"):
        with pytest.raises(ValueError, match="not allowed"):
            plan_clips(GenerateJob(prompts, tmp_path / "lib", name_template=template), rows)
    # Bare fields, but the 120-character id three times passes 255 bytes: refused up front.
    with pytest.raises(ValueError, match="at most 255"):
        plan_clips(GenerateJob(prompts, tmp_path / "lib", name_template="{id}{id}{id}"), rows)
    names = [c.file_name for c in plan_clips(GenerateJob(prompts, tmp_path / "lib"), rows)]
    assert names == ["pwned-v0.wav", f"{'w' * 120}-v0.wav"]
    assert not (tmp_path / "lib").exists()  # planning writes nothing
