"""API-token check for the gateway: `authorization: Bearer <token>` or `x-api-key: <token>`.

Health checking and reflection stay open (Kubernetes gRPC probes cannot send tokens). Tokens are
compared in constant time (hmac.compare_digest) over every metadata entry of those keys, so
neither timing nor a second header of the same name lets a guess through.
"""

from __future__ import annotations

import hmac

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


class TokenAuth(grpc.ServerInterceptor):
    def __init__(self, token: str):
        if not token:
            raise ValueError("an empty token would accept every caller; leave auth off instead")
        self._token = token.encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if self.allowed(handler_call_details.invocation_metadata or ()):
            return handler
        if handler.unary_unary is None:  # every gateway RPC is unary; refuse anything else
            return None
        return handler._replace(unary_unary=_refuse)

    def allowed(self, metadata) -> bool:
        matched = False
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                scheme, _, presented = value.partition(" ")
                presented = presented.strip() if scheme.lower() == "bearer" else ""
            elif key == "x-api-key" and isinstance(value, str):
                presented = value.strip()
            else:
                continue
            # No early exit: every entry is compared, so timing does not say which one matched.
            matched |= hmac.compare_digest(presented.encode(), self._token)
        return matched


def _refuse(_request, context: grpc.ServicerContext):
    context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or wrong API token: send `authorization: Bearer <token>` or `x-api-key`",
    )
