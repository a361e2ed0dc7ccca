"""Who may call a stage: only the gateway's identity, every other caller PERMISSION_DENIED.

Under mutual TLS the identity is the common name of the client certificate the stage's CA signed
(gRPC verified it in the handshake); without it, a per-service token sent as `x-cascade-caller`
and compared in constant time. Health checking and reflection stay open: the kubelet's gRPC
probe can send neither a certificate nor a token.
"""

from __future__ import annotations

import hmac
import logging

import grpc

from cascade.config import Secret
from cascade.tls import peer_common_name

log = logging.getLogger(__name__)
EXEMPT_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
TOKEN_HEADER = "x-cascade-caller"
GATEWAY_IDENTITY = "cascade-gateway"  # the CN of the gateway's client certificate


class CallerCheck(grpc.ServerInterceptor):
    """`allowed`: certificate common names accepted under mutual TLS (empty: any certificate the
    CA signed). `token`: when set and mTLS is off, the caller token every stage call must carry."""

    def __init__(self, stage: str, mutual_tls: bool, allowed: tuple[str, ...], token: Secret):
        if not mutual_tls and not token:
            raise ValueError("without mutual TLS the caller check needs a token")
        self.stage, self.mutual_tls, self.allowed = stage, mutual_tls, frozenset(allowed)
        self._token = token.reveal().encode()

    def describe(self) -> str:
        if self.mutual_tls:
            names = ", ".join(sorted(self.allowed)) or "any certificate the CA signed"
            return f"callers by client certificate: {names}"
        return f"callers by token ({TOKEN_HEADER})"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.unary_unary is None:  # every stage RPC is unary; refuse anything else
            return None
        if not self.mutual_tls:
            if self._token_matches(handler_call_details.invocation_metadata or ()):
                return handler
            return handler._replace(unary_unary=self._refuse(method, "no or wrong caller token"))
        if not self.allowed:
            return handler  # the handshake already required a certificate our CA signed
        behavior = handler.unary_unary

        def checked(request, context: grpc.ServicerContext):
            name = peer_common_name(context)
            if name not in self.allowed:
                self._refuse(method, f"certificate {name!r} is not an allowed caller")(
                    request, context
                )
            return behavior(request, context)

        return handler._replace(unary_unary=checked)

    def _token_matches(self, metadata) -> bool:
        matched = False
        for key, value in metadata:
            if key == TOKEN_HEADER and isinstance(value, str):
                # No early exit: every entry is compared, so timing says nothing.
                matched |= hmac.compare_digest(value.strip().encode(), self._token)
        return matched

    def _refuse(self, method: str, why: str):
        def refuse(_request, context: grpc.ServicerContext):
            log.warning("%s: refused %s: %s", self.stage, method, why)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{self.stage} accepts stage calls only from the gateway ({why})",
            )

        return refuse
