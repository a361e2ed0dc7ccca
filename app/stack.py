"""The local stack: the five services as separate processes on loopback ports, one call to start.

`up` trains what is missing, starts recall, prerank (when built), rank, rerank and the gateway,
waits until every grpc.health.v1 check is SERVING and records the processes in RUN_DIR/stack.json;
`down` stops them (SIGTERM, then SIGKILL after a grace). With `store="redis"` a real
redis-server (cascade.redis_server: AOF, appendfsync always) starts first on a loopback port,
every service gets its URL as its `store` setting, and `down` stops it last. `running_stack` does
both for tests and benchmarks on free ports. The CLI (`cascade up/down`), the demo, the e2e eval
and bench/load use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from app.profiles import TrainSettings, foreign_settings, resolve_services, train_settings
from app.stages import SERVER_MODULES
from cascade import healthcheck
from cascade.artifacts import CURRENT, MANIFEST, ArtifactError, Bundle, publish
from cascade.config import SettingsError
from cascade.files import write_atomic
from cascade.profiles import PROFILE_VARIABLE, Profile, default_profile, load_profile
from cascade.profiles import variable as profile_variable
from cascade.redis_server import RedisProcess
from cascade.server import read_port_file
from cascade.topology import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, STAGES

# Start order: the stages first (cascade.topology.STAGES), the gateway last (it connects to all).
MODULES = SERVER_MODULES
REDIS = "redis"  # the shared online store's service name in stack.json (not a Python module)
REDIS_PORT = 6380  # loopback; 6379 is left to a system Redis
STATE_FILE = "stack.json"
# The supervisor (app/supervisor.py) of a stack started with supervise=True: its pid and metrics
# port, and its log of exits and restarts.
SUPERVISOR_STATE_FILE = "supervisor.json"
SUPERVISOR_LOG_FILE = "supervisor.log"


class StackError(RuntimeError):
    """The stack could not start; the message names the service and ends with its log tail."""


@dataclass
class Service:
    name: str
    port: int
    metrics_port: int
    pid: int
    log: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Stack:
    run_dir: Path
    services: list[Service]
    bundle: str
    dataset: str
    environments: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> env it got
    certs: Path | None = None  # with TLS: the folder `cascade certs` wrote (ca.pem, tools.pem, ...)
    profiles: list[dict[str, str]] = field(default_factory=list)  # served: name, sha256, file

    def address(self, name: str = "gateway") -> str:
        return next(s.address for s in self.services if s.name == name)

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.services)

    def describe(self) -> str:
        rows = [
            f"  {s.name:<8} {s.address:<16} metrics :{s.metrics_port}  pid {s.pid}  log {s.log}"
            for s in self.services
        ]
        served = " + ".join(p["name"] for p in self.profiles) or "?"
        head = f"cascade stack ({self.dataset}, profile {served}, bundle {self.bundle}):\n"
        return head + "\n".join(rows)


def bundle_dataset(artifacts: Path, bundle: str = "current") -> str | None:
    """The dataset `bundle` was trained on, or None when there is no usable bundle."""
    try:
        return Bundle.open(artifacts, bundle).component("recall")["dataset"]
    except (ArtifactError, OSError, KeyError, ValueError):
        return None


def prerank_available(artifacts: Path, bundle: str = "current") -> bool:
    """Prerank runs only when its server exists and the bundle carries its component; without
    it the gateway degrades prerank by design (recall order, truncated)."""
    if importlib.util.find_spec("services.prerank.server") is None:
        return False
    try:
        Bundle.open(artifacts, bundle).component("prerank")
    except (ArtifactError, OSError, KeyError, ValueError):
        return False
    return True


def latest_bundle(artifacts: Path, dataset: str, train: TrainSettings | None = None) -> str | None:
    """The newest complete bundle (recall, rank and rerank) trained on `dataset` (with `train`'s
    settings, when given) under artifacts, by manifest time; None when there is none."""
    found = []
    for manifest in Path(artifacts).glob(f"*/{MANIFEST}"):
        folder = manifest.parent
        if folder.name.startswith(".") or folder.name == CURRENT:  # links to a version
            continue
        try:
            bundle = Bundle(folder)
            complete = {"recall", "rank", "rerank"} <= set(bundle.manifest["components"])
            fits = train is None or train.matches(artifacts, folder.name)
            if complete and bundle.component("recall")["dataset"] == dataset and fits:
                found.append((manifest.stat().st_mtime, folder.name))
        except (ArtifactError, OSError, KeyError, ValueError):
            continue
    return max(found)[1] if found else None


def ensure_bundle(
    artifacts: Path,
    data_dir: Path,
    dataset: str,
    bundle: str = "current",
    profile: Profile | None = None,
) -> None:
    """Prepares the data; when `current` is missing, another dataset's or (with `profile`) built
    with other training settings than the profile's, publishes the newest complete bundle of
    `dataset` already under artifacts that fits, else trains every model with the profile."""
    cli = [sys.executable, "-m", "app.cli"]
    if not (data_dir / dataset).exists():
        if dataset not in ("ml-100k", "synthetic"):
            raise StackError(
                f"no dataset {data_dir / dataset}: import it with "
                f"`cascade data import --name {dataset} ...`"
            )
        print(f"== preparing {dataset} into {data_dir}", flush=True)
        subprocess.run([*cli, "data", "--source", dataset, "--data-dir", str(data_dir)], check=True)
    train = train_settings([profile]) if profile is not None else None
    found = bundle_dataset(artifacts, bundle)
    if found == dataset and (train is None or train.matches(artifacts, bundle)):
        return
    if found == dataset and profile is not None:  # with other training settings than its
        found = f"built with other training settings than profile {profile.name}'s ({train})"
    elif bundle != "current":
        found = f"{found or 'missing'}, not {dataset}"
    if bundle != "current":
        raise StackError(f"bundle {artifacts / bundle} is {found}")
    earlier = latest_bundle(artifacts, dataset, train)
    train_all = f"cascade train all --dataset {dataset}" + (
        f" --profile {profile.name}" if profile is not None else ""
    )
    if earlier is not None:  # e.g. `up` after another dataset's walk-through: minutes saved
        print(
            f"== {artifacts / bundle} is {found or 'missing'}: publishing {artifacts / earlier}, "
            f"the newest {dataset} bundle that fits (`{train_all}` trains anew)",
            flush=True,
        )
        publish(artifacts, earlier)
        return
    print(f"== {artifacts / bundle} is {found or 'missing'}: {train_all}")
    command = [*cli, "train", "all", "--dataset", dataset]
    command += ["--data-dir", str(data_dir), "--artifacts", str(artifacts)]
    if profile is not None:
        command += ["--profile", str(profile.path)]
    subprocess.run(command, check=True)


def _environment(
    name: str,
    port: int,
    metrics_port: int,
    settings: dict,
    targets: dict,
    port_file: Path,
    certs: Path | None = None,
) -> dict:
    prefix = f"CASCADE_{name.upper()}_"
    env = {
        f"{prefix}SERVER_PORT": str(port),
        f"{prefix}SERVER_METRICS_PORT": str(metrics_port),
        f"{prefix}SERVER_PORT_FILE": str(port_file),
        f"{prefix}ARTIFACTS": str(settings["artifacts"]),
        f"{prefix}BUNDLE": settings["bundle"],
        f"{prefix}DATA_DIR": str(settings["data_dir"]),
        # Loopback only, so reflection (grpcurl, debugging) costs nothing; production leaves it off.
        f"{prefix}SERVER_REFLECTION": "true",
    }
    if name == "gateway":
        env |= {f"{prefix}{stage.upper()}_TARGET": target for stage, target in targets.items()}
    if name in ("gateway", "recall", "prerank", "rank"):
        # The event log lives with the stack's run folder: `cascade up` keeps it across
        # up/down in .cascade/eventlog, and a test or benchmark stack gets its own. The gateway
        # writes it; recall replays it into its embedded store when it (re)starts, pre-rank and
        # rank the items uploaded while serving.
        env[f"{prefix}EVENT_LOG"] = f"file:{settings['run_dir'] / 'eventlog'}"
    if certs is not None:  # `cascade up --tls`: TLS at the gateway, mutual TLS between stages
        env |= {
            f"{prefix}SERVER_TLS_CERT": str(certs / "server.pem"),
            f"{prefix}SERVER_TLS_KEY": str(certs / "server-key.pem"),
        }
        if name == "gateway":
            env |= {
                f"{prefix}STAGE_TLS_CA": str(certs / "ca.pem"),
                f"{prefix}STAGE_TLS_CERT": str(certs / "gateway.pem"),
                f"{prefix}STAGE_TLS_KEY": str(certs / "gateway-key.pem"),
            }
        else:
            env[f"{prefix}SERVER_TLS_CLIENT_CA"] = str(certs / "ca.pem")
    return env


def up(
    artifacts: Path = Path("artifacts"),
    data_dir: Path = Path("data"),
    dataset: str = "ml-100k",
    run_dir: Path = Path(".cascade"),
    ports: dict[str, int] | None = None,
    metrics_ports: dict[str, int] | None = None,
    bundle: str = "current",
    timeout_s: float = 120.0,
    train: bool = True,
    extra_env: dict[str, str] | None = None,
    quiet: bool = False,
    only: tuple[str, ...] | None = None,
    store: str = "memory",
    tls: bool = False,
    supervise: bool = False,
    profiles: Sequence[Profile] = (),
    exact: bool = False,
    environments: dict[str, dict[str, str]] | None = None,
) -> Stack:
    """Starts the stack and waits for health. A port of 0 means a free one. Raises StackError
    (with the failing service's log tail) after stopping whatever had started. `only` starts a
    subset (tests). `store`: "memory" (each process its own), "redis" (start a redis-server on
    ports["redis"], default 6380, and share it) or a redis:// URL of a server already running.
    `tls`: certificates from `cascade certs` under run_dir/certs (its CA is kept across runs),
    TLS on the gateway's port and mutual TLS on every stage port. `supervise`: a background
    supervisor restarts services that die (app/supervisor.py). `profiles`: the profile files
    every service reads (cascade.profiles; default: the dataset's default profile), checked for
    every service before any starts; `exact`: refuse when the caller's environment sets a service
    setting the stack does not set itself (the run serves exactly the profiles). `environments`:
    each service's settings in place of the local stack's own (deploy/compose_local.py:
    docker-compose.yml's); the stack still sets the ports, port files, stage targets and `store`."""
    artifacts, data_dir, run_dir = Path(artifacts), Path(data_dir), Path(run_dir)
    served = list(profiles) or [load_profile(default_profile(dataset))]
    check_profiles(served, extra_env, exact, tls)  # before anything starts or trains
    if train:
        ensure_bundle(artifacts, data_dir, dataset, bundle, served[0])
    elif bundle_dataset(artifacts, bundle) is None:
        raise StackError(f"no bundle {artifacts / bundle}: run `cascade train all`")
    if (run_dir / STATE_FILE).exists():
        down(run_dir, quiet=True)  # a stale stack from an earlier run would hold the ports
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [s for s in STAGES if s != "prerank" or prerank_available(artifacts, bundle)]
    names.append("gateway")
    names = [n for n in names if only is None or n in only]
    redis_port = (ports or {}).get(REDIS, REDIS_PORT)
    ports = {**DEFAULT_PORTS, **(ports or {})}
    metrics_ports = {**DEFAULT_METRICS_PORTS, **(metrics_ports or {})}
    settings = {
        "artifacts": artifacts.resolve(),
        "bundle": bundle,
        "data_dir": data_dir.resolve(),
        "run_dir": run_dir.resolve(),
    }
    certs = None
    if tls:
        from cascade.certs import make_certificates

        certs = make_certificates(run_dir / "certs", reuse_ca=True).folder.resolve()
    stack = Stack(run_dir, [], bundle, dataset, certs=certs)
    stack.profiles = [profile.record() for profile in served]
    try:
        if store == "redis":
            server = RedisProcess.start(run_dir / REDIS, redis_port)  # 0: a free port
            stack.services.append(
                Service(REDIS, server.port, 0, server.pid, str(run_dir / REDIS / "redis.log"))
            )
            _save(stack)
            store = server.url
        extra = {
            name: {f"CASCADE_{name.upper()}_STORE": store}
            | (extra_env or {})
            | profile_variable(served)
            for name in names
        }
        # Stages first (a port of 0: each binds an ephemeral one and reports it in its port
        # file), then the gateway, pointed at the ports they actually hold.
        for name in [n for n in names if n != "gateway"]:
            own = (environments or {}).get(name)
            _start(stack, name, ports[name], metrics_ports[name], settings, {}, extra[name], own)
        _learn_ports(stack, timeout_s)
        if "gateway" in names:
            # Prerank's address even when it does not run: calls fail fast, the gateway degrades
            # it (port 1: nothing listens there when prerank had no fixed port).
            running = {s.name: s.address for s in stack.services}
            targets = {st: running.get(st, f"127.0.0.1:{ports[st] or 1}") for st in STAGES}
            _start(
                stack,
                "gateway",
                ports["gateway"],
                metrics_ports["gateway"],
                settings,
                targets,
                extra["gateway"],
                (environments or {}).get("gateway"),
            )
            _learn_ports(stack, timeout_s)
        wait_healthy(stack, timeout_s)
        if supervise:
            spawn_supervisor(run_dir)
    except BaseException:
        down(run_dir, quiet=True)
        raise
    if not quiet:
        print(stack.describe(), flush=True)
    return stack


def _stack_variables(extra_env: dict[str, str] | None, tls: bool) -> dict[str, set[str]]:
    """Per service, the environment variables the stack sets itself (its wiring: ports, paths,
    certificates, the store, the caller's extra_env and the profile file)."""
    placeholders = {"artifacts": Path(), "bundle": "", "data_dir": Path(), "run_dir": Path()}
    targets = dict.fromkeys(STAGES, "")
    certs = Path() if tls else None
    return {
        name: set(_environment(name, 0, 0, placeholders, targets, Path(), certs))
        | {f"CASCADE_{name.upper()}_STORE", PROFILE_VARIABLE, *(extra_env or {})}
        for name in MODULES
    }


def check_profiles(
    served: Sequence[Profile],
    extra_env: dict[str, str] | None = None,
    exact: bool = False,
    tls: bool = False,
) -> None:
    """What `up` checks before it starts anything: every service's settings resolve from the
    profiles and its environment (StackError naming the service, file, key and reason); with
    `exact`, no setting comes from an environment variable the stack does not set itself."""
    environments = {name: os.environ | (extra_env or {}) for name in MODULES}
    try:
        rows = resolve_services(served, environments)
    except SettingsError as error:
        raise StackError(f"refusing to start any service: {error}") from error
    foreign = foreign_settings(rows, _stack_variables(extra_env, tls)) if exact else []
    if foreign:
        names = " + ".join(profile.name for profile in served)
        raise StackError(
            f"this run serves exactly profile {names}, but the environment sets "
            f"{'; '.join(foreign)}: unset them, or put them in a profile file "
            "(deploy/profiles/NAME.toml) and name it with --profile"
        )


def _port_file(stack: Stack, name: str) -> Path:
    return stack.run_dir / f"{name}.ports.json"


# What `up` sets itself even where a service's own environment is given.
ADDRESS_SETTINGS = ("_SERVER_PORT", "_SERVER_METRICS_PORT", "_SERVER_PORT_FILE", "_TARGET")


def _start(
    stack: Stack,
    name: str,
    port: int,
    metrics_port: int,
    settings: dict,
    targets: dict,
    extra_env: dict[str, str] | None,
    own: dict[str, str] | None = None,
) -> None:
    port_file = _port_file(stack, name)
    env = _environment(name, port, metrics_port, settings, targets, port_file, stack.certs)
    if own is not None:  # the service's own settings; the addresses stay the stack's
        env = {k: v for k, v in env.items() if k.endswith(ADDRESS_SETTINGS)} | own
    stack.environments[name] = env | (extra_env or {})
    (stack.run_dir / f"{name}.log").write_text("")  # this run's log only; restarts append
    stack.services.append(_launch(stack, name, port, metrics_port))
    _save(stack)


def _learn_ports(stack: Stack, timeout_s: float) -> None:
    """Waits for every launched service's port file and records the ports it bound."""
    deadline = time.monotonic() + timeout_s
    for service in [s for s in stack.services if s.name != REDIS]:  # it answered PING already
        while (ports := read_port_file(_port_file(stack, service.name))) is None:
            if not _alive(service.pid):
                raise StackError(f"{service.name} exited during start-up:\n{log_tail(service.log)}")
            if time.monotonic() > deadline:
                tail = log_tail(service.log)
                raise StackError(f"{service.name} bound no port after {timeout_s:.0f} s:\n{tail}")
            time.sleep(0.05)
        service.port, service.metrics_port = ports[0], ports[1] if ports[1] is not None else -1
    _save(stack)


def _launch(
    stack: Stack, name: str, port: int, metrics_port: int, module: str | None = None
) -> Service:
    _port_file(stack, name).unlink(missing_ok=True)  # a stale file from an earlier run
    log_path = stack.run_dir / f"{name}.log"
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module or MODULES[name]],
            env=os.environ | stack.environments[name],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Service(name, port, metrics_port, process.pid, str(log_path))


def add_replica(stack: Stack, name: str, port: int, timeout_s: float = 120.0) -> Service:
    """Starts one more process of stage `name` on `port` with the first one's settings, waits
    until it is SERVING, and records it (so `down` stops it). The gateway reaches it only when
    its target lists the port (e.g. CASCADE_GATEWAY_RANK_TARGET=127.0.0.1:a,127.0.0.1:b)."""
    prefix = f"CASCADE_{name.upper()}_"
    replica = f"{name}-{sum(s.name == name for s in stack.services) + 1}"
    env = stack.environments[name] | {
        f"{prefix}SERVER_PORT": str(port),
        f"{prefix}SERVER_METRICS_PORT": "0",
        f"{prefix}SERVER_PORT_FILE": str(_port_file(stack, replica)),
    }
    stack.environments[replica] = env
    (stack.run_dir / f"{replica}.log").write_text("")
    service = _launch(stack, replica, port, 0, module=MODULES[name])
    deadline = time.monotonic() + timeout_s
    while (ports := read_port_file(_port_file(stack, replica))) is None:
        if not _alive(service.pid) or time.monotonic() > deadline:
            raise StackError(f"{replica} did not start:\n{log_tail(service.log)}")
        time.sleep(0.05)
    service.metrics_port = ports[1] if ports[1] is not None else -1
    service.name = name  # the same stage; `address(name)` still finds the first one
    stack.services.append(service)
    _save(stack)
    wait_healthy(
        Stack(stack.run_dir, [service], stack.bundle, stack.dataset, certs=stack.certs), timeout_s
    )
    return service


def restart(stack: Stack, name: str, timeout_s: float = 120.0) -> Service:
    """Starts service `name` of a stack this process brought up again, on the same ports and
    settings (killing it first if it still runs), and waits until it is SERVING."""
    index = next(i for i, s in enumerate(stack.services) if s.name == name)
    old = stack.services[index]
    if _alive(old.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, signal.SIGKILL)
        while _alive(old.pid):
            time.sleep(0.05)
    service = relaunch(stack, index)
    if name == REDIS:
        return service
    wait_healthy(
        Stack(stack.run_dir, [service], stack.bundle, stack.dataset, certs=stack.certs), timeout_s
    )
    return service


def relaunch(stack: Stack, index: int) -> Service:
    """Starts the stack's service at `index` again (it has exited) on the ports it held, not 0
    again: clients and Prometheus keep their addresses. Redis reloads its AOF from its folder."""
    old = stack.services[index]
    if old.name == REDIS:
        server = RedisProcess.start(stack.run_dir / REDIS, old.port)
        service = Service(REDIS, old.port, 0, server.pid, old.log)
    else:
        prefix = f"CASCADE_{old.name.upper()}_"
        stack.environments[old.name] = stack.environments[old.name] | {
            f"{prefix}SERVER_PORT": str(old.port),
            f"{prefix}SERVER_METRICS_PORT": str(old.metrics_port),
        }
        service = _launch(stack, old.name, old.port, old.metrics_port)
    stack.services[index] = service
    _save(stack)
    return service


def wait_healthy(stack: Stack, timeout_s: float) -> None:
    """Polls every service's health check until all are SERVING; a service that exits or stays
    unhealthy past the deadline raises StackError with its log tail."""
    deadline = time.monotonic() + timeout_s
    pending = [s for s in stack.services if s.name != REDIS]  # answered PING when it started
    while pending:
        service = pending[0]
        if not _alive(service.pid):
            raise StackError(f"{service.name} exited during start-up:\n{log_tail(service.log)}")
        if _serving(service.address, stack.certs):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise StackError(
                f"{service.name} not SERVING on {service.address} after {timeout_s:.0f} s:\n"
                f"{log_tail(service.log)}"
            )
        time.sleep(0.2)


def wait_impressions_logged(stack: Stack, timeout_s: float = 60.0) -> None:
    """Until the gateway has logged (or counted as dropped) every answer it gave so far: its
    `cascade_gateway_impressions_pending` gauge reads 0 (gateway/impressions.py). A caller that
    read its answers before calling sees them all in the event log afterwards."""
    gateway = next(s for s in stack.services if s.name == "gateway")
    url = f"http://127.0.0.1:{gateway.metrics_port}/metrics"
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(url, timeout=5.0) as response:  # loopback only
            families = text_string_to_metric_families(response.read().decode())
        pending = [
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "cascade_gateway_impressions_pending"
        ]
        if not pending:
            raise StackError(f"the gateway's metrics at {url} have no impressions_pending gauge")
        if pending[0] == 0:
            return
        if time.monotonic() > deadline:
            raise StackError(f"{pending[0]:.0f} impressions still unwritten after {timeout_s} s")
        time.sleep(0.05)


def _serving(address: str, certs: Path | None = None) -> bool:
    if certs is None:
        return healthcheck.check(address, timeout_s=1.0) == "SERVING"
    # Under mutual TLS a client certificate is needed even for health; the tools' one will do.
    files = (certs / "ca.pem", certs / "tools.pem", certs / "tools-key.pem")
    return healthcheck.check(address, "", 1.0, *files) == "SERVING"


def log_tail(path: str | Path, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"    | {line}" for line in text[-lines:])


def running(run_dir: Path = Path(".cascade")) -> Stack | None:
    """The stack recorded in run_dir when any of its processes still runs (a pid checked to be
    that service's, not a recycled one), else None. Its `services` are the live ones only."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    services = [Service(**s) for s in state.get("services", [])]
    alive = [s for s in services if _is_ours(s) and _alive(s.pid)]
    if not alive:
        return None
    found = Stack(Path(run_dir), alive, state.get("bundle", "?"), state.get("dataset", "?"))
    found.profiles = state.get("profiles", [])
    return found


def served_dataset(target: str, run_dir: Path = Path(".cascade")) -> tuple[str, Path] | None:
    """The dataset name and data folder of the stack recorded in run_dir when its gateway is the
    one at `target` (so `cascade recommend` shows that stack's titles, never another's); None
    when run_dir records no running gateway there."""
    found = running(run_dir)
    if found is None or not found.has("gateway"):
        return None
    gateway_port = found.address("gateway").rpartition(":")[2]
    host, _, port = target.rpartition(":")
    if port != gateway_port or host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
        return None
    state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    data_dir = state.get("environments", {}).get("gateway", {}).get("CASCADE_GATEWAY_DATA_DIR")
    return (found.dataset, Path(data_dir)) if data_dir else None


def down(run_dir: Path = Path(".cascade"), grace_s: float = 10.0, quiet: bool = False) -> int:
    """Stops the stack recorded in run_dir: SIGTERM to each process group, wait up to grace_s,
    then SIGKILL. Returns how many processes were stopped."""
    stop_supervisor(run_dir)  # first: it would start the services again
    state = Path(run_dir) / STATE_FILE
    if not state.exists():
        if not quiet:
            print(f"no stack recorded in {state}")
        return 0
    services = [Service(**s) for s in json.loads(state.read_text())["services"]]
    mine = [s for s in services if _is_ours(s)]  # a recycled pid is someone else's: leave it
    # Gateway first, so no new calls reach the stages; the shared store (started first) last.
    for service in reversed([s for s in mine if s.name != REDIS]):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(s.pid) for s in mine if s.name != REDIS) and time.monotonic() < deadline:
        time.sleep(0.1)
    for service in mine:  # redis-server: SIGTERM writes the AOF out and exits
        if service.name == REDIS:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGTERM)
    while any(_alive(s.pid) for s in mine) and time.monotonic() < deadline + grace_s:
        time.sleep(0.1)
    for service in mine:
        if _alive(service.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)
            if not quiet:
                print(f"{service.name}: killed after {grace_s:.0f} s grace")
    for service in mine:
        _reap(service.pid)
    state.unlink()
    if not quiet:
        print(f"stopped {len(mine)} services: {', '.join(s.name for s in mine)}")
    return len(mine)


def _is_ours(service: Service) -> bool:
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes()
    except OSError:
        return False
    if service.name == REDIS:
        return b"redis-server" in cmdline
    return MODULES[service.name].encode() in cmdline


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return status != "Z"


def _reap(pid: int) -> None:
    """Collects a child that exited (when this process started it), so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _save(stack: Stack) -> None:
    state = {
        "bundle": stack.bundle,
        "dataset": stack.dataset,
        "profiles": stack.profiles,
        "services": [asdict(s) for s in stack.services],
        "environments": stack.environments,
    }
    # Owner-only: the environments may hold the gateway's API token (the supervisor needs them).
    # Atomic too: the supervisor and `cascade down` read it while a relaunch rewrites it.
    write_atomic(stack.run_dir / STATE_FILE, json.dumps(state, indent=2), mode=0o600)


@contextlib.contextmanager
def running_stack(run_dir: Path, **options) -> Iterator[Stack]:
    """A stack on free ports (unless given) that is always stopped, for tests and benchmarks."""
    options.setdefault("ports", dict.fromkeys([*DEFAULT_PORTS, REDIS], 0))
    options.setdefault("metrics_ports", dict.fromkeys(DEFAULT_PORTS, 0))
    options.setdefault("quiet", True)
    stack = up(run_dir=run_dir, **options)
    try:
        yield stack
    finally:
        down(run_dir, quiet=True)


def spawn_supervisor(run_dir: Path, metrics_port: int = 0, timeout_s: float = 10.0) -> int:
    """Starts the supervisor of the stack in run_dir in the background; returns its pid once it
    has written its state file."""
    run_dir = Path(run_dir)
    (run_dir / SUPERVISOR_STATE_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", "app.supervisor", "--run-dir", str(run_dir)]
    command += ["--metrics-port", str(metrics_port)]
    with open(run_dir / SUPERVISOR_LOG_FILE, "a") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while not (run_dir / SUPERVISOR_STATE_FILE).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise StackError(
                f"supervisor did not start:\n{log_tail(run_dir / SUPERVISOR_LOG_FILE)}"
            )
        time.sleep(0.05)
    return process.pid


def stop_supervisor(run_dir: Path, grace_s: float = 5.0) -> bool:
    """Stops the supervisor of run_dir (before the services, or it would start them again)."""
    state = Path(run_dir) / SUPERVISOR_STATE_FILE
    if not state.exists():
        return False
    pid = json.loads(state.read_text())["pid"]
    try:
        ours = b"app.supervisor" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        ours = False
    if ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    return ours
