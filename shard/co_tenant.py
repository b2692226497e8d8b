"""A co-tenant for the headroom scenario (`chameleon soak --co-tenant`, tests/reliability): a process
that takes N bytes of host memory (anonymous mmap, every page touched) or of CUDA memory (one tensor,
written), prints `ready <bytes> <seconds to take them>`, holds them until stdin closes or SIGTERM, and
exits 0. Run as `python -m shard.co_tenant BYTES [--device cpu|cuda]`; it lives in shard/ because the
CUDA variant needs torch.
"""

from __future__ import annotations

import argparse
import mmap
import signal
import sys
import threading
import time
from collections.abc import Sequence


def take_host(nbytes: int) -> mmap.mmap:
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    step = mmap.PAGESIZE
    for off in range(0, nbytes, step * 256):  # one write per page, in slices of 256 pages
        end = min(off + step * 256, nbytes)
        buf[off:end:step] = b"\x01" * len(range(off, end, step))
    return buf


def take_cuda(nbytes: int, device: str, chunk: int = 256 << 20, patience_s: float = 60.0) -> list[object]:
    """Chunks of device memory, written; a chunk that does not fit yet is retried (the shard is giving
    memory back) for up to `patience_s`, then the co-tenant keeps what it got."""
    import torch

    held: list[object] = []
    taken, deadline = 0, time.monotonic() + patience_s
    while taken < nbytes:
        n = min(chunk, nbytes - taken)
        try:
            t = torch.empty(n, dtype=torch.uint8, device=device)
        except torch.OutOfMemoryError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            continue
        t.fill_(1)
        held.append(t)
        taken += n
    torch.cuda.synchronize(device)
    print(f"took {taken} of {nbytes} device bytes", file=sys.stderr, flush=True)
    return held


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shard.co_tenant", description=__doc__.splitlines()[0])
    p.add_argument("nbytes", type=int, help="bytes to take")
    p.add_argument("--device", default="cpu", help="cpu, or a CUDA device (cuda, cuda:1)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    t0 = time.perf_counter()
    held = take_host(args.nbytes) if args.device == "cpu" else take_cuda(args.nbytes, args.device)
    print(f"ready {args.nbytes} {time.perf_counter() - t0:.3f}", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    del held
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
