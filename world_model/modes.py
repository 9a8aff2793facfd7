"""Training / eval mode of modules for the length of a block."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def module_mode(training: bool, *modules: nn.Module) -> Iterator[None]:
    """Switch modules to training (`True`) or eval mode for the block and restore their previous modes."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.train(training)
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def eval_mode(*modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """`module_mode(False, ...)`: no dropout inside the block."""
    return module_mode(False, *modules)
