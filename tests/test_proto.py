"""The .proto files match the spec tables field for field, and the committed stubs are fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chameleon_pb import chameleon_pb2, generate_pb2, generation_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tests.spec_tables import read_services, read_tables, spec_dir

ROOT = Path(__file__).resolve().parents[1]
SCALARS = {
    FieldDescriptor.TYPE_BOOL: "bool", FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes", FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64", FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_INT64: "int64",
}
CASES = [("tgi-generate-v3.md", generate_pb2, "generate.v3", "TextGenerationService"),
         ("tgis-fmaas.md", generation_pb2, "fmaas", "GenerationService")]


def _type_name(fd: FieldDescriptor) -> str:
    if fd.type in SCALARS:
        return SCALARS[fd.type]
    return (fd.message_type or fd.enum_type).name


def _find(module, package: str, name: str) -> Descriptor:
    pool = module.DESCRIPTOR.pool
    try:
        return pool.FindMessageTypeByName(f"{package}.{name}")
    except KeyError:
        for msg in module.DESCRIPTOR.message_types_by_name.values():
            for nested in msg.nested_types:
                if nested.name == name:
                    return nested
        raise


def _check_message(desc: Descriptor, fields) -> list[str]:
    errors = []
    for spec in fields.values():
        fd = desc.fields_by_name.get(spec.name)
        where = f"{desc.full_name}.{spec.name}"
        if fd is None:
            errors.append(f"{where} missing")
            continue
        if fd.number != spec.number:
            errors.append(f"{where} number {fd.number} != spec {spec.number}")
        if _type_name(fd) != spec.type:
            errors.append(f"{where} type {_type_name(fd)} != spec {spec.type}")
        if fd.is_repeated != spec.repeated:
            errors.append(f"{where} repeated mismatch")
        synthetic = fd.containing_oneof is not None and fd.containing_oneof.name == "_" + fd.name
        if spec.optional and not synthetic and fd.message_type is None:
            errors.append(f"{where} should be proto3 optional")
        if spec.oneof and (fd.containing_oneof is None or fd.containing_oneof.name != spec.oneof):
            errors.append(f"{where} should be in oneof {spec.oneof}")
    return errors


@pytest.mark.parametrize(("doc", "module", "package", "service"), CASES)
def test_messages_match_spec(doc, module, package, service):
    tables = read_tables(spec_dir() / doc)
    assert len(tables.messages) >= 10, "spec tables not found or unreadable"
    errors = []
    for name, fields in tables.messages.items():
        errors += _check_message(_find(module, package, name), fields)
    for name, values in tables.enums.items():
        pool = module.DESCRIPTOR.pool
        try:
            enum = pool.FindEnumTypeByName(f"{package}.{name}")
        except KeyError:
            enum = next(e for m in module.DESCRIPTOR.message_types_by_name.values()
                        for e in m.enum_types if e.name == name)
        got = {v.name: v.number for v in enum.values}
        if got != values:
            errors.append(f"enum {name}: {got} != spec {values}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(("doc", "module", "package", "service"), CASES)
def test_service_matches_spec(doc, module, package, service):
    rpcs = read_services(spec_dir() / doc)
    assert rpcs, "service table not found"
    svc = module.DESCRIPTOR.services_by_name[service]
    assert svc.full_name == f"{package}.{service}"
    assert set(rpcs) == set(svc.methods_by_name)
    for name, (req, resp, streaming) in rpcs.items():
        method = svc.methods_by_name[name]
        assert method.input_type.name == req
        assert method.output_type.name == resp
        assert method.server_streaming == streaming


def test_extensions_use_high_field_numbers():
    """Chameleon's additions to v3 messages sit at >= 100 so a plain v3 peer ignores them."""
    spec = read_tables(spec_dir() / "tgi-generate-v3.md").messages
    for name in ("PrefillResponse", "DecodeResponse", "FilterBatchResponse"):
        desc = generate_pb2.DESCRIPTOR.message_types_by_name[name]
        extra = [f for f in desc.fields if f.name not in spec[name]]
        assert extra and all(f.number >= 100 for f in extra)
        assert any(f.message_type is chameleon_pb2.Headroom.DESCRIPTOR for f in extra)


def test_headroom_survives_a_plain_v3_peer():
    """A reply with headroom parses in a v3 message without the extension (unknown fields kept)."""
    reply = generate_pb2.DecodeResponse(total_ns=5)
    reply.headroom.pool_pages_used = 7
    reply.headroom.free_device_bytes = 1 << 30
    plain = generate_pb2.DecodeResponse()
    plain.ParseFromString(reply.SerializeToString())
    assert plain.total_ns == 5 and plain.headroom.pool_pages_used == 7


def test_stubs_are_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "proto" / "gen.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
