"""The Python client SDK: a small class over the generated Gateway stub.

    with CascadeClient("127.0.0.1:50050", token=None) as client:
        page = client.recommend(196, count=10)          # a gateway_pb2.RecommendResponse
        client.feedback([Event(user_id=196, item_id=int(page.items.item_ids[0]), type=PLAY)])
        page = client.recommend("alice")                # external ids: a str is a user_key
        client.feedback([("alice", page.item_keys[0], "like")])  # str ids are keys

Errors arrive as grpc.RpcError; cascade.client.field_violations(error) names the bad field.
An overloaded gateway refuses with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` hint:
recommend waits that long and retries once (never when the hint is negative, when the deadline
would not allow it, or when the client's retry budget is spent).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from cascade.client import ClientSettings, make_channel
from cascade.v1 import catalog_pb2, common_pb2, gateway_pb2, gateway_pb2_grpc
from gateway.request_time import request_time_metadata

PUSHBACK_KEY = "grpc-retry-pushback-ms"

Event = gateway_pb2.Event
EVENT_TYPES = {
    name.removeprefix("EVENT_TYPE_").lower(): number
    for name, number in gateway_pb2.EventType.items()
    if number != gateway_pb2.EVENT_TYPE_UNSPECIFIED
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
        retry_budget: RetryBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        # Recommend is safe to retry on UNAVAILABLE; Feedback is not (an event would count twice).
        settings = ClientSettings(
            timeout_s=timeout_s, tls_ca=tls_ca, tls_server_name=tls_server_name
        )
        self._channel = make_channel(target, settings, ["cascade.v1.Gateway/Recommend"])
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout_s = timeout_s
        self.retry_budget = RetryBudget() if retry_budget is None else retry_budget
        self._sleep = sleep

    def recommend(
        self,
        user_id: int | str,
        count: int = 10,
        context: common_pb2.RequestContext | Mapping[str, Any] | None = None,
        debug: bool = False,
        timeout_s: float | None = None,
        request_time_ms: int = 0,
    ) -> gateway_pb2.RecommendResponse:
        """The user's recommendations (items and their external keys, degraded flags, with debug
        the per-stage trace). An int is the platform's user id, a str the client's own key.
        `request_time_ms`: the time to serve at (a gateway with clock "caller" honours it)."""
        if isinstance(context, Mapping):
            context = common_pb2.RequestContext(**context)
        request = gateway_pb2.RecommendRequest(count=count, context=context, debug=debug)
        if isinstance(user_id, str):
            request.user_key = user_id
        else:
            request.user_id = user_id
        timeout = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout
        metadata = self._with_time(request_time_ms)
        try:
            answer = self._stub.Recommend(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            delay_s = pushback_s(error)
            left = deadline - time.monotonic()
            if delay_s is None or delay_s >= left or not self.retry_budget.withdraw():
                raise
            self._sleep(delay_s)
            answer = self._stub.Recommend(
                request, timeout=deadline - time.monotonic(), metadata=metadata
            )
        self.retry_budget.deposit()
        return answer

    def feedback(
        self,
        events: Iterable[gateway_pb2.Event | tuple[int | str, int | str, str]],
        request_time_ms: int = 0,
    ) -> gateway_pb2.FeedbackResponse:
        """Sends events, given as Event messages or (user, item, "play") tuples where an int is
        the platform's id and a str the client's own key; the answer counts the accepted ones
        and lists each rejected one with its reason. `request_time_ms`: as for recommend (the
        time of events sent without one)."""
        request = gateway_pb2.FeedbackRequest(events=[_event(e) for e in events])
        metadata = self._with_time(request_time_ms)
        return self._stub.Feedback(request, timeout=self.timeout_s, metadata=metadata)

    def add_items(
        self, items: Iterable[catalog_pb2.NewItem | Mapping[str, Any]], request_time_ms: int = 0
    ) -> catalog_pb2.AddItemsResponse:
        """Uploads items, each a NewItem or a dict of its fields (item_key, creator_id,
        categories, upload_time_ms); the answer has each item's dense id. A retry is safe (a key
        uploaded before keeps its id)."""
        request = catalog_pb2.AddItemsRequest(
            items=[
                i if isinstance(i, catalog_pb2.NewItem) else catalog_pb2.NewItem(**i) for i in items
            ]
        )
        metadata = self._with_time(request_time_ms)
        return self._stub.AddItems(request, timeout=self.timeout_s, metadata=metadata)

    def change_follows(
        self, changes: Iterable[tuple[int, int, bool]], request_time_ms: int = 0
    ) -> catalog_pb2.ChangeFollowsResponse:
        """Follow / unfollow, each (follower_id, followee_id, unfollow)."""
        request = catalog_pb2.ChangeFollowsRequest(
            changes=[
                catalog_pb2.FollowChange(follower_id=a, followee_id=b, unfollow=u)
                for a, b, u in changes
            ]
        )
        metadata = self._with_time(request_time_ms)
        return self._stub.ChangeFollows(request, timeout=self.timeout_s, metadata=metadata)

    def _with_time(self, request_time_ms: int):
        if not request_time_ms:
            return self._metadata
        return (*(self._metadata or ()), *request_time_metadata(request_time_ms))

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


class RetryBudget:
    """Retries may add at most `ratio` of the successful calls (plus a small reserve), the
    token bucket of gRPC's retryThrottling: a refused gateway is not flooded by its clients."""

    def __init__(self, max_tokens: float = 10.0, ratio: float = 0.1):
        self.max_tokens, self.ratio = max_tokens, ratio
        self.tokens = max_tokens
        self._lock = threading.Lock()

    def withdraw(self) -> bool:
        """Take one retry; False when the bucket is at half or below (no retry)."""
        with self._lock:
            if self.tokens <= self.max_tokens / 2:
                return False
            self.tokens -= 1
            return True

    def deposit(self) -> None:
        with self._lock:
            self.tokens = min(self.max_tokens, self.tokens + self.ratio)


def pushback_s(error: grpc.RpcError) -> float | None:
    """The delay a RESOURCE_EXHAUSTED refusal asks for, in seconds; None when it is not one,
    has no hint, or the hint is negative (gRFC A6: do not retry)."""
    if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == PUSHBACK_KEY:
            try:
                ms = int(value)
            except ValueError:
                return None
            return ms / 1000 if ms >= 0 else None
    return None


def is_unavailable(error: grpc.RpcError) -> bool:
    return isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNAVAILABLE
