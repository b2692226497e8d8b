"""A stand-in child for the launcher's unit tests: listens on a unix socket or a TCP port, then sleeps.

usage: standin.py unix PATH | tcp PORT  [--on-term FILE CHECK_SOCKET] [--exit-now CODE]
                                         [--listen-after SECONDS STARTED_FILE]

--on-term: at SIGTERM, write to FILE whether CHECK_SOCKET still accepts (i.e. the shards were still up
while the "router" drained), then exit 0. --exit-now: exit with CODE before listening.
--listen-after: write STARTED_FILE, then wait SECONDS before listening (a slow start).
"""

from __future__ import annotations

import signal
import socket
import sys
import time


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def main(argv: list[str]) -> int:
    kind, where, *rest = argv
    if "--exit-now" in rest:
        return int(rest[rest.index("--exit-now") + 1])
    if "--on-term" in rest:
        out, check = rest[rest.index("--on-term") + 1: rest.index("--on-term") + 3]

        def on_term(signum: int, frame: object) -> None:
            with open(out, "w") as fh:
                fh.write("shards-up" if _accepts(check) else "shards-down")
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_term)
    if "--listen-after" in rest:
        delay, started = rest[rest.index("--listen-after") + 1: rest.index("--listen-after") + 3]
        with open(started, "w") as fh:
            fh.write("started")
        time.sleep(float(delay))
    if kind == "unix":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(where)
    else:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", int(where)))
    server.listen(64)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
