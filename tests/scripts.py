"""The repository's command-line scripts as modules, so a test calls a script's ``main`` in-process."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def script(relative: str) -> ModuleType:
    """The script at ``relative`` to the repository (e.g. ``eval/infer.py``), loaded as a module of its own."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
