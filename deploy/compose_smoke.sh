#!/usr/bin/env bash
# The compose smoke run (`make compose-smoke`): installs what is missing (Debian's docker.io,
# debootstrap, docker-compose), starts a Docker engine when none runs (vfs storage, no bridge, no
# iptables), builds the base and the images (deploy/build_image.sh), brings docker-compose.yml up
# with REPLICAS (default rank=2) on the host network, waits for every health check, asks the
# gateway for recommendations with the API token (and checks a call without it is refused), checks
# the replicas and Prometheus' scrapes (deploy/compose_check.py), uploads an item, kills pre-rank
# and rank with kill -9 and checks both know the upload once restarted (deploy/compose_upload.py),
# and always tears everything down, the engine too when this script started it.
# Output: results/ops/compose_smoke.txt. Needs root, .venv (make setup), artifacts/current and
# data/ (make demo): the containers mount the host's artifacts/ and data/ read-only.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-results/ops/compose_smoke.txt}
if [[ -z ${_COMPOSE_SMOKE_TEED:-} ]]; then
    mkdir -p "$(dirname "$OUT")"
    _COMPOSE_SMOKE_TEED=1 bash "$0" "$@" 2>&1 | tee "$OUT"
    exit "${PIPESTATUS[0]}"
fi

REPLICAS=${REPLICAS-rank=2}  # stage=count ...; REPLICAS= for one of each
read -ra replicas <<<"$REPLICAS"
PROJECT=${PROJECT:-cascade}
RUN_DIR=.cascade/compose
PYTHON=.venv/bin/python
HEALTH_TIMEOUT_S=${HEALTH_TIMEOUT_S:-300}
# The engine's own, Debian-packaged client (BuildKit built in); compose v1 talks to the API.
export DOCKER=/usr/bin/docker
# Removing a container's vfs layers on a busy machine can outlast compose's 60 s API timeout.
export COMPOSE_HTTP_TIMEOUT=${COMPOSE_HTTP_TIMEOUT:-300}
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
fail() { echo "error: $*" >&2; exit 1; }

echo "compose smoke run, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# -- preflight: what the containers mount, and the host tools --------------------------------
[[ -x $PYTHON ]] || fail "no $PYTHON: run \`make setup\` first"
version_dir=$(readlink -f artifacts/current 2>/dev/null || true)
[[ -n $version_dir && -f $version_dir/manifest.json ]] \
    || fail "no model bundle at artifacts/current: run \`make demo\` first (the containers mount the host's artifacts/ and data/)"
dataset=$("$PYTHON" -c 'import json, sys
print(json.load(open(sys.argv[1]))["components"]["recall"]["dataset"])' "$version_dir/manifest.json")
[[ -d data/$dataset ]] || fail "no data/$dataset (the bundle's dataset): run \`make demo\` first"
echo "bundle: artifacts/current -> $(basename "$version_dir") ($dataset); replicas: ${REPLICAS:-none}"

missing=()
command -v dockerd >/dev/null && [[ -x /usr/bin/docker ]] || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if ((${#missing[@]})); then
    step "installing ${missing[*]} (Debian)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/dev/null
fi

# -- ports: the stack's, on loopback, must be free ---------------------------------------------
# Binding each port is the test (a listener on 0.0.0.0 or 127.0.0.1 both make it fail).
ports_report=$("$PYTHON" - "${replicas[@]}" <<'EOF'
import socket, sys
from cascade.topology import DEFAULT_METRICS_PORTS, DEFAULT_PORTS
from deploy.compose_replicas import parse_counts, replica_ports
ports = [*DEFAULT_PORTS.values(), *DEFAULT_METRICS_PORTS.values(), 9090]
for stage, count in parse_counts(sys.argv[1:]).items():
    ports += replica_ports(DEFAULT_PORTS[stage], count)[1:]
    ports += replica_ports(DEFAULT_METRICS_PORTS[stage], count)[1:]
taken = []
for port in ports:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            taken.append(port)
print(" ".join(map(str, ports)))
print(" ".join(map(str, taken)))
EOF
)
ports=$(sed -n 1p <<<"$ports_report")
taken=$(sed -n 2p <<<"$ports_report")
if [[ -n $taken ]]; then
    ss -Hltnp 2>/dev/null | grep -E ":(${taken// /|})\b" >&2 || true
    fail "ports in use: $taken (a local stack? \`make down\`); the compose stack needs them"
fi
echo "ports free: $ports"

# -- the engine, and teardown on any exit -------------------------------------------------------
mkdir -p "$RUN_DIR"
started_dockerd=""
override=""
teardown() {
    local status=$?
    step "teardown"
    if [[ -n $override ]]; then
        docker-compose -p "$PROJECT" -f docker-compose.yml -f "$override" \
            down --volumes --remove-orphans --timeout 20 2>&1 | grep -v '^$' || true
    fi
    if [[ -n $started_dockerd ]]; then
        kill "$started_dockerd" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$started_dockerd" 2>/dev/null; then kill -9 "$started_dockerd" || true; fi
        echo "dockerd stopped"
    fi
    echo "compose smoke run: $([[ $status == 0 ]] && echo PASSED || echo "FAILED (exit $status)")"
}
trap teardown EXIT

if ! "$DOCKER" info >/dev/null 2>&1; then
    step "starting dockerd (vfs, no bridge, no iptables; log $RUN_DIR/dockerd.log)"
    dockerd --storage-driver=vfs --bridge=none --iptables=false --ip6tables=false \
        --ip-masq=false >"$RUN_DIR/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
    "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$RUN_DIR/dockerd.log"; fail "dockerd did not start"; }
fi
echo "docker engine $("$DOCKER" version --format '{{.Server.Version}}'), $(docker-compose version --short 2>/dev/null || docker-compose version | head -1)"

# -- images -------------------------------------------------------------------------------------
step "building images"
build_started=$SECONDS
bash deploy/build_image.sh
echo "images built in $((SECONDS - build_started)) s"

# -- up, health ---------------------------------------------------------------------------------
step "compose up (network_mode: host everywhere)"
# The gateway refuses to start without an API token: one for this run (cascade recommend reads it).
export CASCADE_GATEWAY_API_TOKEN=${CASCADE_GATEWAY_API_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')}
override=$("$PYTHON" -m deploy.compose_replicas "${replicas[@]}" --out "$RUN_DIR")
compose=(docker-compose -p "$PROJECT" -f docker-compose.yml -f "$override")
up_started=$SECONDS
if ! "${compose[@]}" up -d --no-build 2>&1 | grep -v '^$'; then
    # e.g. a stage never turned healthy, so compose would not start the gateway
    "${compose[@]}" ps
    "${compose[@]}" logs --tail 20 2>&1 || true
    fail "docker-compose up failed"
fi
mapfile -t containers < <("${compose[@]}" ps -q)
echo "waiting for ${#containers[@]} health checks (grpc.health.v1 via python -m cascade.healthcheck)"
while true; do
    pending=0
    while read -r name state health; do
        case "$state/$health" in
            running/healthy) ;;
            running/starting) pending=$((pending + 1)) ;;
            *)
                service=${name#/"$PROJECT"_}
                "${compose[@]}" logs --tail 30 "${service%_*}" 2>&1 || true
                "${compose[@]}" ps
                fail "$name is $state/${health:-no health check}"
                ;;
        esac
    done < <("$DOCKER" inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "${containers[@]}")
    ((pending == 0)) && break
    if ((SECONDS - up_started > HEALTH_TIMEOUT_S)); then
        "${compose[@]}" ps
        fail "not healthy after $HEALTH_TIMEOUT_S s"
    fi
    sleep 2
done
echo "all healthy $((SECONDS - up_started)) s after up"
"${compose[@]}" ps

# -- ask, check ---------------------------------------------------------------------------------
step "cascade recommend --user 196 --debug (host venv -> gateway 127.0.0.1:50050)"
.venv/bin/cascade recommend --user 196 --debug --target 127.0.0.1:50050

step "traffic, replicas and Prometheus scrapes"
"$PYTHON" -m deploy.compose_check --config "$RUN_DIR/prometheus/prometheus-compose.yml"

step "an upload survives kill -9 of prerank and rank (they replay the gateway's event log)"
item=$("$PYTHON" -m deploy.compose_upload add)
echo "uploaded item $item through the gateway"
"$PYTHON" -m deploy.compose_upload check --item "$item"
killed=()
for service in prerank rank; do
    container=$("${compose[@]}" ps -q "$service")
    pid=$("$DOCKER" inspect -f '{{.State.Pid}}' "$container")
    kill -9 "$pid"  # the server process itself: a crash, which restart: unless-stopped restarts
    echo "kill -9 $service (host pid $pid)"
    killed+=("$container")
done
restarted=$SECONDS
while true; do
    states=$("$DOCKER" inspect -f '{{.RestartCount}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "${killed[@]}")
    grep -qv '^[1-9][0-9]* running healthy$' <<<"$states" || break
    ((SECONDS - restarted > HEALTH_TIMEOUT_S)) && { echo "$states"; fail "not healthy again after kill -9"; }
    sleep 2
done
echo "restarted and healthy again $((SECONDS - restarted)) s after kill -9"
"$PYTHON" -m deploy.compose_upload check --item "$item"

step "container resources"
"$DOCKER" stats --no-stream --format '{{.Name}}  cpu {{.CPUPerc}}  mem {{.MemUsage}}' "${containers[@]}"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^cascade' || true
