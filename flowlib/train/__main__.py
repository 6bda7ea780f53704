"""``python -m flowlib.train``."""

import signal
import sys

from .command import main

code = main()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C: no traceback while Python shuts down
sys.exit(code)
