"""The console's settings (CASCADE_CONSOLE_*; `python -m app.console.server --help`)."""

from __future__ import annotations

from dataclasses import dataclass

from cascade.config import Secret

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ConsoleSettings:
    host: str = "127.0.0.1"  # loopback by default; any other address needs `token`
    port: int = 8090  # 0 = a free one (written to port_file)
    port_file: str = ""  # where the bound port is written ("" = nowhere)
    # Every page wants it when set: ?token= once (then a cookie) or `authorization: Bearer`.
    token: Secret = Secret("")
    run_dir: str = ".cascade"  # the local stack's state (`cascade up`): services, event log
    # The stack's services as "name=host:port=http://host:port/metrics", comma separated; "" =
    # the local stack recorded in run_dir.
    services: str = ""
    gateway_target: str = ""  # the gateway's host:port; "" = the stack's
    gateway_tls_ca: str = ""  # the CA of a gateway that serves TLS ("" = plaintext)
    # The token an explained Recommend sends: the gateway's API token, or its explain token.
    explain_token: Secret = Secret("")
    event_log: str = ""  # file:DIR or redis://...; "" = file:<run_dir>/eventlog
    prometheus_url: str = ""  # when set, the stack page also shows its latency and rates
    data_dir: str = "data"  # the served bundle's dataset: titles, creators, logged plays
    artifacts: str = "artifacts"  # where bundles live
    bundle: str = "current"  # its item-CF and two-tower tables give an item's neighbours
    simulation_dir: str = "results/loop"  # the run folder holding simulation.json
    window_s: float = 300.0  # the stack page's figures cover this much of the recent past
    scrape_every_s: float = 5.0  # a metrics scrape of every service this often
    timeout_s: float = 2.0  # per call to a service, the gateway or Prometheus

    def __post_init__(self) -> None:
        for name in ("token", "explain_token"):
            object.__setattr__(self, name, Secret(getattr(self, name)))
        if self.host not in LOOPBACK and not self.token:
            raise ValueError(
                f"host {self.host!r} is not loopback: set CASCADE_CONSOLE_TOKEN (the console "
                "shows who was served what)"
            )

    @property
    def event_log_uri(self) -> str:
        return self.event_log or f"file:{self.run_dir}/eventlog"
