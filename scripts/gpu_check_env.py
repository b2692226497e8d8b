"""Stage `env` of scripts/gpu_check.sh: versions and the device, as JSON (argv[1]); never fails on a
missing package (it is reported as null)."""

from __future__ import annotations

import importlib
import json
import platform
import sys
from pathlib import Path

PACKAGES = ("torch", "triton", "transformers", "peft", "tokenizers", "safetensors", "grpc", "google.protobuf",
            "flash_attn", "numpy")


def version(name: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(name), "__version__", "?"))
    except Exception:  # any import failure is a finding, not an error
        return None


def device() -> dict[str, object]:
    try:
        import torch
    except ImportError:
        return {"cuda": False}
    if not torch.cuda.is_available():
        return {"cuda": False, "torch_cuda": torch.version.cuda}
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    return {"cuda": True, "torch_cuda": torch.version.cuda, "count": torch.cuda.device_count(),
            "name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "total_bytes": total, "free_bytes": free}


def main() -> int:
    out = {"python": sys.version.split()[0], "platform": platform.platform(),
           "packages": {name: version(name) for name in PACKAGES}, "device": device()}
    text = json.dumps(out, indent=2)
    print(text)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
