"""The gateway's settings: the stages it calls, the funnel's cuts, budgets, state and security,
each checked at start-up (a bad value is a ValueError naming it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cascade.client import ClientSettings
from cascade.config import Secret
from cascade.eventlog import LogSettings
from cascade.feature_store import StoreLimits, check_store_setting
from cascade.server import ServerSettings
from cascade.topology import STAGES, spec
from cascade.traffic_pool import PoolSettings
from gateway.admission import AdmissionSettings
from gateway.arms import parse_arms
from gateway.replicas import PICKS

CLOCKS = ("data", "wall", "caller")  # the `clock` setting


@dataclass(frozen=True)
class GatewaySettings:
    server: ServerSettings = field(
        # The gateway mostly waits on its stages: 16 threads keep a paused stage (each call
        # waiting out its budget) from starving requests that could be answered.
        default_factory=lambda: ServerSettings.of(
            "gateway", max_message_bytes=1024 * 1024, max_workers=16
        )
    )
    # A stage's replicas: host:port, a comma list of them, or a DNS name resolved to all its
    # addresses (dns:///rank.cascade.svc.cluster.local:50053, a headless Service).
    recall_target: str = spec("recall").target
    prerank_target: str = spec("prerank").target
    rank_target: str = spec("rank").target
    rerank_target: str = spec("rerank").target
    resolve_interval_s: float = 10.0  # resolve the targets again (new pods, gone ones)
    probe_timeout_s: float = 0.25  # health check of an ejected replica before taking it back
    replica_pick: str = "least_in_flight"  # or "round_robin" (blind to a hung replica's queue)
    # Mutual TLS to the stages: their CA, and the gateway's client certificate (CN
    # cascade-gateway, the one caller the stages accept). Without: plaintext.
    stage_tls_ca: Path | None = None
    stage_tls_cert: Path | None = None
    stage_tls_key: Path | None = None
    stage_token: Secret = Secret("")  # without mutual TLS: the stages' caller token
    artifacts: Path = Path("artifacts")  # where bundles live
    bundle: str = "current"  # the bundle under artifacts/ it serves (its fallbacks, catalog)
    data_dir: Path = Path("data")  # where datasets live: the bundle's own is read
    recall_count: int = 2000  # the funnel: recall -> prerank -> rank -> count
    prerank_count: int = 500  # candidates pre-rank keeps for rank
    # Rank keeps 50 for rerank: 100 served less true engagement on the synthetic world's
    # validation users (`make bench-funnel-tuning`, results/cascade/funnel_tuning.md).
    rank_count: int = 50
    default_count: int = 10  # when the request's count is 0
    max_count: int = 100  # a larger request count is INVALID_ARGUMENT
    default_deadline_s: float = 0.25  # the budget when the client sets no deadline
    max_deadline_s: float = 2.0  # a longer client deadline is cut to this
    safety_margin_s: float = 0.01  # kept back for answering; at most a fifth of the budget
    # Shares of the budget per stage (what is left is re-split among the stages still to run).
    recall_share: float = 0.3
    prerank_share: float = 0.15
    rank_share: float = 0.4
    rerank_share: float = 0.15
    max_per_creator: int = 2  # creator cap of the local rerank fallback (rerank's own default)
    breaker_failures: int = 3  # a replica failing this often in a row is ejected; 0 = never
    breaker_cooldown_s: float = 0.5  # ... for this long, then a health check probes it
    max_context_chars: int = 64  # platform, locale, surface
    max_extras: int = 16  # context.extras entries
    max_extra_chars: int = 256  # per extras key and value
    max_feedback_events: int = 1000  # larger Feedback batches are INVALID_ARGUMENT
    record_timeout_s: float = 0.2  # forwarding Feedback to recall
    max_online_users: int = 100_000  # users whose online events the gateway remembers
    # The event log: file:DIR (embedded, segmented files) or redis://HOST:PORT/DB (shared).
    event_log: str = "file:state/eventlog"
    log: LogSettings = field(default_factory=LogSettings)  # fsync policy, segments, dedup window
    impression_queue: int = 10_000  # answers waiting for the impression writer; beyond: dropped
    # The writer waits this long after an answer for more to share its frame (fewer, larger
    # appends: `python -m bench.gateway_path`); the records are never on the answer's path.
    impression_linger_s: float = 0.05
    new_user_capacity: int = 1_000_000  # users first seen online, beyond the dataset's own
    new_item_capacity: int = 1_000_000  # items uploaded online (AddItems), beyond the dataset's
    api_token: Secret = Secret("")  # empty: auth off (local demo); else callers must send it
    # The token an explained Recommend (the console) must send when api_token is empty; with an
    # api_token, that one. Both empty: explain is refused.
    explain_token: Secret = Secret("")
    # Refuse to start without api_token (compose and Kubernetes set it: auth off must be said).
    require_api_token: bool = False
    # The request time the gateway stamps once per request (and on events sent with time 0):
    # "wall" = now; "data" = the bundle's training log end + the gateway's uptime, for the
    # replayed datasets (ml-100k, synthetic), as recall's own "data" clock; "caller" = the time
    # the caller sends (gateway/request_time.py: simulations, replays), else "data".
    clock: str = "data"
    # The online store: "memory" (each stage its own; Feedback goes to recall's Record) or
    # "redis://host:port/db" (shared by every replica; the gateway writes each event once).
    store: str = "memory"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # Experiment arms (gateway/arms.py): a JSON list of {"name", "share", "overrides"}; a user's
    # arm is sha256(arm_salt:user key) against the shares. "" = no arms.
    arms: str = ""
    arm_salt: str = "cascade"
    # One of the arms' names: its ranking of every other arm's requests is logged, never shown
    # (gateway/shadow.py). "" = no shadow.
    shadow_arm: str = ""
    # Concurrency limit, queue-time shedding and the funnel's quality factor (gateway/admission.py).
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    # The traffic pool for new uploads (gateway/pool.py, cascade/traffic_pool.py): K impressions
    # promised in an upload's first day, its page slots and controller; an arm may override it.
    pool: PoolSettings = field(default_factory=PoolSettings)

    def __post_init__(self) -> None:
        check_store_setting(self.store)
        arm_names = [arm.name for arm in parse_arms(self.arms)]  # ValueError names the problem
        if self.shadow_arm and self.shadow_arm not in arm_names:
            raise ValueError(f"shadow_arm {self.shadow_arm!r} is not one of the arms {arm_names}")
        # A plain str given in code becomes a Secret.
        for name in ("api_token", "stage_token", "explain_token"):
            object.__setattr__(self, name, Secret(getattr(self, name)))
        if not 0 < self.default_count <= self.max_count:
            raise ValueError("need 0 < default_count <= max_count")
        if min(self.recall_count, self.prerank_count, self.rank_count) < 1:
            raise ValueError("recall_count, prerank_count and rank_count must be >= 1")
        if not 0 < self.default_deadline_s <= self.max_deadline_s:
            raise ValueError("need 0 < default_deadline_s <= max_deadline_s")
        if min(self.shares().values()) <= 0:
            raise ValueError("every stage share must be > 0")
        if self.safety_margin_s < 0 or self.record_timeout_s <= 0:
            raise ValueError("safety_margin_s must be >= 0 and record_timeout_s > 0")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if min(self.new_user_capacity, self.new_item_capacity) < 0 or self.impression_queue < 1:
            raise ValueError(
                "new_user_capacity and new_item_capacity must be >= 0, impression_queue >= 1"
            )
        if not 0 <= self.impression_linger_s <= 1:
            raise ValueError("impression_linger_s must be between 0 and 1 (seconds)")
        if self.breaker_failures < 0 or self.breaker_cooldown_s <= 0:
            raise ValueError("breaker_failures must be >= 0 and breaker_cooldown_s > 0")
        if self.require_api_token and not self.api_token:
            raise ValueError(
                "no API token: set CASCADE_GATEWAY_API_TOKEN, or set "
                "CASCADE_GATEWAY_REQUIRE_API_TOKEN=false to run without authentication"
            )
        if self.replica_pick not in PICKS:
            raise ValueError(f"replica_pick must be one of {PICKS}, got {self.replica_pick!r}")
        if self.resolve_interval_s <= 0 or self.probe_timeout_s <= 0:
            raise ValueError("resolve_interval_s and probe_timeout_s must be > 0")
        if (self.stage_tls_cert is None) != (self.stage_tls_key is None):
            raise ValueError("stage_tls_cert and stage_tls_key go together")
        if self.stage_tls_cert is not None and self.stage_tls_ca is None:
            raise ValueError("stage_tls_cert (mutual TLS to the stages) needs stage_tls_ca")

    def stage_client(self) -> ClientSettings:
        """How the gateway dials a stage replica (its deadline is always the call's own)."""
        return ClientSettings(
            timeout_s=self.max_deadline_s,
            tls_ca=self.stage_tls_ca,
            tls_cert=self.stage_tls_cert,
            tls_key=self.stage_tls_key,
            caller_token=self.stage_token,
        )

    def stage_security(self) -> str:
        if self.stage_tls_cert is not None:
            return "mutual TLS"
        if self.stage_tls_ca is not None:
            return "TLS"
        return "plaintext" + (" with caller token" if self.stage_token else "")

    def shares(self) -> dict[str, float]:
        return {stage: getattr(self, f"{stage}_share") for stage in STAGES}

    def targets(self) -> dict[str, str]:
        return {stage: getattr(self, f"{stage}_target") for stage in STAGES}
