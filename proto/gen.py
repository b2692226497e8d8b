"""Generate the Python stubs of every `.proto` here into the `chameleon_pb` package.

Usage: ``python proto/gen.py`` writes ``proto/chameleon_pb/``; ``python proto/gen.py --check``
regenerates into a temporary folder and exits 1 when the committed stubs differ (stale).
protoc writes absolute imports between sibling modules (``import chameleon_pb2``); they are rewritten
to package-relative ones so the stubs import as ``chameleon_pb.generate_pb2`` from anywhere.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE / "chameleon_pb"
INIT = '"""Generated gRPC stubs (`make proto`); do not edit."""\n'


def generate(out: Path) -> None:
    from grpc_tools import protoc  # dev extra: only stub generation needs it

    protos = sorted(p.name for p in HERE.glob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    modules = {Path(p).stem for p in protos}
    pattern = re.compile(r"^import (" + "|".join(modules) + r")_pb2", re.MULTILINE)
    for path in sorted(out.glob("*.py*")):
        text = pattern.sub(r"from . import \1_pb2", path.read_text())
        path.write_text(text)
    (out / "__init__.py").write_text(INIT)


def stale_files(committed: Path) -> list[str]:
    """Names of generated files that differ from (or are missing in) `committed`."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        names = sorted(p.name for p in fresh.iterdir() if p.is_file())
        have = sorted(p.name for p in committed.glob("*") if p.is_file()) if committed.exists() else []
        bad = [n for n in names if not (committed / n).exists()
               or not filecmp.cmp(fresh / n, committed / n, shallow=False)]
        bad += [n for n in have if n not in names]
        return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when committed stubs are stale")
    args = parser.parse_args()
    if args.check:
        bad = stale_files(PACKAGE)
        if bad:
            print("stale generated stubs (run `make proto`): " + ", ".join(bad), file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    generate(PACKAGE)
    print(f"wrote {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
