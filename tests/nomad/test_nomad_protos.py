"""The committed Python stubs are what pypod.nomad.proto.generate makes from the .proto files."""

from __future__ import annotations

import importlib

from google.protobuf import descriptor_pb2

from pypod.nomad.proto import generate


def _strip_json_names(fd) -> None:
    def walk(msgs):
        for m in msgs:
            for f in m.field:
                f.ClearField("json_name")
            walk(m.nested_type)
    walk(fd.message_type)


def test_committed_stubs_match_the_proto_files(tmp_path):
    out = tmp_path / "set.pb"
    generate.descriptor_set(out)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(fresh.file) == len(generate.PROTOS)
    for fd in fresh.file:
        stem = fd.name.rsplit("/", 1)[1].removesuffix(".proto")
        mod = importlib.import_module(f"pypod.nomad.proto.{stem}_pb2")
        committed = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(committed)
        fresh_fd = descriptor_pb2.FileDescriptorProto()
        fresh_fd.CopyFrom(fd)
        fresh_fd.ClearField("source_code_info")
        _strip_json_names(fresh_fd)
        _strip_json_names(committed)
        assert committed == fresh_fd, f"{fd.name}: run python -m pypod.nomad.proto.generate"


def test_wire_identities():
    """The names Nomad's Go side dials and unpacks."""
    from pypod.nomad.proto import base_pb2, driver_pb2, goplugin_pb2, structs_pb2

    assert base_pb2.DESCRIPTOR.services_by_name["BasePlugin"].full_name == "hashicorp.nomad.plugins.base.proto.BasePlugin"
    assert driver_pb2.DESCRIPTOR.services_by_name["Driver"].full_name == "hashicorp.nomad.plugins.drivers.proto.Driver"
    assert {s.full_name for s in goplugin_pb2.DESCRIPTOR.services_by_name.values()} == \
        {"plugin.GRPCController", "plugin.GRPCStdio", "plugin.GRPCBroker"}
    assert structs_pb2.RecoverableError.DESCRIPTOR.full_name == "hashicorp.nomad.plugins.shared.structs.RecoverableError"
    assert driver_pb2.MemoryUsage.DESCRIPTOR.fields_by_name["measured_fields"].number == 6
