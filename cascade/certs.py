"""`cascade certs`: a local certificate authority and the certificates the stack and tests use.

    cascade certs --out .cascade/certs [--dns rank.cascade.svc ...] [--days 30]

Writes ca.pem (the CA certificate every service trusts), server.pem / server-key.pem (every
stage's and the gateway's server identity: localhost, 127.0.0.1, ::1, the stage names and their
in-cluster names, plus --dns), gateway.pem / gateway-key.pem (the gateway's client identity, CN
cascade-gateway: the only caller the stages accept) and tools.pem / tools-key.pem (CN
cascade-tools: a trusted client that is not the gateway). Keys are ECDSA P-256, mode 0600. The CA
key (ca-key.pem) stays beside them so a re-run with --reuse-ca rotates the leaves under one CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cascade.callers import GATEWAY_IDENTITY
from cascade.files import write_atomic
from cascade.topology import SERVICES

STAGE_NAMES = SERVICES
TOOLS_IDENTITY = "cascade-tools"


@dataclass(frozen=True)
class CertPaths:
    """Where `make_certificates` wrote each file."""

    folder: Path

    def __getattr__(self, name: str) -> Path:
        files = {
            "ca": "ca.pem",
            "ca_key": "ca-key.pem",
            "server": "server.pem",
            "server_key": "server-key.pem",
            "gateway": "gateway.pem",
            "gateway_key": "gateway-key.pem",
            "tools": "tools.pem",
            "tools_key": "tools-key.pem",
        }
        if name not in files:
            raise AttributeError(name)
        return self.folder / files[name]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cascade"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, data, mode=0o600)  # a watcher never sees half a key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM))


def _certificate(subject, issuer, public_key, signer, days: float, extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # small clock skew is fine
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _load_ca(paths: CertPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{paths.ca_key} holds no EC private key (cascade certs writes one)")
    return cert, key


def make_certificates(
    folder: Path,
    dns_names: Sequence[str] = (),
    days: float = 30.0,
    reuse_ca: bool = False,
    namespace: str = "cascade",
) -> CertPaths:
    """A CA (new, or the one already in `folder` with `reuse_ca`) and the leaf certificates."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(folder)
    if reuse_ca and paths.ca.exists() and paths.ca_key.exists():
        ca_cert, ca_key = _load_ca(paths)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("cascade local CA")
        ca_cert = _certificate(
            ca_name,
            ca_name,
            ca_key.public_key(),
            ca_key,
            days * 4,
            [
                (x509.BasicConstraints(ca=True, path_length=0), True),
                (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
            ],
        )
        _write_key(paths.ca_key, ca_key)
        _write_cert(paths.ca, ca_cert)
    names = ["localhost", *STAGE_NAMES]
    names += [f"{s}.{namespace}.svc" for s in STAGE_NAMES]
    names += [f"{s}.{namespace}.svc.cluster.local" for s in STAGE_NAMES]
    names += list(dns_names)
    alternative: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    alternative += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    leaves = (
        ("server", "cascade-server", ExtendedKeyUsageOID.SERVER_AUTH, alternative),
        ("gateway", GATEWAY_IDENTITY, ExtendedKeyUsageOID.CLIENT_AUTH, None),
        ("tools", TOOLS_IDENTITY, ExtendedKeyUsageOID.CLIENT_AUTH, None),
    )
    for stem, common_name, usage, sans in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([usage]), False),
        ]
        if sans:
            extensions.append((x509.SubjectAlternativeName(sans), False))
        cert = _certificate(
            _name(common_name), ca_cert.subject, key.public_key(), ca_key, days, extensions
        )
        # The key first: a server re-reading the pair mid-write keeps its old one (check_pair).
        _write_key(getattr(paths, f"{stem}_key"), key)
        _write_cert(getattr(paths, stem), cert)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cascade certs", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".cascade/certs"),
        help="folder for the PEM files (default: .cascade/certs)",
    )
    parser.add_argument("--dns", nargs="*", default=[], help="extra DNS names for server.pem")
    parser.add_argument("--days", type=float, default=30.0, help="leaf validity (CA: 4x)")
    parser.add_argument("--namespace", default="cascade", help="Kubernetes namespace for names")
    parser.add_argument(
        "--reuse-ca", action="store_true", help="keep the CA in --out, issue new leaves (rotation)"
    )
    args = parser.parse_args(argv)
    paths = make_certificates(args.out, args.dns, args.days, args.reuse_ca, args.namespace)
    for name in ("ca", "server", "server_key", "gateway", "gateway_key", "tools", "tools_key"):
        print(f"{name:<12} {getattr(paths, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
