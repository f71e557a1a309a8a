"""A model factory that kills the process loading it (SIGKILL, as the OOM killer would), after noting
its pid to the file `log`: the sweep tests use it to kill a worker in the middle of a point."""
import os
import signal
from pathlib import Path


def KilledWhileLoading(log: str):
    with open(Path(log), "a") as fh:
        fh.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
