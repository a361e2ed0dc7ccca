"""Generates the Python code for the wire contract in protos/ (run as `make protos`).

The generated modules are committed under cascade/v1/ so that serving needs no protoc;
tests/cascade/test_protogen.py fails when they are stale against the .proto files.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "protos"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "cascade" / "v1").glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Writes *_pb2.py, *_pb2_grpc.py and their .pyi stubs for every .proto under
    out_root/cascade/v1."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = resources.files("grpc_tools") / "_proto"
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--mypy_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    package = out_root / "cascade" / "v1"
    (package / "__init__.py").write_text('"""Generated wire contract (make protos)."""\n')
    return sorted(package.glob("*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO, help="output root (default: the repo)")
    written = generate(parser.parse_args().out)
    print(f"wrote {len(written)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
