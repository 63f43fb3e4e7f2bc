"""`python -m podnet.lab.guard LAB PID`: tear down a lab whose `lab up` died.

`lab up` starts this first, with a pipe on its stdin, and writes "done" when it
has finished (the lab is up, or it cleaned up after itself). If the pipe closes
without "done" (the `lab up` process was killed, even with SIGKILL), the guard
waits for the lock `lab up` held and removes everything the lab's state file
lists. It runs in its own session, so a Ctrl-C at the terminal does not reach it.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0]
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    data = b""
    try:
        while True:
            chunk = sys.stdin.buffer.read(64)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    if b"done" in data:
        return
    from .lab import Lab
    lab = Lab(name)
    if not lab.exists():
        return
    try:
        with lab.locked():
            lab.load()
            if lab.record.get("status") == "up":
                return
            lab._teardown()
    except Exception as e:            # nothing else can report it
        print(f"podnet lab guard: {name}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
