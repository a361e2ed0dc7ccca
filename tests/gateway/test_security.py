"""The whole cascade with its security on: TLS at the gateway's public port, mutual TLS on every
stage port, only the gateway's certificate accepted by the stages (Record included)."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from cascade.certs import make_certificates
from cascade.client import ClientSettings, make_channel
from cascade.server import ServerSettings
from cascade.v1 import gateway_pb2, recall_pb2, recall_pb2_grpc
from gateway.client import CascadeClient
from gateway.server import GatewaySettings, start
from tests.gateway.conftest import HAS_PRERANK, QUIET, gateway_settings, start_stages

pytestmark = pytest.mark.timeout(180)
TOKEN = "s3cret-api-token"


@pytest.fixture(scope="module")
def secure(built, tmp_path_factory):
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    stage_server = dataclasses.replace(
        QUIET, tls_cert=certs.server, tls_key=certs.server_key, tls_client_ca=certs.ca
    )
    stages, _ = start_stages(built, server=stage_server)
    settings = dataclasses.replace(
        gateway_settings(built, stages),
        server=dataclasses.replace(QUIET, tls_cert=certs.server, tls_key=certs.server_key),
        stage_tls_ca=certs.ca,
        stage_tls_cert=certs.gateway,
        stage_tls_key=certs.gateway_key,
        api_token=TOKEN,
    )
    gateway = start(settings)
    yield certs, stages, gateway, settings
    gateway.stop(0)
    gateway.service.close()
    for server in stages.values():
        server.stop(0)


def test_the_cascade_runs_over_tls_and_mutual_tls(secure):
    certs, stages, gateway, _ = secure
    assert gateway.settings.security() == "TLS"
    assert {s.settings.security() for s in stages.values()} == {"mutual TLS"}
    with CascadeClient(gateway.address, TOKEN, timeout_s=5.0, tls_ca=certs.ca) as client:
        response = client.recommend(2, count=5, debug=True)
        assert len(response.items.item_ids) == 5
        # Every stage answered through mutual TLS (a refused handshake would degrade it).
        assert list(response.degraded_stages) == ([] if HAS_PRERANK else ["prerank"])
        accepted = client.feedback([(2, int(response.items.item_ids[0]), "play")]).accepted
    assert accepted == 1
    # Record went to recall over mutual TLS with the gateway's certificate: no failure counted.
    failures = gateway.registry.get_sample_value("cascade_gateway_record_failures_total")
    assert failures == 0.0


def test_the_gateway_refuses_plaintext_and_callers_without_the_token(secure):
    certs, _, gateway, _ = secure
    with CascadeClient(gateway.address, TOKEN, timeout_s=2.0) as plain:
        with pytest.raises(grpc.RpcError) as refused:
            plain.recommend(2, count=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with CascadeClient(gateway.address, None, timeout_s=5.0, tls_ca=certs.ca) as anonymous:
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.recommend(2, count=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def record(address: str, settings: ClientSettings) -> grpc.StatusCode:
    events = [gateway_pb2.Event(user_id=2, item_id=3, type=gateway_pb2.EVENT_TYPE_PLAY)]
    with make_channel(address, settings) as channel:
        try:
            recall_pb2_grpc.RecallStub(channel).Record(
                gateway_pb2.FeedbackRequest(events=events), timeout=5
            )
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_only_the_gateway_may_call_record(secure):
    certs, stages, _, _ = secure
    address = stages["recall"].address
    tools = ClientSettings(
        max_attempts=1, tls_ca=certs.ca, tls_cert=certs.tools, tls_key=certs.tools_key
    )
    assert record(address, tools) == grpc.StatusCode.PERMISSION_DENIED
    with make_channel(address, tools) as channel, pytest.raises(grpc.RpcError) as refused:
        recall_pb2_grpc.RecallStub(channel).Recall(recall_pb2.RecallRequest(count=5), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    gateway = dataclasses.replace(tools, tls_cert=certs.gateway, tls_key=certs.gateway_key)
    assert record(address, gateway) == grpc.StatusCode.OK


def test_settings_never_print_the_tokens(secure):
    _, _, _, settings = secure
    settings = dataclasses.replace(settings, stage_token="stage-s3cret")
    for text in (repr(settings), str(settings)):
        assert TOKEN not in text and "stage-s3cret" not in text
    assert settings.api_token.reveal() == TOKEN


def test_production_settings_keep_reflection_off():
    assert GatewaySettings().server.reflection is False
    assert ServerSettings().reflection is False
