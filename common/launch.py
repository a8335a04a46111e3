"""Run `python ARGV...` as a child of this small process; write the child's peak resident memory (KB) to file
descriptor FD and exit as it did.

    python common/launch.py FD 02_train.py --data ...

Linux keeps a process's memory high-water mark across exec, so a child started straight from a large process
(the submission, after its reranker stage) reports at least that process's peak as its own; forked from
here, the child's record starts from this process's few megabytes.
"""
from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    fd, argv = int(sys.argv[1]), sys.argv[2:]
    interrupt = signal.getsignal(signal.SIGINT)  # SIG_IGN when this command was started with Ctrl-C ignored
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child, which decides how to end
    pid = os.fork()
    if pid == 0:
        os.close(fd)  # the submission reads the pipe until this process alone is done with it
        signal.signal(signal.SIGINT, signal.SIG_IGN if interrupt == signal.SIG_IGN else signal.SIG_DFL)
        try:
            os.execv(sys.executable, [sys.executable, *argv])
        except OSError as e:
            print(f"error: cannot start {sys.executable}: {e}", file=sys.stderr, flush=True)
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    try:
        os.write(fd, str(usage.ru_maxrss).encode())
    except BrokenPipeError:  # the submission was stopped (Ctrl-C) and no longer reads
        pass
    os.close(fd)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # ended by a signal: end by the same one
        if -code != signal.SIGKILL:  # the one signal whose handler cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
