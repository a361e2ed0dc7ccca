"""deploy/k8s: the kustomization renders, every object passes the Kubernetes schemas (strict), and
the manifests fit the services they run; each check is shown to catch the mistake it exists for."""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from deploy import k8s_checks as checks
from deploy import k8s_security as security
from deploy.k8s_security import ALL_CHECKS
from deploy.k8s_validate import KUBERNETES_VERSIONS, OVERLAYS_DIR, main, render, schema_errors


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render()


def deployment(objects: list[dict], stage: str) -> dict:
    return checks.find(objects, "Deployment", stage)


def container(objects: list[dict], stage: str) -> dict:
    return deployment(objects, stage)["spec"]["template"]["spec"]["containers"][0]


def set_env(objects: list[dict], stage: str, name: str, value: str) -> None:
    env = container(objects, stage)["env"]
    env[:] = [item for item in env if item["name"] != name] + [{"name": name, "value": value}]


def test_renders_a_namespaced_set_per_stage(objects):
    kinds = Counter(o["kind"] for o in objects)
    assert kinds == {
        "Namespace": 1,
        "ConfigMap": 1,
        "PersistentVolumeClaim": 1,
        "Deployment": 5,
        "Service": 6,
        "HorizontalPodAutoscaler": 5,
        "PodDisruptionBudget": 5,
        "StatefulSet": 1,
        "NetworkPolicy": 7,
    }
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "cascade"
    }
    # The generated ConfigMap's name carries a hash, and every Deployment mounts that name.
    config_map = checks.of_kind(objects, "ConfigMap")[0]["metadata"]["name"]
    assert config_map.startswith("cascade-config-")
    for stage in checks.STAGES:
        volumes = deployment(objects, stage)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "config", "configMap": {"name": config_map}} in volumes


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_the_strict_schema(objects, version):
    assert schema_errors(objects, version) == []


def test_strict_schema_rejects_an_unknown_or_mistyped_field(objects):
    broken = copy.deepcopy(objects)
    container(broken, "rank")["readinesProbe"] = {"grpc": {"port": 50053}}
    checks.find(broken, "HorizontalPodAutoscaler", "recall")["spec"]["maxReplicas"] = "ten"
    errors = schema_errors(broken, KUBERNETES_VERSIONS[-1])
    assert len(errors) == 2
    assert "Deployment/rank" in errors[0] and "readinesProbe" in errors[0]
    assert "HorizontalPodAutoscaler/recall: spec.maxReplicas" in errors[1]


@pytest.mark.parametrize("title,check", ALL_CHECKS, ids=[c.__name__ for _, c in ALL_CHECKS])
def test_every_check_passes(objects, title, check):
    assert check(objects) == []


def _drop_config_mount(objects):
    mounts = container(objects, "rerank")["volumeMounts"]
    mounts[:] = [m for m in mounts if m["name"] != "config"]


def _unknown_key_in_settings_file(objects):
    config_map = checks.of_kind(objects, "ConfigMap")[0]
    config_map["data"]["prerank.toml"] = "max_candidate = 10\n" + config_map["data"]["prerank.toml"]


def drop_env(objects: list[dict], stage: str, name: str) -> None:
    env = container(objects, stage)["env"]
    env[:] = [item for item in env if item["name"] != name]


def _stage_gets_the_gateway_key(objects):
    volumes = deployment(objects, "rank")["spec"]["template"]["spec"]["volumes"]
    tls = next(v for v in volumes if v["name"] == "tls")
    tls["secret"]["items"].append({"key": "gateway.key", "path": "gateway.key"})


def _recall_open_to_a_namespace(objects):
    rule = checks.find(objects, "NetworkPolicy", "recall")["spec"]["ingress"][0]
    rule["from"].append({"namespaceSelector": {"matchLabels": {"team": "x"}}})


# (what goes wrong, how, the check that must catch it, a piece of its message)
MISTAKES = [
    ("misspelled variable", lambda o: set_env(o, "rank", "CASCADE_RANK_SERVER_HOTS", "0.0.0.0"),
     checks.check_settings, "CASCADE_RANK_SERVER_HOTS is no field of RankSettings"),
    ("another stage's variable", lambda o: set_env(o, "rank", "CASCADE_RECALL_MAX_COUNT", "9"),
     checks.check_settings, "CASCADE_RECALL_MAX_COUNT is no field"),
    ("bad value", lambda o: set_env(o, "recall", "CASCADE_RECALL_SERVER_GRACE_S", "soon"),
     checks.check_settings, "environment variable CASCADE_RECALL_SERVER_GRACE_S"),
    ("unknown key in the settings file", _unknown_key_in_settings_file,
     checks.check_settings, "unknown setting 'max_candidate'"),
    ("settings file not mounted", _drop_config_mount,
     checks.check_settings, "--config /etc/cascade/rerank.toml is on no mounted volume"),
    ("listening on loopback", lambda o: set_env(o, "rank", "CASCADE_RANK_SERVER_HOST", "127.0.0.1"),
     checks.check_settings, "server.host is '127.0.0.1'"),
    ("port override the manifests miss",
     lambda o: set_env(o, "rank", "CASCADE_RANK_SERVER_PORT", "6000"),
     checks.check_settings, "settings server.port=6000, the server's default is 50053"),
    ("grace period shorter than the drain",
     lambda o: deployment(o, "rank")["spec"]["template"]["spec"].update(
         terminationGracePeriodSeconds=12),
     checks.check_settings, "terminationGracePeriodSeconds (12)"),
    ("probe on the metrics port",
     lambda o: container(o, "prerank")["readinessProbe"]["grpc"].update(port=9152),
     checks.check_probes, "Deployment/prerank: readinessProbe"),
    ("no liveness probe", lambda o: container(o, "gateway").pop("livenessProbe"),
     checks.check_probes, "Deployment/gateway: livenessProbe"),
    ("writable root filesystem",
     lambda o: container(o, "rerank")["securityContext"].update(readOnlyRootFilesystem=False),
     checks.check_hardening, "lacks readOnlyRootFilesystem"),
    ("no memory limit", lambda o: container(o, "rank")["resources"].pop("limits"),
     checks.check_hardening, "memory limit"),
    ("a ClusterIP Service", lambda o: checks.find(o, "Service", "rank")["spec"].pop("clusterIP"),
     checks.check_services, "Service/rank: not headless"),
    ("selector typo",
     lambda o: checks.find(o, "Service", "rank")["spec"]["selector"].update(
         {"app.kubernetes.io/name": "rnak"}),
     checks.check_services, "Service/rank: selector matches 0"),
    ("Service port != container port",
     lambda o: checks.find(o, "Service", "recall")["spec"]["ports"][0].update(port=80),
     checks.check_services, "port 80 != its containerPort (50051)"),
    ("HPA on a missing Deployment",
     lambda o: checks.find(o, "HorizontalPodAutoscaler", "rank")["spec"]["scaleTargetRef"].update(
         name="ranker"),
     checks.check_scaling, "scaleTargetRef Deployment/ranker does not exist"),
    ("replicas fighting the HPA", lambda o: deployment(o, "recall")["spec"].update(replicas=3),
     checks.check_scaling, "Deployment/recall: sets replicas"),
    ("PDB selecting nothing",
     lambda o: checks.find(o, "PodDisruptionBudget", "rerank")["spec"]["selector"].update(
         matchLabels={"app.kubernetes.io/name": "re-rank"}),
     checks.check_scaling, "PodDisruptionBudget/rerank"),
    ("gateway dials the wrong port",
     lambda o: set_env(o, "gateway", "CASCADE_GATEWAY_RANK_TARGET",
                       "dns:///rank.$(POD_NAMESPACE).svc.cluster.local:50052"),
     checks.check_gateway_targets, "rank_target is 'dns:///rank.cascade.svc.cluster.local:50052'"),
    ("a stage without its Service", lambda o: o.remove(checks.find(o, "Service", "prerank")),
     checks.check_inventory, "stage prerank: no Service"),
    ("one stage on its own memory store",
     lambda o: set_env(o, "rank", "CASCADE_RANK_STORE", "memory"),
     checks.check_store, "the stages use different stores"),
    ("the store's port is not Redis's",
     lambda o: checks.find(o, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0][
         "ports"][0].update(containerPort=6380),
     checks.check_store, "StatefulSet/redis listens on [6380], not 6379"),
    ("the gateway's event log in its pod",
     lambda o: set_env(o, "gateway", "CASCADE_GATEWAY_EVENT_LOG", "file:/tmp/eventlog"),
     checks.check_event_log, "a pod's own log"),
    ("pre-rank forgets the uploads on a restart",
     lambda o: set_env(o, "prerank", "CASCADE_PRERANK_EVENT_LOG", ""),
     checks.check_event_log, "Deployment/prerank: event_log is ''"),
    ("a probe on the TLS port",
     lambda o: container(o, "rank")["livenessProbe"]["grpc"].update(port=50053),
     checks.check_probes, "Deployment/rank: livenessProbe must be a gRPC probe on port 50153"),
    ("a stage left plaintext",
     lambda o: drop_env(o, "rerank", "CASCADE_RERANK_SERVER_TLS_CLIENT_CA"),
     security.check_transport, "Deployment/rerank: server.tls_client_ca is not set"),
    ("a stage that also accepts other callers",
     lambda o: set_env(o, "recall", "CASCADE_RECALL_SERVER_ALLOWED_CALLERS", "cascade-tools"),
     security.check_transport, "Deployment/recall: allowed_callers lacks cascade-gateway"),
    ("a stage given the gateway's client key", _stage_gets_the_gateway_key,
     security.check_transport, "Deployment/rank: mounts the gateway's client key"),
    ("reflection on in the cluster",
     lambda o: set_env(o, "gateway", "CASCADE_GATEWAY_SERVER_REFLECTION", "true"),
     security.check_transport, "Deployment/gateway: server.reflection is on"),
    ("auth off said in the cluster",
     lambda o: set_env(o, "gateway", "CASCADE_GATEWAY_REQUIRE_API_TOKEN", "false"),
     security.check_transport, "require_api_token must be true"),
    ("no default deny",
     lambda o: o.remove(checks.find(o, "NetworkPolicy", "default-deny-ingress")),
     security.check_network_policies, "no default-deny ingress NetworkPolicy"),
    ("a stage's gRPC port open to every pod",
     lambda o: checks.find(o, "NetworkPolicy", "rank")["spec"]["ingress"][0].pop("from"),
     security.check_network_policies, "NetworkPolicy/rank: the gRPC port must admit the gateway"),
    ("a stage's gRPC port open to another namespace", _recall_open_to_a_namespace,
     security.check_network_policies, "NetworkPolicy/recall: the gRPC port must admit"),
    ("metrics open to any pod",
     lambda o: checks.find(o, "NetworkPolicy", "prerank")["spec"]["ingress"][1]["from"][0].pop(
         "podSelector"),
     security.check_network_policies, "NetworkPolicy/prerank: the metrics port must admit"),
    ("a stage without its NetworkPolicy",
     lambda o: o.remove(checks.find(o, "NetworkPolicy", "rerank")),
     security.check_network_policies, "Deployment/rerank: 0 NetworkPolicies select its pods"),
]  # fmt: skip


@pytest.mark.parametrize(
    "mutate,check,message", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_each_check_catches_its_mistake(objects, mutate, check, message):
    broken = copy.deepcopy(objects)
    mutate(broken)
    errors = check(broken)
    assert any(message in error for error in errors), errors


def test_cli_writes_the_report_and_exits_zero(tmp_path, capsys):
    out = tmp_path / "ops" / "k8s_validate.txt"
    assert main(["--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "FAIL" not in text and text.endswith("result: 0 errors\n")
    for version in KUBERNETES_VERSIONS:
        assert f"ok   Kubernetes {version}: 32/32" in text


def test_the_cli_validates_the_base_and_every_overlay(tmp_path):
    out = tmp_path / "k8s_validate.txt"
    assert main(["--out", str(out)]) == 0
    rendered = [line for line in out.read_text().splitlines() if line.startswith("render:")]
    assert [line.split()[3] for line in rendered] == [
        "deploy/k8s/base",
        *(
            f"deploy/k8s/overlays/{name}"
            for name in (
                "console",
                "ingress-only",
                "metrics-tls",
                "profile-default",
                "profile-simulated-lift",
                "profile-synthetic",
                "profile-synthetic-pool-2",
                "profile-synthetic-pool-3",
            )
        ),
        "deploy/k8s/training",
    ]


def test_the_ingress_only_overlay_admits_the_gateways_grpc_from_the_ingress_pods_alone(objects):
    overlay = render(OVERLAYS_DIR / "ingress-only")
    policy = checks.find(overlay, "NetworkPolicy", "gateway")["spec"]["ingress"]
    grpc_rules = [rule for rule in policy if rule["ports"][0]["port"] == "grpc"]
    assert [rule["from"] for rule in grpc_rules] == [
        [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                },
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
            }
        ]
    ]
    base = checks.find(objects, "NetworkPolicy", "gateway")["spec"]["ingress"]
    assert "from" not in next(rule for rule in base if rule["ports"][0]["port"] == "grpc")
    # Everything else is the base's: the metrics and probe rules, and every other object.
    assert [r for r in policy if r not in grpc_rules] == [
        r for r in base if r["ports"][0]["port"] != "grpc"
    ]

    def rest(objs: list[dict]) -> list[dict]:
        return [
            o for o in objs if (o["kind"], o["metadata"]["name"]) != ("NetworkPolicy", "gateway")
        ]

    assert rest(overlay) == rest(objects)


def test_the_metrics_tls_overlay_serves_every_metrics_port_over_https(objects):
    overlay = render(OVERLAYS_DIR / "metrics-tls")
    for stage in checks.STAGES:
        pod = deployment(overlay, stage)["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
        env = {e["name"]: e.get("value") for e in container(overlay, stage)["env"]}
        prefix = f"CASCADE_{stage.upper()}_SERVER_"
        assert env[prefix + "METRICS_TLS_CERT"] == env[prefix + "TLS_CERT"]
        assert env[prefix + "METRICS_TLS_KEY"] == env[prefix + "TLS_KEY"]
    # The settings classes take the new variables (the check that loads each container's).
    assert all(check(overlay) == [] for _, check in ALL_CHECKS)
