"""The committed generated code must match the .proto files."""

from cascade import protogen


def test_generated_code_is_current(tmp_path):
    generated = protogen.generate(tmp_path)
    committed = protogen.REPO / "cascade" / "v1"
    assert generated, "protoc produced nothing"
    for path in generated:
        current = committed / path.name
        assert current.exists(), f"{current} is missing: run `make protos`"
        assert current.read_bytes() == path.read_bytes(), f"{current} is stale: run `make protos`"
    names = {p.name for p in generated}
    extra = {p.name for p in committed.glob("*_pb2*.py*")} - names
    assert not extra, f"generated files without a .proto: {sorted(extra)}"


def test_every_proto_field_is_documented():
    """Every message, field and enum value carries a comment line above it (the contract is
    read from the .proto files, so each name says what it means there)."""
    for proto in protogen.proto_files():
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            is_field = (
                stripped.endswith(";")
                and "=" in stripped
                and not stripped.startswith(("syntax", "package", "option", "//"))
            )
            if is_field:
                above = lines[number - 1].strip()
                assert above.startswith("//"), f"{proto.name}:{number + 1} undocumented: {stripped}"
