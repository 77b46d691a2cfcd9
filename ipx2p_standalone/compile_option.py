"""``--compile`` (fast mode) for every command that loads models, and the spinner shown while a compile runs.

A command adds the flag with :func:`add_compile_argument` and, when it is set, calls :func:`show_compile_progress`
once before loading; then it passes ``fast=args.compile`` to ``load_model`` (edit, sweep, chain, batch) or sets
``host.compile_models`` (run, studio: every Load Model node compiles).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from typing import TextIO

COMPILE_HELP = ("fast mode: compile the UNet with torch.compile (the first run on a machine spends minutes compiling, "
                "later runs load the compiled code from the cache folder, $IPX2P_COMPILE_CACHE or "
                "~/.cache/ipx2p/compile); worth it for many edits with one model")


def add_compile_argument(parser, help: str = COMPILE_HELP) -> None:
    parser.add_argument("--compile", action="store_true", help=help)


class Spinner:
    """``message`` with a turning wheel and the seconds elapsed, on one terminal line; a plain line elsewhere."""

    FRAMES = "|/-\\"

    def __init__(self, message: str, stream: TextIO | None = None, interval: float = 0.25):
        self.message, self.stream, self.interval = message, stream or sys.stderr, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _spin(self) -> None:
        for frame in itertools.cycle(self.FRAMES):
            if self._stop.wait(self.interval):
                return
            elapsed = time.perf_counter() - self._start
            self.stream.write(f"\r{frame} {self.message} {elapsed:4.0f} s")
            self.stream.flush()

    def __enter__(self) -> "Spinner":
        self._start = time.perf_counter()
        if self._tty():
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        else:
            print(f"{self.message} ...", file=self.stream, flush=True)
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self._start
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\033[K")
        print(f"{self.message.split(' (')[0]}: done in {elapsed:.0f} s", file=self.stream, flush=True)


def show_compile_progress(quiet: bool = False, stream: TextIO | None = None) -> None:
    """Announce compiles in this process on stderr: a spinner while one runs (nothing when ``quiet``)."""
    from ipx2p_core import fast

    if quiet:
        fast.set_compile_notice(lambda _message: contextlib.nullcontext())
        return

    fast.set_compile_notice(lambda message: Spinner(message, stream))
