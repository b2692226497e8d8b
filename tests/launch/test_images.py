"""`make images` end to end: builds chameleon-router and chameleon-shard-cpu with buildah (from a local
debootstrapped base), then runs each image's ENTRYPOINT inside its filesystem with the environment of
docker/compose.yaml: the shard group serves the tiny demo model, the router reaches rank 0 over a unix
socket in a folder bound into both, and answers /health, /info and a /generate with an adapter; both
images' HEALTHCHECK commands pass; the router image has no torch, both run as uid 1000, and each is
under its stated size (README, "Run with Docker")."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from chameleon.tools.launch.plan import free_port
from tests.launch.buildah import Container, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # an uncached `make images` takes minutes
ROOT = Path(__file__).resolve().parents[2]
ROUTER_IMAGE = "localhost/chameleon-router"
SHARD_IMAGE = "localhost/chameleon-shard-cpu"
MiB = 1 << 20
ROUTER_MAX_BYTES = 400 * MiB  # the README states these bounds
SHARD_MAX_BYTES = 2048 * MiB
READY_S = 600.0  # bound on the wait for the shard group + router to answer /health


def _why_not_buildable() -> str | None:
    if os.geteuid() != 0:
        return "building images with buildah and debootstrap needs root"
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (`apt-get install buildah debootstrap`; .ci/run does)"
    return None


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`make images`, as a user runs it (the base and the layers are cached between runs)."""
    reason = _why_not_buildable()
    if reason:
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("images") / "make-images.log"
    with log.open("w") as out:
        done = subprocess.run(["make", "-C", str(ROOT), "images", f"PY={sys.executable}"], stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=2400)
    assert done.returncode == 0, log.read_text(errors="replace")[-8000:]


@dataclass
class Served:
    router: Container
    shard: Container
    router_env: dict[str, str]
    shard_env: dict[str, str]
    volumes: dict[Path, str]
    port: int
    adapter: str


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def _socket_folder(service: dict[str, Any]) -> str:
    (mount,) = [v for v in service["volumes"] if isinstance(v, str) and v.startswith("sockets:")]
    return mount.split(":")[1]


def _models_target(service: dict[str, Any]) -> str:
    (mount,) = [v for v in service["volumes"] if isinstance(v, dict) and v.get("type") == "bind"]
    return mount["target"] + (":ro" if mount.get("read_only") else "")


def _shared_folder(stack: ExitStack, prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    stack.callback(shutil.rmtree, path, True)
    path.chmod(0o777)  # the images' uid 1000 writes sockets here
    return path


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ready(port: int, procs: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead:
            break
        try:
            if _get(port, "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1.0)
    tails = "\n".join(f"--- {n} ---\n{p.read_text(errors='replace')[-4000:]}" for n, p in logs.items())
    pytest.fail(f"router did not answer /health within {READY_S:.0f} s (exited: {dead})\n{tails}")


@pytest.fixture(scope="module")
def served(images: None, tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    compose = _compose()["services"]
    logs_dir = tmp_path_factory.mktemp("served")
    with ExitStack() as stack:
        sockets = _shared_folder(stack, "chl-sock-")
        models = _shared_folder(stack, "chl-models-") / "m"
        shutil.copytree(tiny_assets, models)
        subprocess.run(["chmod", "-R", "a+rX", str(models.parent)], check=True)
        volumes = {sockets: _socket_folder(compose["shards"]), models: _models_target(compose["shards"])}
        # compose's environment, sized for the tiny model on a 2-core machine, ports free on this host
        shard_env = {k: str(v) for k, v in compose["shards"]["environment"].items()}
        shard_env |= {"SHARD_ARGS": "--threads 1", "MEMORY_BUDGET": str(128 * MiB)}
        port = free_port()
        router_env = {k: str(v) for k, v in compose["router"]["environment"].items()}
        router_env |= {"PORT": str(port), "GRPC_PORT": str(free_port()), "HOSTNAME": "127.0.0.1",
                       "MAX_BATCH_PREFILL_TOKENS": "256"}
        shard = Container.create(SHARD_IMAGE)
        stack.callback(shard.remove)
        router = Container.create(ROUTER_IMAGE)
        stack.callback(router.remove)
        logs = {"shards": logs_dir / "shards.log", "router": logs_dir / "router.log"}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for name, ctr, env in (("shards", shard, shard_env), ("router", router, router_env)):
            entry = [*ctr.config["Entrypoint"], *(ctr.config.get("Cmd") or [])]
            procs[name] = start(ctr.argv(entry, env, volumes), logs[name])
            stack.callback(stop, procs[name])
        _wait_ready(port, procs, logs)
        adapter = sorted(p.name for p in (tiny_assets / "adapters").iterdir() if p.is_dir())[0]
        yield Served(router, shard, router_env, shard_env, volumes, port, adapter)


def test_router_image_serves_the_shard_image_over_a_unix_socket(served: Served):
    status, body = _get(served.port, "/health")
    assert status == 200, body
    status, body = _get(served.port, "/info")
    assert status == 200, body
    assert json.loads(body)["model_id"]
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=120)
    try:
        request = {"inputs": "The quick brown fox",
                   "parameters": {"max_new_tokens": 4, "adapter_id": served.adapter, "details": True}}
        conn.request("POST", "/generate", json.dumps(request), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 200, body
    assert json.loads(body)["details"]["generated_tokens"] >= 1


def test_both_healthcheck_commands_pass(served: Served):
    for ctr, env in ((served.router, served.router_env), (served.shard, served.shard_env)):
        kind, *command = ctr.config["Healthcheck"]["Test"]
        assert kind == "CMD"
        done = ctr.run(command, env, served.volumes)
        assert done.returncode == 0, f"{ctr.image}: {done.stdout}{done.stderr}"


def test_images_run_as_uid_1000_router_has_no_torch_and_both_are_under_their_size(served: Served):
    for ctr in (served.router, served.shard):
        assert ctr.config["User"] == "1000:1000"
        assert ctr.run(["id", "-u"], {}, {}).stdout.strip() == "1000"
    probe = "import importlib.util as u; print(u.find_spec('torch') is not None)"
    assert served.router.run(["python", "-c", probe], {}, {}).stdout.strip() == "False"
    version = served.shard.run(["python", "-c", "import torch; print(torch.__version__)"], {}, {})
    assert version.stdout.startswith("2.13.0"), version.stdout + version.stderr  # Makefile TORCH_SPEC
    sizes = {ctr.image: ctr.rootfs_bytes() for ctr in (served.router, served.shard)}
    print("image sizes (MiB):", {name: round(size / MiB) for name, size in sizes.items()})
    assert sizes[ROUTER_IMAGE] < ROUTER_MAX_BYTES, sizes
    assert sizes[SHARD_IMAGE] < SHARD_MAX_BYTES, sizes
