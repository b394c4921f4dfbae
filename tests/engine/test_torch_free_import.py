"""The runtime engine must import with torch, transformers and the training side unavailable."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("torch", "transformers", "reaudio.models", "reaudio.training", "reaudio.export")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Blocker())
    import pkgutil, importlib
    import reaudio.engine as engine
    names = [m.name for m in pkgutil.walk_packages(engine.__path__, "reaudio.engine.")]
    for name in names:
        importlib.import_module(name)
    from reaudio.engine import Engine, Request, Result  # the public API, re-exported
    assert Engine.__module__ == Request.__module__ == Result.__module__ == "reaudio.engine.engine"
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
