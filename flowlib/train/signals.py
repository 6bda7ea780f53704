"""Ctrl-C and SIGTERM during a training run: stop at a step boundary, or abort at once.

>>> with StopRequests() as stop:
...     stop.stop
False
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

__all__ = ["StopRequests"]


class StopRequests:
    """Ctrl-C / SIGTERM handling with exact semantics at any moment.

    * First Ctrl-C or SIGTERM: ``stop`` becomes True; the loop stops at the next step boundary
      and writes ``last.pt`` there (step, data order and RNG all taken at that boundary).
    * A second Ctrl-C raises ``KeyboardInterrupt`` at once: the run aborts and writes nothing
      more. Inside :meth:`protect` (a checkpoint write) it is deferred to the end of the write,
      so the file on disk and what the message says about it always agree.
    * :meth:`finishing` (after the last step): any signal raises ``KeyboardInterrupt`` at once;
      ``last.pt`` is complete and ``--resume`` redoes the final evaluation.
    * ``quiet`` (closing files at the very end): signals are ignored, everything is written.

    Handlers are installed only from the main thread; elsewhere nothing changes. A context
    manager: leaving the block puts the previous handlers back.
    """

    def __init__(self):
        self.stop, self.critical, self.abort_pending, self.final = False, False, False, False
        self.started, self.quiet = False, False  # the training loop has begun / the run is closing
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            for s in self.old:
                signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if self.quiet:
            return
        if self.final:
            raise KeyboardInterrupt
        if self.stop:
            if signum != signal.SIGINT:
                return  # already stopping
            if self.critical:
                self.abort_pending = True
                return
            raise KeyboardInterrupt
        self.stop = True
        print(
            f"\n{signal.Signals(signum).name}: stopping at the next step boundary and saving last.pt there "
            "(Ctrl-C again to abort at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def protect(self):
        """A second Ctrl-C inside waits until the block (a checkpoint write and its bookkeeping) is done."""
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.abort_pending:
            raise KeyboardInterrupt

    def finishing(self) -> None:
        self.final = True
        if self.abort_pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old = {}

    def __enter__(self) -> StopRequests:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
