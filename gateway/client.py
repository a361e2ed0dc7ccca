"""The Python client SDK: a small class over the generated Gateway stub.

    with CascadeClient("127.0.0.1:50050", token=None) as client:
        page = client.recommend(196, count=10)          # a gateway_pb2.RecommendResponse
        client.feedback([Event(user_id=196, item_id=int(page.items.item_ids[0]), type=PLAY)])
        page = client.recommend("alice")                # external ids: a str is a user_key
        client.feedback([("alice", page.item_keys[0], "like")])  # str ids are keys

Errors arrive as grpc.RpcError; cascade.client.field_violations(error) names the bad field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from cascade.client import ClientSettings, make_channel
from cascade.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

Event = gateway_pb2.Event
EVENT_TYPES = {
    value.name.removeprefix("EVENT_TYPE_").lower(): value.number
    for value in gateway_pb2.EventType.DESCRIPTOR.values
    if value.number != gateway_pb2.EVENT_TYPE_UNSPECIFIED
}


class CascadeClient:
    """Calls the gateway at `target` with an optional API token; every call has a deadline.
    `tls_ca`: the gateway serves TLS, signed by this CA (the token then travels encrypted)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        timeout_s: float = 1.0,
        tls_ca: Path | None = None,
        tls_server_name: str = "",
    ):
        # Recommend is safe to retry on UNAVAILABLE; Feedback is not (an event would count twice).
        settings = ClientSettings(
            timeout_s=timeout_s, tls_ca=tls_ca, tls_server_name=tls_server_name
        )
        self._channel = make_channel(target, settings, ["cascade.v1.Gateway/Recommend"])
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout_s = timeout_s

    def recommend(
        self,
        user_id: int | str,
        count: int = 10,
        context: common_pb2.RequestContext | Mapping[str, object] | None = None,
        debug: bool = False,
        timeout_s: float | None = None,
    ) -> gateway_pb2.RecommendResponse:
        """The user's recommendations (items and their external keys, degraded flags, with debug
        the per-stage trace). An int is the platform's user id, a str the client's own key."""
        if isinstance(context, Mapping):
            context = common_pb2.RequestContext(**context)
        request = gateway_pb2.RecommendRequest(count=count, context=context, debug=debug)
        if isinstance(user_id, str):
            request.user_key = user_id
        else:
            request.user_id = user_id
        return self._stub.Recommend(
            request, timeout=timeout_s or self.timeout_s, metadata=self._metadata
        )

    def feedback(
        self, events: Iterable[gateway_pb2.Event | tuple[int | str, int | str, str]]
    ) -> gateway_pb2.FeedbackResponse:
        """Sends events, given as Event messages or (user, item, "play") tuples where an int is
        the platform's id and a str the client's own key; the answer counts the accepted ones
        and lists each rejected one with its reason."""
        request = gateway_pb2.FeedbackRequest(events=[_event(e) for e in events])
        return self._stub.Feedback(request, timeout=self.timeout_s, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CascadeClient:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _event(event: gateway_pb2.Event | tuple[int | str, int | str, str]) -> gateway_pb2.Event:
    if isinstance(event, gateway_pb2.Event):
        return event
    user, item, kind = event
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; one of {', '.join(EVENT_TYPES)}")
    message = gateway_pb2.Event(type=EVENT_TYPES[kind])
    if isinstance(user, str):
        message.user_key = user
    else:
        message.user_id = user
    if isinstance(item, str):
        message.item_key = item
    else:
        message.item_id = item
    return message


def is_unavailable(error: grpc.RpcError) -> bool:
    return isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE
