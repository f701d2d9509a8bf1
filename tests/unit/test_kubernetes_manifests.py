"""deploy/kubernetes/: valid against the Kubernetes API schemas, and consistent with the service.

Built-in kinds are validated offline and strictly (unknown fields refused) by
kubernetes-validate against the schemas of the oldest Kubernetes we target and of the newest
it ships. KEDA's ScaledObject and the Prometheus Operator's PodMonitor are CRDs it cannot
know: they are checked against the JSON Schemas below (the fields we rely on, with types).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
OLDEST_TARGET = "1.30"
SECRET_SETTINGS = {
    "OPTOUT_DATABASE_URL",
    "OPTOUT_REDIS_URL",
    "OPTOUT_API_TOKENS",
    "OPTOUT_KAFKA_PASSWORD",
}
IMAGE_UID = 10001

Resource = dict[str, Any]


def _documents(path: Path) -> Iterator[Resource]:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if document:
            yield document


@functools.cache
def _resources(*, with_example_secret: bool = True) -> list[tuple[str, Resource]]:
    # Cached: the tests read these; the ones that change a resource change a deep copy.
    found: list[tuple[str, Resource]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        if path.name == "secret.example.yaml" and not with_example_secret:
            continue
        found.extend((path.name, document) for document in _documents(path))
    return found


def _one(kind: str, name: str) -> Resource:
    matches = [r for _, r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def _deployments() -> list[Resource]:
    return [r for _, r in _resources() if r["kind"] == "Deployment"]


_STRING = {"type": "string", "minLength": 1}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _STRING, "namespace": _STRING, "labels": {"type": "object"}},
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    # https://keda.sh/docs/latest/reference/scaledobject-spec/ and the Kafka scaler's metadata.
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "apiVersion": _STRING,
                            "kind": _STRING,
                            "name": _STRING,
                        },
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "advanced": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "name": _STRING,
                                    # The HPA's own behavior type: checked below by
                                    # kubernetes-validate as part of a HorizontalPodAutoscaler.
                                    "behavior": {"type": "object"},
                                },
                            },
                        },
                    },
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"const": "kafka"},
                                "name": _STRING,
                                "metadata": {
                                    "type": "object",
                                    "required": [
                                        "bootstrapServers",
                                        "consumerGroup",
                                        "topic",
                                        "lagThreshold",
                                    ],
                                    # Every value of a trigger's metadata is a string in KEDA.
                                    "additionalProperties": {"type": "string"},
                                    "properties": {
                                        "lagThreshold": {
                                            "type": "string",
                                            "pattern": "^[1-9][0-9]*$",
                                        },
                                        "offsetResetPolicy": {"enum": ["earliest", "latest"]},
                                        "allowIdleConsumers": {"enum": ["true", "false"]},
                                        "sasl": {
                                            "enum": ["plaintext", "scram_sha256", "scram_sha512"]
                                        },
                                        "tls": {"enum": ["enable", "disable"]},
                                    },
                                },
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": _STRING},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
    # https://keda.sh/docs/latest/concepts/authentication/ (secretTargetRef)
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretTargetRef"],
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["parameter", "name", "key"],
                            "additionalProperties": False,
                            "properties": {
                                # The Kafka scaler's authentication parameters.
                                "parameter": {
                                    "enum": [
                                        "sasl",
                                        "username",
                                        "password",
                                        "tls",
                                        "ca",
                                        "cert",
                                        "key",
                                    ]
                                },
                                "name": _STRING,
                                "key": _STRING,
                            },
                        },
                    },
                },
            },
        },
    },
    # https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.PodMonitor
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "podMetricsEndpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {
                            "matchLabels": {
                                "type": "object",
                                "minProperties": 1,
                                "additionalProperties": {"type": "string"},
                            }
                        },
                    },
                    "namespaceSelector": {"type": "object"},
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port", "path"],
                            "additionalProperties": False,
                            "properties": {
                                "port": _STRING,
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "scrapeTimeout": {
                                    "type": "string",
                                    "pattern": "^[0-9]+(ms|s|m|h)$",
                                },
                                "scheme": {"enum": ["http", "https"]},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _kubernetes_versions() -> list[str]:
    return sorted({OLDEST_TARGET, kubernetes_validate.latest_version()})


@pytest.mark.parametrize("version", _kubernetes_versions())
def test_builtin_kinds_are_valid_strictly(version: str) -> None:
    checked = 0
    for filename, resource in _resources():
        if (resource["apiVersion"], resource["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(
                f"{filename}: {resource['kind']} invalid for {version} at {path}: {error.message}"
            )
        checked += 1
    assert checked >= 9


def test_custom_resources_match_their_schemas() -> None:
    seen = set()
    for _, resource in _resources():
        key = (resource["apiVersion"], resource["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(resource, CRD_SCHEMAS[key])
            seen.add(key)
    assert seen == set(CRD_SCHEMAS), f"missing: {set(CRD_SCHEMAS) - seen}"


@pytest.mark.parametrize("version", _kubernetes_versions())
def test_scaling_behaviour_is_a_valid_hpa_behavior(version: str) -> None:
    scaled = _one("ScaledObject", "optout-worker")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "probe"},
        "spec": {
            "scaleTargetRef": scaled["spec"]["scaleTargetRef"],
            "maxReplicas": scaled["spec"]["maxReplicaCount"],
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, version, strict=True)


def test_the_crd_schemas_refuse_what_they_should() -> None:
    scaled = _one("ScaledObject", "optout-worker")
    schema = CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]
    broken = yaml.safe_load(yaml.safe_dump(scaled))
    broken["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1000  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = yaml.safe_load(yaml.safe_dump(scaled))
    broken["spec"]["maxReplicas"] = 6  # the HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_strict_validation_refuses_an_unknown_field() -> None:
    deployment = yaml.safe_load(yaml.safe_dump(_one("Deployment", "optout-worker")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST_TARGET, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    assert kustomization["namespace"] == "optout"
    images = {image["name"] for image in kustomization["images"]}
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["image"].rsplit(":", 1)[0] in images


def test_every_resource_is_in_the_namespace() -> None:
    for filename, resource in _resources():
        if resource["kind"] == "Namespace":
            assert resource["metadata"]["name"] == "optout"
        else:
            assert resource["metadata"]["namespace"] == "optout", filename


def test_example_secret_is_marked_and_holds_only_placeholders() -> None:
    text = (MANIFESTS / "secret.example.yaml").read_text(encoding="utf-8")
    assert "EXAMPLE ONLY" in text
    (secret,) = list(_documents(MANIFESTS / "secret.example.yaml"))
    assert secret["kind"] == "Secret"
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, key
    # No real secret anywhere else: no Secret kind, no inline value of a secret setting.
    for filename, resource in _resources(with_example_secret=False):
        assert resource["kind"] != "Secret", filename


def test_configmap_holds_only_known_non_secret_settings_that_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _one("ConfigMap", "optout-config")["data"]
    known = {f"OPTOUT_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= known, set(data) - known
    assert not set(data) & SECRET_SETTINGS
    for name in list(known):
        monkeypatch.delenv(name, raising=False)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # refuses a value of the wrong type or out of range
    assert settings.http_host == "0.0.0.0"
    assert settings.admin_host == "0.0.0.0"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def test_secrets_come_from_the_secret_by_reference_only() -> None:
    needs = {
        "optout-worker": {"OPTOUT_DATABASE_URL", "OPTOUT_REDIS_URL", "OPTOUT_KAFKA_PASSWORD"},
        "optout-api": {
            "OPTOUT_DATABASE_URL",
            "OPTOUT_REDIS_URL",
            "OPTOUT_API_TOKENS",
            "OPTOUT_KAFKA_PASSWORD",
        },
    }
    keys = set(yaml.safe_load((MANIFESTS / "secret.example.yaml").read_text())["stringData"])
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            env = _env(container)
            for name in SECRET_SETTINGS & set(env):
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert "value" not in env[name]
                assert ref["name"] == "optout-secrets"
                assert ref["key"] in keys
            assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["optout-config"]
        (main,) = pod["containers"]
        assert set(_env(main)) & SECRET_SETTINGS == needs[deployment["metadata"]["name"]]


def test_pods_run_as_the_image_user_locked_down() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert f"USER {IMAGE_UID}:{IMAGE_UID}" in dockerfile
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), container["name"]


def test_probes_and_ports() -> None:
    """Probes on the admin port; the public port only where there is a public surface."""
    data = _one("ConfigMap", "optout-config")["data"]
    public, admin = int(data["OPTOUT_HTTP_PORT"]), int(data["OPTOUT_ADMIN_PORT"])
    assert public != admin
    ports = {"optout-api": {"http": public, "admin": admin}, "optout-worker": {"admin": admin}}
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        expected = ports[deployment["metadata"]["name"]]
        assert {p["name"]: p["containerPort"] for p in main["ports"]} == expected
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


def test_migrations_run_before_the_service_in_the_same_image() -> None:
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        (migrate,) = pod["initContainers"]
        (main,) = pod["containers"]
        assert migrate["args"] == ["migrate"]
        assert migrate["image"] == main["image"]
    assert _one("Deployment", "optout-worker")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ] == ["worker"]
    assert _one("Deployment", "optout-api")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ] == ["api"]


def _worker_shutdown_seconds() -> float:
    """The longest the worker may take to stop: a shutdown setting, else the rebalance grace.

    On SIGTERM the consumer leaves its group, and the revocation waits for the batch in flight
    for the rebalance grace (``grace_seconds=`` in the Kafka adapter). A setting for the
    shutdown deadline, once there, is taken instead.
    """
    defaults = [
        float(field.default)
        for name, field in Settings.model_fields.items()
        if re.search(r"shutdown|drain|grace", name) and name.endswith("_seconds")
    ]
    if defaults:
        return max(defaults)
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "service").rglob("*.py"))
    graces = [float(v) for v in re.findall(r"grace_seconds=([0-9.]+)", source)]
    assert graces, "no shutdown deadline found: update _worker_shutdown_seconds"
    return max(graces)


def test_worker_termination_grace_outlasts_its_shutdown_deadline() -> None:
    pod = _one("Deployment", "optout-worker")["spec"]["template"]["spec"]
    # Plus the time to close the clients (a Kafka request times out after 10 s).
    assert pod["terminationGracePeriodSeconds"] >= _worker_shutdown_seconds() + 15


def test_worker_replicas_belong_to_keda_and_stop_at_the_partition_count() -> None:
    worker = _one("Deployment", "optout-worker")
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replica count"
    scaled = _one("ScaledObject", "optout-worker")["spec"]
    partitions = Settings.model_construct().topic_partitions
    assert scaled["minReplicaCount"] == 1
    assert scaled["maxReplicaCount"] == partitions
    assert scaled["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    config = _one("ConfigMap", "optout-config")["data"]
    assert int(config["OPTOUT_TOPIC_PARTITIONS"]) == partitions
    (trigger,) = scaled["triggers"]
    assert trigger["metadata"]["bootstrapServers"] == config["OPTOUT_KAFKA_BOOTSTRAP"]
    assert trigger["metadata"]["consumerGroup"] == config["OPTOUT_CONSUMER_GROUP"]
    assert trigger["metadata"]["topic"] == config["OPTOUT_TOPIC_COMMANDS"]
    defaults = Settings.model_construct()
    assert config["OPTOUT_CONSUMER_GROUP"] == defaults.consumer_group
    assert config["OPTOUT_TOPIC_COMMANDS"] == defaults.topic_commands


def test_services_budgets_and_scrape_select_the_pods() -> None:
    labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in _deployments()
    }

    def selects(selector: dict[str, str], name: str) -> bool:
        return bool(selector.items() <= labels[name].items())

    api = _one("Service", "optout-api")["spec"]
    assert selects(api["selector"], "optout-api")
    # The API's Service routes the public port only, never the admin surface.
    assert [p["targetPort"] for p in api["ports"]] == ["http"]
    metrics = _one("Service", "optout-worker-metrics")["spec"]
    assert [p["targetPort"] for p in metrics["ports"]] == ["admin"]
    assert selects(metrics["selector"], "optout-worker")
    assert metrics["publishNotReadyAddresses"] is True
    for name in ("optout-api", "optout-worker"):
        budget = _one("PodDisruptionBudget", name)["spec"]
        assert selects(budget["selector"]["matchLabels"], name)
        monitor = _one("PodMonitor", "optout")["spec"]
        assert selects(monitor["selector"]["matchLabels"], name)
    (endpoint,) = _one("PodMonitor", "optout")["spec"]["podMetricsEndpoints"]
    assert endpoint == {**endpoint, "port": "admin", "path": "/metrics"}


def _policies() -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for _, r in _resources() if r["kind"] == "NetworkPolicy"}


def _kafka_port() -> int:
    bootstrap = _one("ConfigMap", "optout-config")["data"]["OPTOUT_KAFKA_BOOTSTRAP"]
    return int(bootstrap.rsplit(":", 1)[1])


def test_network_policies_deny_by_default_and_allow_only_the_dependencies() -> None:
    policies = _policies()
    deny = policies.pop("optout-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dependency_ports = {_kafka_port(), 5432, 6379, 53}
    sources = {
        "optout-worker": {("prometheus", "admin")},
        "optout-api": {
            ("ingress-nginx", "http"),
            ("sender", "http"),
            ("prometheus", "admin"),
        },
    }
    for deployment in _deployments():
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (policy,) = [
            p
            for p in policies.values()
            if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {port["port"] for rule in spec["egress"] for port in rule["ports"]}
        assert egress_ports == dependency_ports, name
        assert all(rule["to"] for rule in spec["egress"])  # never "anywhere"
        found = set()
        for ingress in spec["ingress"]:
            (port,) = ingress["ports"]
            assert port["protocol"] == "TCP"
            for peer in ingress["from"]:
                pod_labels = peer["podSelector"]["matchLabels"]
                who = (
                    "sender"
                    if "optout.example.com/sender" in pod_labels
                    else pod_labels["app.kubernetes.io/name"]
                )
                found.add((who, port["port"]))
        assert found == sources[name]


def test_kafka_clients_in_the_manifests_use_sasl_ssl_with_a_principal_each() -> None:
    data = _one("ConfigMap", "optout-config")["data"]
    assert data["OPTOUT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    ca_dir, ca_name = data["OPTOUT_KAFKA_CA_FILE"].rsplit("/", 1)
    users = set()
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        users.add(_env(main)["OPTOUT_KAFKA_USERNAME"]["value"])
        (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == ca_dir]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["items"] == [{"key": "kafka-ca.crt", "path": ca_name}]
    assert len(users) == len(_deployments())  # one principal per Deployment
    trigger = _one("ScaledObject", "optout-worker")["spec"]["triggers"][0]
    mechanism = data["OPTOUT_KAFKA_SASL_MECHANISM"].lower().replace("-", "_").replace("sha_", "sha")
    assert trigger["metadata"]["sasl"] == mechanism
    assert trigger["metadata"]["tls"] == "enable"
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {
        "username",
        "password",
        "ca",
    }
