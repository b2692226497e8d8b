"""`chameleon launch` end to end on the tiny model (`tiny_assets`, for speed; the demo model behaves the
same): router + 2 shard ranks (TP=2 over gloo); a request succeeds; SIGKILL of one rank fails the
request in flight with an error (not a hang) and requests succeed again once the group is back, with the
same router process; SIGTERM during a stream lets that stream finish and the launcher exit 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Child, chameleon, free_port

pytestmark = pytest.mark.slow
RECOVERY_S = 60.0  # the bound for serving again after a shard dies
HANG_S = 60.0  # a read that blocks this long counts as a hang
STARTUP_S = 300  # loading two ranks on a busy 2-core machine can take minutes: generous, not a bound


class Launched(Child):
    """A `chameleon launch` process; `port` is its router's HTTP port."""

    tail_chars = 6000

    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.port = port
        super().__init__(argv, log, name="launcher")


def _post(port: int, path: str, body: dict[str, Any], timeout: float = HANG_S) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _stream(port: int, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The SSE events of POST /generate_stream, as dicts; a read blocking HANG_S raises TimeoutError."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_S)
    try:
        conn.request("POST", "/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                yield json.loads(line[len("data:"):])
    finally:
        conn.close()


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of the direct children of `pid` (from /proc)."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out[int(entry.name)] = cmd
    return out


def _pids(launched: Launched, sub: str) -> list[int]:
    return sorted(p for p, cmd in _children(launched.proc.pid).items() if f"chameleon {sub}" in cmd)


@contextmanager
def _launch(tiny_assets: Path, sock_dir: Path, tmp_path: Path, *flags: str) -> Iterator[Launched]:
    """`chameleon launch` of the tiny model with 2 ranks and `flags`; healthy on entry, stopped on exit."""
    port, log = free_port(), tmp_path / "launch.log"
    argv = chameleon("launch", "--model-id", str(tiny_assets / "model"),
                     "--adapter-dir", str(tiny_assets / "adapters"), "--num-shard", "2", "--port", str(port),
                     "--grpc-port", str(free_port()), "--shard-uds-path", f"{sock_dir}/shard",
                     "--shard-args", "--threads 1", "--startup-timeout", str(STARTUP_S), *flags)
    handle = Launched(argv, log, port)
    try:
        handle.wait_http_ok(f"http://127.0.0.1:{port}/health", STARTUP_S + 60, poll_s=0.25)
        yield handle
    finally:
        handle.stop((signal.SIGINT, signal.SIGINT), grace_s=60)  # twice: no drain


@pytest.fixture
def launched(tiny_assets: Path, sock_dir: Path, tmp_path: Path) -> Iterator[Launched]:
    with _launch(tiny_assets, sock_dir, tmp_path, "--memory-budget", str(128 << 20),
                 "--max-batch-prefill-tokens", "256", "--drain-timeout", "60") as handle:
        yield handle


def _gen_body(tokens: int) -> dict[str, Any]:
    return {"inputs": "The quick brown fox", "parameters": {"max_new_tokens": tokens, "details": True}}


def test_shard_killed_fails_in_flight_then_serves_again(launched: Launched):
    status, body = _post(launched.port, "/generate", _gen_body(8))
    assert status == 200, body
    assert json.loads(body)["details"]["generated_tokens"] >= 1
    router_before, shards_before = _pids(launched, "router"), _pids(launched, "shard")
    assert len(router_before) == 1 and len(shards_before) == 2, launched.tail()

    events = _stream(launched.port, _gen_body(1000))
    first = next(events)
    assert first["token"]["text"] is not None
    os.kill(shards_before[1], signal.SIGKILL)
    rest = list(events)  # ends (error event or closed stream) instead of hanging
    assert rest and "error" in rest[-1], f"expected an error event, got {rest[-1:]}\n{launched.tail()}"
    assert rest[-1]["error"], rest[-1]

    deadline = time.monotonic() + RECOVERY_S
    while True:
        try:
            status, body = _post(launched.port, "/generate", _gen_body(8), timeout=RECOVERY_S)
        except (OSError, http.client.HTTPException) as exc:
            status, body = 0, str(exc).encode()
        if status == 200:
            break
        assert status in (0, 500, 503, 424, 429), body  # refused while the shards come back
        assert time.monotonic() < deadline, f"not serving after {RECOVERY_S:.0f}s:\n{launched.tail()}"
        time.sleep(0.5)
    assert _pids(launched, "router") == router_before, "the router must not be restarted"
    assert not set(_pids(launched, "shard")) & set(shards_before)


def _refused(launched: Launched) -> bool:
    """A new request is refused (503 while draining, or nothing listens any more)."""
    try:
        status, body = _post(launched.port, "/generate", _gen_body(1), timeout=HANG_S)
    except (ConnectionError, http.client.HTTPException):  # closed while the router stops
        return True
    assert status in (200, 503), f"{status} {body!r}\n{launched.tail()}"
    return status == 503


def test_sigterm_during_stream_lets_it_finish(launched: Launched):
    body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 200, "details": True}}
    kids = list(_children(launched.proc.pid))
    events = _stream(launched.port, body)
    first = next(events)
    launched.proc.send_signal(signal.SIGTERM)
    while not _refused(launched):  # accepted until the router has the SIGTERM, then refused
        time.sleep(0.05)
    rest = [first, *events]
    final = rest[-1]
    assert "error" not in final, f"{final}\n{launched.tail()}"
    assert final["generated_text"] is not None, final
    assert final["details"]["finish_reason"] in ("length", "eos_token"), final
    assert 1 <= final["details"]["generated_tokens"] <= len(rest)
    assert launched.proc.wait(180) == 0, launched.tail()
    assert len(kids) == 3 and all(_gone(pid) for pid in kids), launched.tail()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_no_limit_flags_derives_limits_from_the_model(tiny_assets: Path, sock_dir: Path, tmp_path: Path):
    """The tiny model has 2,048 positions (below TGI's 4,096 default): with no limit flags the launch
    derives max_total 2048, max_input 2047, prefill 2097 from config.json, warms up and serves."""
    max_pos = json.loads((tiny_assets / "model" / "config.json").read_text())["max_position_embeddings"]
    assert max_pos < 4096
    with _launch(tiny_assets, sock_dir, tmp_path, "--memory-budget", str(256 << 20)) as launched:
        status, body = _post(launched.port, "/generate", _gen_body(4))
        assert status == 200, body
        assert json.loads(body)["details"]["generated_tokens"] >= 1
        conn = http.client.HTTPConnection("127.0.0.1", launched.port, timeout=HANG_S)
        try:
            conn.request("GET", "/info")
            info = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert (info["max_total_tokens"], info["max_input_tokens"], info["max_batch_prefill_tokens"]) == \
            (max_pos, max_pos - 1, max_pos - 1 + 50), info
        assert "limits derived from config.json" in launched.log.read_text(errors="replace"), launched.tail()
