"""What the co-tenant scenario runs beside the co-tenant: a steady closed-loop load over HTTP
(`SteadyLoad`: a few clients, each sending the next request when its last one answered, cycling over
the adapters) and a `Sampler` recording, every `every_s`, each process's resident memory, gauges such
as the cgroup's working set or the host's MemAvailable, and the router's pool figures (the report's
memory-over-time table and the README figure).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chameleon.tools.bench.soak_watch import read_metrics, rss_bytes


@dataclass(slots=True)
class LoadCounts:
    sent: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)


class SteadyLoad:
    """`clients` threads posting /generate (max_new_tokens tokens), adapters in turn (None = base)."""

    def __init__(self, http_port: int, adapters: Sequence[str | None], clients: int = 2,
                 max_new_tokens: int = 8, timeout_s: float = 120.0) -> None:
        self.url = f"http://127.0.0.1:{http_port}/generate"
        self.adapters = list(adapters) or [None]
        self.clients, self.max_new, self.timeout_s = clients, max_new_tokens, timeout_s
        self.counts = LoadCounts()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for k in range(self.clients):
            t = threading.Thread(target=self._client, args=(k,), daemon=True, name=f"load-{k}")
            t.start()
            self._threads.append(t)

    def stop(self) -> LoadCounts:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        return self.counts

    def _client(self, k: int) -> None:
        i = k
        while not self._stop.is_set():
            adapter = self.adapters[i % len(self.adapters)]
            i += self.clients
            params: dict[str, object] = {"max_new_tokens": self.max_new}
            if adapter is not None:
                params["adapter_id"] = adapter
            body = json.dumps({"inputs": f"co-tenant load {i}", "parameters": params}).encode()
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            error = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except OSError as exc:
                error = type(exc).__name__
            with self._lock:
                self.counts.sent += 1
                if error is None:
                    self.counts.ok += 1
                else:
                    self.counts.failed[error] += 1


POOL_METRICS = {"budget_pages": "chameleon_cache_budget_pages",
                "allocated_pages": "chameleon_pool_allocated_pages",
                "pages_given_back": "chameleon_pool_pages_given_back_total",
                "resizes": "chameleon_pool_resizes_total", "resident_adapters": "chameleon_resident_adapters"}


class Sampler:
    """Samples every `every_s` in a thread: RSS of the named processes (`pids()` is asked each time, so
    a co-tenant that comes and goes is followed), each of `gauges` (name -> bytes: the cgroup's working
    set, the host's MemAvailable), the pool figures."""

    def __init__(self, metrics_url: str, pids: Callable[[], dict[str, int]],
                 gauges: dict[str, Callable[[], int]], every_s: float = 0.5) -> None:
        self.metrics_url, self.pids, self.gauges = metrics_url, pids, gauges
        self.every_s = every_s
        self.rows: list[dict[str, float]] = []
        self.origin = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        self._thread.join(30)
        return self.rows

    def sample(self) -> dict[str, float]:
        row: dict[str, float] = {"t": round(time.monotonic() - self.origin, 2)}
        for role, pid in self.pids().items():
            row[f"rss_{role}"] = float(rss_bytes(pid) or 0)
        for name, gauge in self.gauges.items():
            row[name] = float(gauge())
        try:
            m = read_metrics(self.metrics_url, timeout_s=5)
        except OSError:
            m = {}
        for key, name in POOL_METRICS.items():
            if name in m:
                row[key] = m[name]
        free = [v for k, v in m.items() if k.startswith("chameleon_shard_free_device_bytes{")]
        if free:
            row["free_min"] = min(free)
        return row

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rows.append(self.sample())
            self._stop.wait(self.every_s)
