"""`chameleon serve-ray` end to end: a local Ray cluster with 2 replicas of the tiny model behind Ray
Serve's HTTP proxy. Requests for several adapters get the same tokens as a single `chameleon launch`
system; each adapter sticks to one replica; a replica whose shard is killed is routed around while its
launcher restarts the shard group, and takes requests again once recovered; SIGTERM tears everything
down (Ray, replicas, their launchers, routers and shards)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.procs import (
    PREFILL,
    SHARD_BUDGET,
    Child,
    chameleon,
    free_port,
    make_adapter_dir,
    wait_until,
    workdir,
)

pytestmark = pytest.mark.slow

LAUNCH_ARGS = (f"--shard-args '--threads 1' --memory-budget {SHARD_BUDGET} "
               f"--max-batch-prefill-tokens {PREFILL}")
PROMPT = "scale me out"
MAX_NEW = 8


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    replica: str


def generate(url: str, adapter: str | None) -> Answer:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW, "adapter_id": adapter}}
    resp = requests.post(url + "/generate", json=body, timeout=120)
    text = resp.json().get("generated_text", "") if resp.status_code == 200 else resp.text
    return Answer(resp.status_code, text, resp.headers.get("x-chameleon-replica", ""))


def cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
    return out


def procs_of(marker: str, kind: str = "") -> dict[int, str]:
    """Our processes whose command line names `marker` (a replica's folder) and `kind`."""
    return {pid: c for pid, c in cmdlines().items() if marker in c and kind in c and pid != os.getpid()}


def router_url(replica_dir: Path) -> str:
    (cmd,) = procs_of(str(replica_dir), "chameleon router").values()
    args = cmd.split()
    return f"http://127.0.0.1:{args[args.index('--port') + 1]}"


def healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=30).status_code == 200
    except requests.RequestException:  # Ray's proxy may hold a request while the app deploys
        return False


@pytest.fixture(scope="module")
def setup(tiny_assets: Path) -> Iterator[tuple[Path, Path, list[str]]]:
    wd = workdir("cr-")
    names = make_adapter_dir(tiny_assets / "adapters", wd / "adapters", 20)
    yield wd, tiny_assets / "model", names
    shutil.rmtree(wd, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(setup: tuple[Path, Path, list[str]]) -> dict[str | None, str]:
    """The single-replica system's answers (plain `chameleon launch`, no Ray)."""
    wd, model, names = setup
    port = free_port()
    argv = chameleon("launch", "--model-id", str(model), "--adapter-dir", str(wd / "adapters"), "--port",
                     str(port), "--grpc-port", str(free_port()), "--shard-uds-path", str(wd / "ref"),
                     "--shard-args", "--threads 1", "--memory-budget", str(SHARD_BUDGET),
                     "--max-batch-prefill-tokens", str(PREFILL))
    single = Child(argv, wd / "ref.log", name="launch")
    try:
        single.wait_http_ok(f"http://127.0.0.1:{port}/health")
        answers = {a: generate(f"http://127.0.0.1:{port}", a) for a in [None, *names]}
    finally:
        single.stop()
    assert all(a.status == 200 for a in answers.values()), answers
    return {a: ans.text for a, ans in answers.items()}


def test_two_replicas_route_by_adapter_survive_a_shard_kill_and_tear_down(
        setup: tuple[Path, Path, list[str]], reference: dict[str | None, str]):
    wd, model, names = setup
    ray_dir, port = wd / "ray", free_port()
    url = f"http://127.0.0.1:{port}"
    argv = chameleon("serve-ray", "--replicas", "2", "--model-id", str(model), "--adapter-dir",
                     str(wd / "adapters"), "--port", str(port), "--workdir", str(ray_dir),
                     "--launch-args", LAUNCH_ARGS)
    serve = Child(argv, wd / "serve-ray.log", name="serve-ray")
    try:
        wait_until(lambda: healthy(url), "Ray Serve answers /health", child=serve, poll_s=0.5)
        first, later = names[:6], names[6:]
        seen = {a: generate(url, a) for a in [None, *first]}
        again = {a: generate(url, a) for a in first}
        for a in [None, *first]:
            assert (seen[a].status, seen[a].text) == (200, reference[a]), a
        assert {a: again[a].replica for a in first} == {a: seen[a].replica for a in first}  # affinity
        victim = seen[first[0]].replica
        victim_dir = ray_dir / victim
        shards = procs_of(f"{victim_dir}/s", "chameleon shard")
        assert shards, f"no shard of replica {victim}"
        for pid in shards:
            os.kill(pid, signal.SIGKILL)
        during = {a: generate(url, a) for a in first}
        for a in first:
            assert (during[a].status, during[a].text) == (200, reference[a]), a
        assert during[first[0]].replica != victim  # routed around the replica whose shard died
        wait_until(lambda: set(procs_of(f"{victim_dir}/s", "chameleon shard")) - set(shards) != set(),
                   "the victim's launcher restarted its shard", child=serve)
        wait_until(lambda: healthy(router_url(victim_dir)), "the victim's router recovered", child=serve)
        fresh = itertools.cycle(later)  # new adapters tie on both replicas: their rendezvous homes split them

        def lands_on_victim() -> bool:
            a = next(fresh)
            got = generate(url, a)
            assert (got.status, got.text) == (200, reference[a]), a
            return got.replica == victim

        wait_until(lands_on_victim, "the recovered replica takes requests again", child=serve, poll_s=0.5)
    finally:
        serve.stop(grace_s=90)
        leftovers = procs_of(str(ray_dir))
        for pid in leftovers:  # only ours: their command lines name this test's folder
            os.kill(pid, signal.SIGKILL)
    assert serve.proc.returncode == 0, serve.tail()
    assert not leftovers, f"left running after SIGTERM: {leftovers}"
