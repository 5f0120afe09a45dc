"""The suite's own error types.

Every error the suite raises on purpose is an :class:`InterpError`, so a caller can catch the suite's
refusals in one ``except`` clause and tell them from bugs. Each type also subclasses the built-in error a
Python user would expect (``ValueError`` for a bad value, ``TypeError`` for a wrong kind of object,
``KeyError`` for an unknown name, ``OSError`` for a file problem), so ``except ValueError`` keeps working.

Messages follow one pattern: the argument (or site, or file), what was wrong, and what to do instead::

    data: the array holds 3 NaN or infinite values (first at row 7); clean or drop those rows first
"""

from __future__ import annotations

__all__ = ["InterpError", "InputError", "InputTypeError", "InputIndexError", "SiteError", "StoreError",
           "NotFittedError", "InterpWarning"]  # noqa: F822 - NotFittedError is built on first use  # noqa: F822 - NotFittedError is built on first use


class InterpError(Exception):
    """Base class of every error the suite raises on purpose."""


class InputError(InterpError, ValueError):
    """A value the suite cannot use: wrong shape, empty, NaN, out of range, inconsistent settings."""


class InputIndexError(InterpError, IndexError):
    """An index (position, head, feature, class) out of range for the axis it selects from."""


class InputTypeError(InterpError, TypeError):
    """An object of a kind the suite does not accept where it was given."""


class SiteError(InterpError, KeyError):
    """An unknown or unusable site (or other name); the message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreError(InterpError, OSError):
    """A store or file on disk that cannot be read or written as asked; the message names the path."""


class InterpWarning(UserWarning):
    """Warnings the suite emits (a model analysed in train mode, a unit that never fires, ...)."""


def __getattr__(name: str) -> type:
    # NotFittedError subclasses scikit-learn's, which costs a second of import time: build it on first use,
    # so that ``interp --help`` and every module that never fits an estimator stay fast
    if name == "NotFittedError":
        from sklearn.exceptions import NotFittedError as SklearnNotFitted

        cls = type("NotFittedError", (InterpError, SklearnNotFitted), {
            "__doc__": "An estimator used before ``fit``; also scikit-learn's ``NotFittedError`` (a ValueError and "
                       "AttributeError).", "__module__": __name__})
        globals()["NotFittedError"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
