"""A request time the caller sets: replays and simulations run the stack on their own clock.

With the gateway's `clock = "caller"` setting, a Recommend or Feedback call may carry the header
`x-cascade-request-time-ms` (Unix milliseconds): the gateway stamps the request with it instead of
its own clock, so recall's freshness window, the trending counters and the logged impressions
follow the caller's time. Only callers that passed the gateway's authentication reach a handler,
and only an operator who sets `clock = "caller"` trusts them with it; without the header the
"data" clock applies. A header that is not a positive integer is INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc

REQUEST_TIME_HEADER = "x-cascade-request-time-ms"
# Later than this (year 2286) is a unit mistake (microseconds, nanoseconds), not a time.
MAX_REQUEST_TIME_MS = 10**13


def caller_time_ms(context: grpc.ServicerContext) -> int:
    """The header's time, 0 when the call did not send one; aborts INVALID_ARGUMENT naming the
    header when it is not a time in milliseconds."""
    from cascade.server import invalid_argument  # server side only; clients import this module

    for key, value in context.invocation_metadata() or ():
        if key != REQUEST_TIME_HEADER:
            continue
        text = value if isinstance(value, str) else ""
        if not text.strip().isdigit() or not 0 < int(text) < MAX_REQUEST_TIME_MS:
            invalid_argument(
                context,
                REQUEST_TIME_HEADER,
                f"{text[:32]!r} is not a Unix time in milliseconds (a positive integer below "
                f"{MAX_REQUEST_TIME_MS})",
            )
        return int(text)
    return 0


def request_time_metadata(time_ms: int) -> tuple[tuple[str, str], ...]:
    """The header a client sends to set a call's time."""
    return ((REQUEST_TIME_HEADER, str(int(time_ms))),)
