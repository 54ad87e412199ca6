"""Progress bars: one over tasks (the harness) and one inside a long ``learn``.

The harness opens an inner bar per task; :func:`advance` moves it. Agents that batch through
:func:`clbench.training.minibatches` advance it without doing anything; bars are silent when
stderr is not a terminal or when the run is quiet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tqdm.auto import tqdm

_inner: tqdm | None = None


@contextlib.contextmanager
def inner_bar(description: str, enabled: bool) -> Iterator[None]:
    """Show a bar of minibatches while the block runs (a no-op when not ``enabled``)."""
    global _inner
    if not enabled:
        yield
        return
    _inner = tqdm(desc=description, unit="batch", leave=False, disable=None, position=1)
    try:
        yield
    finally:
        _inner.close()
        _inner = None


def advance(steps: int = 1) -> None:
    """Count ``steps`` minibatches on the open inner bar, if any."""
    if _inner is not None:
        _inner.update(steps)
