"""The engine's one error type: every message says what was wrong, the value, and what would be right."""

from __future__ import annotations

import copy
from collections.abc import Mapping


class IP2PError(ValueError):
    """A bad input or a model that cannot be used. The process stays usable after it is raised.

    Where the fix is one of the engine's own arguments (``config``, ``device``), ``hint`` says it with ``{option}``
    in its place and ``option``/``value`` name it: hosts phrase it in their own words with :meth:`phrased` (the CLI
    as a flag, a node as its input), and the engine's own wording is the Python argument (``device='cpu'``).
    """

    def __init__(self, message: str, *, hint: str = "", option: str | None = None, value: str | None = None):
        self.message, self.hint, self.option, self.value = message, hint, option, value
        default = f"{option}={value!r}" if value is not None else f"{option}=..."
        super().__init__(self._text(default) if option else message)

    def _text(self, name: str) -> str:
        return f"{self.message} {self.hint.format(option=name)}" if self.hint else self.message

    def phrased(self, names: Mapping[str, str]) -> IP2PError:
        """The same error naming the fix as the host does: ``names`` maps an option to a phrase, in which
        ``{value}`` is the value to set, e.g. ``{"device": "--device {value}", "config": "--config DIR"}``."""
        if not self.option or self.option not in names:
            return self
        err = copy.copy(self)
        err.args = (self._text(names[self.option].format(value=self.value)),)
        return err


class Cancelled(RuntimeError):
    """Sampling stopped between steps because the cancel check asked for it; no state was left half-done."""
