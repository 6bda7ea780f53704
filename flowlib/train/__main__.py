"""``python -m flowlib.train``: Ctrl-C handling first, then the command line.

Until :func:`flowlib.train.train` installs its own handlers (stop at a step boundary, write
``last.pt``), a Ctrl-C or SIGTERM ends the process with exit code 130 and one line, also while
torch is still being imported (seconds): nothing has been written yet.
"""

import signal
import sys


def _before_training(signum, frame):
    print("aborted before training started: nothing was written", file=sys.stderr)
    raise SystemExit(130)


for _signal in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signal, _before_training)

from flowlib.train.command import main  # noqa: E402  (imports torch: after the handlers)

code = main()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C: no traceback while Python shuts down
signal.signal(signal.SIGTERM, signal.SIG_DFL)
sys.exit(code)
