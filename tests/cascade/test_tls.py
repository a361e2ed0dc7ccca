"""TLS, mutual TLS, certificate rotation and the caller check, on real loopback servers with
certificates from `cascade certs` (cascade/certs.py)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.certs import make_certificates
from cascade.client import ClientSettings, make_channel
from cascade.config import Secret, SettingsError, load_settings
from cascade.server import BindError, ServerSettings
from cascade.v1 import rerank_pb2_grpc
from tests.cascade.test_server import rerank_request, start_fake

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs") / "ours")


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """A second, unrelated CA with its own leaves (an attacker's or another cluster's)."""
    return make_certificates(tmp_path_factory.mktemp("certs") / "theirs")


def mtls_settings(certs, **overrides) -> ServerSettings:
    return ServerSettings(
        tls_cert=certs.server, tls_key=certs.server_key, tls_client_ca=certs.ca, **overrides
    )


def client(ca: Path, cert: Path | None = None, key: Path | None = None, **extra) -> ClientSettings:
    return ClientSettings(
        max_attempts=1, timeout_s=5.0, tls_ca=ca, tls_cert=cert, tls_key=key, **extra
    )


def call(address: str, settings: ClientSettings, default_deadline: bool = True) -> grpc.StatusCode:
    """One Rerank call's outcome (OK or the error's code)."""
    with make_channel(address, settings, default_deadline=default_deadline) as channel:
        try:
            rerank_pb2_grpc.RerankStub(channel).Rerank(rerank_request(count=2), timeout=5)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_tls_server_answers_tls_clients_and_not_plaintext(certs):
    running, _ = start_fake(ServerSettings(tls_cert=certs.server, tls_key=certs.server_key))
    try:
        assert running.settings.security() == "TLS"
        assert call(running.address, client(certs.ca)) == grpc.StatusCode.OK
        # A plaintext client cannot talk to a TLS port.
        plain = ClientSettings(max_attempts=1, timeout_s=2.0)
        assert call(running.address, plain) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_mutual_tls_refuses_clients_without_a_certificate_or_from_another_ca(certs, other_certs):
    running, servicer = start_fake(mtls_settings(certs))
    try:
        address = running.address
        assert call(address, client(certs.ca, certs.gateway, certs.gateway_key)) == (
            grpc.StatusCode.OK
        )
        # No client certificate: the handshake fails, the call never reaches the servicer.
        assert call(address, client(certs.ca)) == grpc.StatusCode.UNAVAILABLE
        # A certificate another CA signed (the client trusts our server, we do not trust it).
        foreign = client(certs.ca, other_certs.gateway, other_certs.gateway_key)
        assert call(address, foreign) == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls == 1
    finally:
        running.stop(0)


def test_only_the_gateway_identity_may_call_a_stage(certs):
    running, servicer = start_fake(mtls_settings(certs))
    try:
        tools = client(certs.ca, certs.tools, certs.tools_key)  # our CA, but not the gateway
        assert call(running.address, tools) == grpc.StatusCode.PERMISSION_DENIED
        gateway = client(certs.ca, certs.gateway, certs.gateway_key)
        assert call(running.address, gateway) == grpc.StatusCode.OK
        assert servicer.calls == 1
    finally:
        running.stop(0)


def test_caller_token_without_mutual_tls():
    running, servicer = start_fake(ServerSettings(caller_token=Secret("stage-secret")))
    try:
        plain = ClientSettings(max_attempts=1, timeout_s=5.0)
        assert call(running.address, plain) == grpc.StatusCode.PERMISSION_DENIED
        wrong = dataclasses.replace(plain, caller_token=Secret("guess"))
        assert call(running.address, wrong) == grpc.StatusCode.PERMISSION_DENIED
        right = dataclasses.replace(plain, caller_token=Secret("stage-secret"))
        assert call(running.address, right) == grpc.StatusCode.OK
        # The gateway's channels (no default deadline: it times every call) still send it.
        assert call(running.address, right, default_deadline=False) == grpc.StatusCode.OK
        assert call(running.address, plain, default_deadline=False) != grpc.StatusCode.OK
        assert servicer.calls == 2
        # Health stays open: the kubelet's probe sends no token.
        with grpc.insecure_channel(running.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)


def test_plaintext_probe_port_serves_only_health_under_mutual_tls(certs):
    running, _ = start_fake(mtls_settings(certs, probe_port=0))
    try:
        probe = f"127.0.0.1:{running.probe_port}"
        with grpc.insecure_channel(probe) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as refused:
                rerank_pb2_grpc.RerankStub(channel).Rerank(rerank_request(count=2), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop(0)


def test_rotation_is_picked_up_without_a_restart(tmp_path, certs, other_certs):
    """The server's files are replaced by another CA's set: new connections get the new
    certificate (and only the new CA's clients are accepted) while the process keeps running."""
    live = tmp_path / "live"
    shutil.copytree(certs.folder, live)
    files = make_certificates(live, reuse_ca=True)  # fresh leaves under the copied CA
    running, servicer = start_fake(mtls_settings(files))
    try:
        old = client(certs.ca, certs.gateway, certs.gateway_key)
        new = client(other_certs.ca, other_certs.gateway, other_certs.gateway_key)
        assert call(running.address, old) == grpc.StatusCode.OK
        assert call(running.address, new) == grpc.StatusCode.UNAVAILABLE
        for name in ("server-key.pem", "server.pem", "ca.pem"):  # as a Secret update lands
            shutil.copy(other_certs.folder / name, live / f"{name}.new")
            os.replace(live / f"{name}.new", live / name)
        assert call(running.address, new) == grpc.StatusCode.OK
        assert call(running.address, old) == grpc.StatusCode.UNAVAILABLE
        assert running.certificates.rotations == 1
        assert servicer.calls == 2
    finally:
        running.stop(0)


def test_a_half_rotated_pair_keeps_the_old_certificate(tmp_path, certs, other_certs):
    live = tmp_path / "live"
    shutil.copytree(certs.folder, live)
    running, _ = start_fake(mtls_settings(make_certificates(live, reuse_ca=True)))
    try:
        shutil.copy(other_certs.server, live / "server.pem")  # the key has not arrived yet
        assert call(running.address, client(certs.ca, certs.gateway, certs.gateway_key)) == (
            grpc.StatusCode.OK
        )
        assert running.certificates.rotations == 0
    finally:
        running.stop(0)


def test_plaintext_is_refused_off_loopback_unless_said_explicitly():
    with pytest.raises(ValueError, match="reachable from other machines"):
        ServerSettings(host="0.0.0.0")
    assert ServerSettings(host="0.0.0.0", insecure=True).security() == "plaintext (insecure)"
    assert ServerSettings().security() == "plaintext (loopback only)"
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        ServerSettings(tls_cert=Path("server.pem"))


def test_missing_certificate_files_fail_start_naming_the_file(tmp_path):
    settings = ServerSettings(tls_cert=tmp_path / "nope.pem", tls_key=tmp_path / "nope-key.pem")
    with pytest.raises(BindError, match="nope"):
        start_fake(settings)


def test_reflection_is_off_by_default_in_production_settings():
    assert ServerSettings().reflection is False
    env = {"CASCADE_X_SERVER_REFLECTION": "1"}

    @dataclasses.dataclass(frozen=True)
    class X:
        server: ServerSettings = dataclasses.field(default_factory=ServerSettings)

    assert load_settings(X, env_prefix="CASCADE_X_", environ=env).server.reflection is True


def test_tokens_never_print():
    @dataclasses.dataclass(frozen=True)
    class Holder:
        token: Secret = Secret("")
        server: ServerSettings = dataclasses.field(default_factory=ServerSettings)

    env = {"CASCADE_H_TOKEN": "hunter2", "CASCADE_H_SERVER_CALLER_TOKEN": "s3cr3t-stage"}
    settings = load_settings(Holder, env_prefix="CASCADE_H_", environ=env)
    assert settings.token.reveal() == "hunter2"
    assert settings.server.caller_token.reveal() == "s3cr3t-stage"
    for text in (repr(settings), str(settings), f"{settings.token}", repr(settings.server)):
        assert "hunter2" not in text and "s3cr3t-stage" not in text
    assert "***" in repr(settings)
    bad = {"CASCADE_H_SERVER_CALLER_TOKEN": "x", "CASCADE_H_SERVER_PORT": "hunter2"}
    with pytest.raises(SettingsError) as error:
        load_settings(Holder, env_prefix="CASCADE_H_", environ=bad)
    assert "'hunter2'" in str(error.value)  # a port is no secret: named in the error
