"""A reaping init for one command, as ``docker run --init`` (tini) gives a container's main process.

Run as ``python tests/_init.py COMMAND [ARGS...]``: it makes itself the child subreaper (Linux
``PR_SET_CHILD_SUBREAPER``), so whatever its command leaves behind is re-parented to it and not to the
machine's PID 1; it reaps every such process, passes SIGTERM and SIGINT on to the command, and exits once the
last of them has ended, with the command's exit status (dying by the command's signal if it died by one).

Why the Flower deployment tests start each SuperLink and SuperNode under it: Flower's SuperExec and ClientApp
watch their parent with ``kill(pid, 0)``, which succeeds on a zombie. Under a PID 1 that never reaps, as in the
CI container, a SIGKILLed SuperNode's SuperExec stays a zombie and its ClientApp trains on for ever (found by
CI on 01744f8; reproduced by running the test under a subreaper that does not reap). A deployment needs an
init that reaps; this is that init for the tests.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(command: list[str]) -> None:
    if not command:
        sys.exit("usage: python tests/_init.py COMMAND [ARGS...]")
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"tests/_init.py: prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: child.poll() is None and child.send_signal(number))
    status = None
    while True:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:  # nothing left to reap
            break
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wait_status)
    if status is not None and status < 0:  # die as the command died
        if -status in (signal.SIGTERM, signal.SIGINT):
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status or 0)


if __name__ == "__main__":
    main(sys.argv[1:])
