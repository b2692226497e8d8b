"""Working containers of built images, run without a container engine: `buildah run --isolation chroot`
runs a command inside an image's filesystem with the image's user, environment and working folder,
and with host folders bound in (`podman run` needs cgroups that this sandbox does not give)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def buildah(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def image_config(image: str) -> dict[str, Any]:
    """The image's Docker config: Entrypoint, Env, User, Healthcheck, WorkingDir, ..."""
    return json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]


@dataclass
class Container:
    """A buildah working container of `image`; `remove()` unmounts and deletes it."""

    name: str
    image: str
    config: dict[str, Any]

    @classmethod
    def create(cls, image: str) -> Container:
        return cls(buildah("from", "--quiet", image).strip(), image, image_config(image))

    def argv(self, command: list[str], env: dict[str, str], volumes: dict[Path, str]) -> list[str]:
        """The host command line that runs `command` inside the container."""
        cmd = ["buildah", "run", "--isolation", "chroot"]
        for host, target in volumes.items():
            cmd += ["--volume", f"{host}:{target}"]
        for key, value in env.items():
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, self.name, "--", *command]

    def run(self, command: list[str], env: dict[str, str], volumes: dict[Path, str],
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(command, env, volumes), capture_output=True, text=True,
                              timeout=timeout)

    def rootfs_bytes(self) -> int:
        """Bytes of files in the container's filesystem (= the image's uncompressed size)."""
        root = Path(buildah("mount", self.name).strip())
        try:
            out = subprocess.run(["du", "-sb", "--one-file-system", str(root)], capture_output=True,
                                 text=True, check=True, timeout=300)
            return int(out.stdout.split()[0])
        finally:
            buildah("umount", self.name)

    def remove(self) -> None:
        subprocess.run(["buildah", "umount", self.name], capture_output=True, timeout=60)
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60)


def start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure no member of its group stays behind
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
