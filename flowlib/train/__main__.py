"""``python -m flowlib.train``: Ctrl-C handling first, then the command line.

Until :func:`flowlib.train.train` installs its own handlers (stop at a step boundary, write
``last.pt``), a Ctrl-C or SIGTERM ends the process at once with exit code 130 and one line, also
while torch is still being imported (seconds): nothing has been written or locked yet.
"""

import os
import signal
import sys


def _before_training(signum, frame):
    # Exit at once, without unwinding: an exception raised here could land inside torch's C++
    # start-up and come back as a traceback; nothing is open or locked before train() runs.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C changes nothing
    print("aborted before training started: nothing was written", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


for _signal in (signal.SIGINT, signal.SIGTERM):
    signal.signal(_signal, _before_training)

from flowlib.train.command import main  # noqa: E402  (imports torch: after the handlers)

code = main()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C: no traceback while Python shuts down
signal.signal(signal.SIGTERM, signal.SIG_DFL)
sys.exit(code)
