"""TLS credentials from PEM files for servers and clients, with rotation without a restart.

A server's certificate, key and (for mutual TLS) client CA are re-read when one of the files
changes: gRPC asks `ServerCertificates.fetch` before every new handshake, which costs a few stat
calls and returns a new configuration only when the files moved (a Kubernetes Secret update, a
`cascade certs` re-run). Connections already open keep the old certificate until they reconnect.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from pathlib import Path

import grpc

log = logging.getLogger(__name__)
LOOPBACK_NAMES = ("localhost",)


class TlsError(ValueError):
    """A PEM file that cannot be used; the message names it."""


def is_loopback(host: str) -> bool:
    """Is `host` (an address or name a server binds) reachable only from this machine?"""
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TlsError(f"cannot read the {what} {path}: {error}") from error
    if b"-----BEGIN " not in data:
        raise TlsError(f"the {what} {path} is not PEM")
    return data


def check_pair(cert: Path, key: Path) -> None:
    """The key belongs to the certificate (a half-rotated pair would fail every handshake)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as error:
        raise TlsError(f"certificate {cert} and key {key} do not form a pair: {error}") from error


class ServerCertificates:
    """A server's TLS identity from files, re-read on change. `client_ca` set: mutual TLS, every
    client must present a certificate that CA signed (others fail the handshake)."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None):
        self.cert, self.key, self.client_ca = Path(cert), Path(key), client_ca
        self.paths = [self.cert, self.key] + ([Path(client_ca)] if client_ca else [])
        self.rotations = 0  # configurations installed after the first one
        self._lock = threading.Lock()
        self._initial = self._configuration()  # TlsError naming a missing or bad file
        self._stamp = self._files_stamp()

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self.fetch,  # type: ignore[arg-type]  # gRPC takes None as "no change"; its stub does not
            require_client_authentication=self.mutual,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake hook: a new configuration when the files changed, else None
        (keep the current one). A broken update is logged and skipped until the files change
        again, so a half-written rotation never takes the port down."""
        try:
            stamp = self._files_stamp()
        except OSError:
            return None  # mid-swap (a Secret volume flips a symlink): try on the next handshake
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                configuration = self._configuration()
            except TlsError as error:
                log.warning("tls: not rotating, the new files do not load yet: %s", error)
                return None
            self._stamp = stamp
            self.rotations += 1
        log.info("tls: certificate files changed, new handshakes use them (%s)", self.cert)
        return configuration

    def _files_stamp(self) -> tuple:
        return tuple((p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_ino) for p in self.paths)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        check_pair(self.cert, self.key)
        pair = (read_pem(self.key, "private key"), read_pem(self.cert, "certificate"))
        ca = read_pem(Path(self.client_ca), "client CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


def channel_credentials(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust servers that `ca` signed; with `cert` and `key`, present that
    certificate (mutual TLS)."""
    if (cert is None) != (key is None):
        raise TlsError("a client certificate needs both its certificate and its key")
    if cert is not None and key is not None:
        check_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA certificate"),
        private_key=read_pem(key, "private key") if key else None,
        certificate_chain=read_pem(cert, "certificate") if cert else None,
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate of this call; None without one."""
    names = context.auth_context().get("x509_common_name") or ()
    first = names[0] if names else None  # gRPC gives a list of bytes values
    return first.decode(errors="replace") if first else None  # type: ignore[attr-defined]  # grpc's stub types each value as bytes, not a list of them
