"""The runtime engine must import with torch, transformers and the training side unavailable."""

import subprocess
import sys
import textwrap


def _blocking(*blocked: str) -> str:
    """Python source that makes importing any of ``blocked`` (and their submodules) fail."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"blocked import of {{name}}")
                return None

        sys.meta_path.insert(0, Blocker())
        """
    )


BLOCKER = _blocking("torch", "transformers", "reaudio.models", "reaudio.training", "reaudio.export") + textwrap.dedent(
    """
    import pkgutil, importlib
    import reaudio.engine as engine
    names = [m.name for m in pkgutil.walk_packages(engine.__path__, "reaudio.engine.")]
    for name in names:
        importlib.import_module(name)
    from reaudio.engine import Engine, Request, Result  # the public API, re-exported
    assert Engine.__module__ == Result.__module__ == "reaudio.engine.pipeline"
    assert Request.__module__ == "reaudio.engine.planning"
    leaked = [m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED)]
    assert not leaked, leaked
    print("imported", len(names), "engine modules")
    """
)


def test_engine_imports_without_torch_or_training_side():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    count = int(proc.stdout.split()[1])
    assert count >= 5  # cli, frontend, audio_io, schedule, text_tokenizer, …


def test_blocker_really_blocks_torch():
    # Guards the test above against a blocker that silently lets imports through.
    code = BLOCKER.split("import pkgutil")[0] + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked import of torch" in proc.stderr


# What a runtime-only install (pip install reaudio, no extras) lacks.
RUNTIME_ONLY = _blocking("torch", "transformers") + textwrap.dedent(
    """
    from reaudio.engine.cli import main  # the console script's entry point
    sys.exit(main(sys.argv[1:]))
    """
)


def _reaudio_without_torch(*args):
    return subprocess.run([sys.executable, "-c", RUNTIME_ONLY, *map(str, args)], capture_output=True, text=True)


def test_the_console_script_runs_without_torch(tiny_artifacts, tmp_path):
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["reaudio"] == "reaudio.engine.cli:main"
    shown = _reaudio_without_torch("--help")
    assert shown.returncode == 0 and "generate" in shown.stdout and "train" in shown.stdout
    prompts = tmp_path / "p.txt"
    prompts.write_text("a beep\n")
    made = _reaudio_without_torch(
        "generate", prompts, "--bundle", tiny_artifacts / "bundle", "--out", tmp_path / "lib", "--steps", "2", "-q"
    )
    assert made.returncode == 0, made.stderr
    assert len((tmp_path / "lib" / "library.jsonl").read_text().splitlines()) == 1
    train = _reaudio_without_torch(
        "train", "vae", "--config", "tiny", "--data", tmp_path / "m.jsonl", "--out", tmp_path / "run"
    )
    assert train.returncode != 0 and "needs torch: pip install 'reaudio[train]'" in train.stderr
    assert "Traceback" not in train.stderr
