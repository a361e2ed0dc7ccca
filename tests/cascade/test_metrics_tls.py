"""The metrics port over HTTPS (ServerSettings.metrics_tls_cert / metrics_tls_key): a scrape that
trusts the CA reads the page, a plaintext one gets nothing."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest

from cascade.certs import make_certificates
from cascade.server import BindError, ServerSettings
from tests.cascade.test_server import start_fake

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_metrics_are_served_over_https_and_not_plaintext(certs):
    settings = ServerSettings(metrics_tls_cert=certs.server, metrics_tls_key=certs.server_key)
    running, _ = start_fake(settings)
    try:
        trusted = ssl.create_default_context(cafile=str(certs.ca))
        trusted.check_hostname = False  # the leaf names the cluster's Services, not 127.0.0.1
        url = f"127.0.0.1:{running.metrics_port}/metrics"
        with urllib.request.urlopen(f"https://{url}", context=trusted, timeout=5) as page:
            assert "cascade_rpc_in_flight" in page.read().decode()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://{url}", timeout=5).read()
        untrusted = ssl.create_default_context()  # the system's CAs do not know ours
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://{url}", context=untrusted, timeout=5)
    finally:
        running.stop(0)


def test_half_a_metrics_key_pair_or_an_unreadable_one_is_refused(certs, tmp_path):
    with pytest.raises(ValueError, match="metrics_tls_cert and metrics_tls_key go together"):
        ServerSettings(metrics_tls_cert=certs.server)
    missing = tmp_path / "missing.pem"
    with pytest.raises(BindError, match="metrics port"):
        start_fake(ServerSettings(metrics_tls_cert=missing, metrics_tls_key=missing))
