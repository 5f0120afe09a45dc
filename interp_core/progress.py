"""Progress bars under the suite's one convention: ``progress=True`` shows a bar, ``False`` hides it, ``None``
(the default of every long method) shows it on a terminal only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


class _Hidden:
    """A hidden bar: iterates what it wraps and counts ``update``s in ``n`` (as tqdm does); ``set_postfix`` and
    ``close`` do nothing."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable
        self.n: float = 0

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> _Hidden:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` shown per ``progress``. Hidden (``False``) means no tqdm object at all: a
    disabled one still costs ~0.1 ms to set up and close, a tenth of a small policy's patching sweep."""
    if progress is False:
        return _Hidden(iterable)
    return tqdm(iterable, disable=None if progress is None else not progress, **kwargs)
