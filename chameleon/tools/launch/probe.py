"""`python -m chameleon.tools.launch.probe TARGET...`: exit 0 when every target answers
(container healthchecks).

TARGET is `unix:PATH` (a socket that accepts), `tcp:HOST:PORT` (a port that accepts), an http(s) URL
(answers 200), or one of two names read from the environment when the probe runs:
  router  = http://127.0.0.1:$PORT/health (PORT defaults to 3000)
  shards  = unix:$SHARD_UDS_PATH-N for N in 0..NUM_SHARD-1 (defaults /tmp/chameleon-server, 1)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from chameleon.tools.launch.procs import ProcSpec, endpoint_ready


def check(target: str, timeout: float = 3.0) -> str | None:
    """None when `target` answers, else why not."""
    if target.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(target, timeout=timeout) as reply:
                return None if reply.status == 200 else f"{target}: HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{target}: {exc}"
    kind, _, where = target.partition(":")
    if kind == "unix":
        spec = ProcSpec("probe", (), unix_socket=where)
    elif kind == "tcp":
        host, _, port = where.rpartition(":")
        if not port.isdigit():
            return f"{target}: expected tcp:HOST:PORT"
        spec = ProcSpec("probe", (), tcp=(host, int(port)))
    else:
        return f"{target}: expected unix:PATH, tcp:HOST:PORT or an http URL"
    return None if endpoint_ready(spec) else f"{target}: not accepting connections"


def expand(targets: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for target in targets:
        if target == "router":
            out.append(f"http://127.0.0.1:{environ.get('PORT') or '3000'}/health")
        elif target == "shards":
            prefix = environ.get("SHARD_UDS_PATH") or "/tmp/chameleon-server"
            out += [f"unix:{prefix}-{n}" for n in range(int(environ.get("NUM_SHARD") or "1"))]
        else:
            out.append(target)
    return out


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    problems = [p for p in (check(t) for t in expand(argv, os.environ)) if p]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
