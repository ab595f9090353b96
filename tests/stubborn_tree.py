"""A child that ignores SIGTERM and starts a grandchild that ignores it too.

Usage: stubborn_tree.py PIDS_FILE. Writes both process ids to PIDS_FILE, one a line,
then both sleep until killed.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1] != "--grandchild":
    grandchild = subprocess.Popen([sys.executable, __file__, "--grandchild"])
    pids = Path(sys.argv[1])
    partial = pids.with_name(pids.name + ".partial")
    partial.write_text(f"{os.getpid()}\n{grandchild.pid}\n")
    partial.rename(pids)
while True:
    time.sleep(1)
