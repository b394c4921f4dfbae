"""The engine's plug-in points: what the installed packages above it add, found through entry points.

The engine never names the packages above it (a test checks that no engine module imports them, by
statement or by ``import_module``). They declare themselves in ``pyproject.toml``:

- ``reaudio.commands``: callables ``register(sub, common, tables)`` that add subcommands to
  ``reaudio``. ``tables`` maps a command's name to what later plug-ins may extend (the engine puts
  ``db``'s action table there). A plug-in that extends another's commands names it in its
  ``after`` attribute; otherwise they run in name order.
- ``reaudio.default_model``, name ``assemble``: ``assemble(pack, out, overwrite=...)`` builds the
  default model's bundle from its pack (the export side, which needs torch).

A plug-in whose module cannot be imported here (a partial install) is skipped with a debug log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

log = logging.getLogger(__name__)

COMMANDS = "reaudio.commands"
DEFAULT_MODEL = "reaudio.default_model"


def _load(point: EntryPoint) -> Callable | None:
    try:
        return point.load()
    except ImportError as exc:
        log.debug("plug-in %s (%s) not available: %s", point.name, point.value, exc)
        return None


def command_plugins() -> list[tuple[str, Callable]]:
    """The installed ``reaudio.commands`` plug-ins as (name, register), each after those it extends."""
    loaded = [(p.name, fn) for p in sorted(entry_points(group=COMMANDS), key=lambda p: p.name) if (fn := _load(p))]
    ordered: list[tuple[str, Callable]] = []
    pending = list(loaded)
    while pending:
        ready = [item for item in pending if set(getattr(item[1], "after", ())) <= {n for n, _ in ordered}]
        if not ready:
            # What a plug-in extends is not installed: register the rest anyway, in name order; the
            # missing table raises a KeyError naming it.
            ready = pending[:1]
        ordered.append(ready[0])
        pending.remove(ready[0])
    return ordered


def default_model_assembler() -> Callable | None:
    """The installed ``assemble`` of the default model, or None where no package provides it."""
    for point in entry_points(group=DEFAULT_MODEL, name="assemble"):
        if (assemble := _load(point)) is not None:
            return assemble
    return None
