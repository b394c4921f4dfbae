"""The distribution installs everything under ``reaudio.*`` and exposes one console script."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr and "setuptools" in proc.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("reaudio-*.whl")
    return path


def test_wheel_installs_only_under_reaudio(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("reaudio-")}
    assert top == {"reaudio"}
    for package in ("engine", "models", "training", "export"):
        assert f"reaudio/{package}/__init__.py" in names
    assert not any(n.startswith("reaudio/tests") for n in names)


def test_wheel_holds_every_module_of_every_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [
        str(path)
        for package in ("engine", "models", "training", "export")
        for path in (ROOT / "src" / "reaudio" / package).rglob("*.py")
        if path.relative_to(ROOT / "src").as_posix() not in names
    ]
    assert missing == []
    assert "reaudio/engine/jobs/audition_page.html" in names
    assert "reaudio/training/data/sfx_captions.tsv" in names
    assert "reaudio/models/default_pack/pack.json" in names


def test_the_version_is_stated_once_and_read_by_the_build(wheel):
    import reaudio
    import reaudio.engine

    assert f"reaudio-{reaudio.__version__}-" in wheel.name
    assert reaudio.engine.__version__ == reaudio.__version__
    stated = [
        path
        for path in [ROOT / "pyproject.toml", *(ROOT / "src").rglob("*.py")]
        if '__version__ = "' in path.read_text(encoding="utf-8") or '\nversion = "' in path.read_text(encoding="utf-8")
    ]
    assert stated == [ROOT / "src" / "reaudio" / "__init__.py"]


def test_a_plain_checkout_imports_by_folder_path():
    """src/reaudio/engine is reaudio.engine: a checkout on the path imports without installing."""
    # -S: no site-packages, so no installed (or editable) reaudio can answer instead of the folder.
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); import reaudio.engine as m; print(m.__file__)"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "src" / "reaudio" / "engine" / "__init__.py"


def test_wheel_declares_the_console_script_and_runtime_only_base(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()
        entry = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "reaudio = reaudio.engine.cli:main" in entry
    base = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert base and not any("torch" in line or "transformers" in line for line in base)
    assert any("torch" in line and 'extra == "train"' in line for line in meta.splitlines())


def test_cli_lists_configs():
    proc = subprocess.run(
        [sys.executable, "-m", "reaudio", "configs", "tiny", "audioldm-s"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "audioldm-s" in proc.stdout and "tiny" in proc.stdout


def test_cli_reports_unknown_config_with_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "reaudio", "configs", "huge"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config 'huge'" in proc.stderr and "sfx-small" in proc.stderr
