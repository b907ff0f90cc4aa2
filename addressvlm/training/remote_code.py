"""Loading a release's hub code (``trust_remote_code=True``) under our pinned torch.

MiniCPM-V 2.6's ``resampler.py`` annotates with ``List`` without importing it: the name used to arrive through its
``from torch.nn.functional import *``, and torch.nn.functional no longer carries it (torch 2.14 keeps ``Optional``
but not ``List`` or ``Tuple``), so importing the release fails with ``NameError: name 'List' is not defined``.
``hub_code_names`` lends torch.nn.functional the typing names such code expects for the duration of one load and
takes them back afterwards; the hub code keeps what it imported, and nothing else in the process sees a change.
"""
from __future__ import annotations

import typing
from contextlib import contextmanager
from typing import Iterator

# The typing names star-imported from torch.nn.functional by hub code written against torch <= 2.5.
LENT_NAMES = ("List", "Tuple", "Dict", "Union", "Callable", "Optional")


@contextmanager
def hub_code_names() -> Iterator[list[str]]:
    """Within the block, ``from torch.nn.functional import *`` also yields the names of ``LENT_NAMES`` that torch no
    longer exports; yields the names it lent."""
    import torch.nn.functional as functional

    lent = [name for name in LENT_NAMES if not hasattr(functional, name)]
    exported = getattr(functional, "__all__", None)
    for name in lent:
        setattr(functional, name, getattr(typing, name))
        if exported is not None:
            exported.append(name)
    try:
        yield lent
    finally:
        for name in lent:
            delattr(functional, name)
            if exported is not None:
                exported.remove(name)
