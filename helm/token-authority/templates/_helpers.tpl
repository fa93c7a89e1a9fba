{{/*
The chart name, or nameOverride.
*/}}
{{- define "token-authority.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: fullnameOverride, or <release>-<chart> (just <release> when the
release name already contains the chart name). Truncated to 63 characters, the DNS label limit.
*/}}
{{- define "token-authority.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The StatefulSet's name: the fullname within 52 characters. Its pods carry the label
controller-revision-hash=<name>-<hash of up to 10 characters>, a label value of at most 63
characters: a longer name is accepted, and its pod is never created (kubernetes#64023).
*/}}
{{- define "token-authority.statefulSetName" -}}
{{- include "token-authority.fullname" . | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
chart-name-version, as used by the helm.sh/chart label.
*/}}
{{- define "token-authority.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the objects of the server (everything but the test pod).
*/}}
{{- define "token-authority.labels" -}}
{{ include "token-authority.selectorLabels" . }}
{{ include "token-authority.commonLabels" . }}
{{- end }}

{{/*
The labels every object shares, minus name/instance/component.
*/}}
{{- define "token-authority.commonLabels" -}}
helm.sh/chart: {{ include "token-authority.chart" . }}
app.kubernetes.io/version: {{ regexReplaceAll "[^-A-Za-z0-9_.]" (include "token-authority.imageTag" .) "_" | trunc 63 | trimAll "-_." | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: token-authority
{{- end }}

{{/*
Selector labels: stable for the life of a release (a StatefulSet's selector is immutable).
*/}}
{{- define "token-authority.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-authority.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Labels of the `helm test` pod (NetworkPolicy lets it reach the gRPC port).
*/}}
{{- define "token-authority.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "token-authority.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/*
The ServiceAccount the pod runs as.
*/}}
{{- define "token-authority.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "token-authority.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret holding the admin token (key admin-token) and the KEK (key kek).
*/}}
{{- define "token-authority.secretName" -}}
{{- default (include "token-authority.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{/*
The headless Service that governs the StatefulSet.
*/}}
{{- define "token-authority.headlessServiceName" -}}
{{- printf "%s-headless" (include "token-authority.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
The image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "token-authority.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "token-authority.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "token-authority.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Where things live inside the pod. The server reads them from TA_* env vars the StatefulSet sets.
*/}}
{{- define "token-authority.dataDir" -}}
/var/lib/token-authority
{{- end }}

{{- define "token-authority.secretsDir" -}}
/etc/token-authority/secrets
{{- end }}

{{/*
host:port to bind, with IPv6 addresses in brackets. Call with (list bindAddress port).
*/}}
{{- define "token-authority.listen" -}}
{{- $addr := index . 0 }}
{{- $port := index . 1 }}
{{- if contains ":" $addr }}
{{- printf "[%s]:%d" $addr (int $port) }}
{{- else }}
{{- printf "%s:%d" $addr (int $port) }}
{{- end }}
{{- end }}

{{/*
The `iss` claim: config.issuer, else the in-cluster URL of the HTTP port of the Service,
which is also where the JWKS and the discovery document are served (https:// when the server
terminates TLS, since TLS covers the HTTP port too).
*/}}
{{- define "token-authority.issuer" -}}
{{- if .Values.config.issuer }}
{{- .Values.config.issuer }}
{{- else }}
{{- $scheme := ternary "https" "http" (eq (include "token-authority.tlsEnabled" .) "true") }}
{{- printf "%s://%s:%d" $scheme (include "token-authority.serviceHost" .) (int .Values.service.ports.http) }}
{{- end }}
{{- end }}

{{/*
TLS: whether the server terminates TLS itself (every tls.mode but "disabled").
*/}}
{{- define "token-authority.tlsEnabled" -}}
{{- if ne .Values.tls.mode "disabled" }}true{{- end }}
{{- end }}

{{/*
The Secret holding tls.crt / tls.key (and ca.crt): the generated one, the one cert-manager
writes for the Certificate, or tls.existingSecret.name.
*/}}
{{- define "token-authority.tlsSecretName" -}}
{{- if eq .Values.tls.mode "existingSecret" }}
{{- .Values.tls.existingSecret.name }}
{{- else }}
{{- printf "%s-tls" (include "token-authority.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
Whether that Secret has a ca.crt clients can verify the server with: always for the generated
CA; for cert-manager and an existing Secret, tls.caCert says.
*/}}
{{- define "token-authority.tlsHasCa" -}}
{{- if eq .Values.tls.mode "generated" }}true{{- else if and (include "token-authority.tlsEnabled" .) .Values.tls.caCert }}true{{- end }}
{{- end }}

{{/*
The DNS names the server certificate covers: the Service under every name a client in the
cluster may use, the pod's stable name under the headless Service, and tls.extraDnsNames.
*/}}
{{- define "token-authority.tlsDnsNames" -}}
{{- $fullname := include "token-authority.fullname" . }}
{{- $headless := include "token-authority.headlessServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.%s" $fullname $ns .Values.clusterDomain) }}
{{- $names = append $names (printf "*.%s.%s.svc.%s" $headless $ns .Values.clusterDomain) }}
{{- $names = concat $names .Values.tls.extraDnsNames }}
{{- toJson $names }}
{{- end }}

{{/*
The in-cluster DNS name of the Service, also what clients name when verifying the certificate.
*/}}
{{- define "token-authority.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "token-authority.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "token-authority.tlsDir" -}}
/etc/token-authority/tls
{{- end }}

{{- define "token-authority.clientCaDir" -}}
/etc/token-authority/client-ca
{{- end }}

{{- define "token-authority.policyDir" -}}
/etc/token-authority/policy
{{- end }}

{{/*
Where the pod's own projected service-account token and the cluster CA are mounted: the
standard path, free because the automatic mount is off.
*/}}
{{- define "token-authority.kubeTokenDir" -}}
/var/run/secrets/kubernetes.io/serviceaccount
{{- end }}

{{/*
The issuer URL of the cluster's service-account tokens.
*/}}
{{- define "token-authority.kubernetesIssuerUrl" -}}
{{- default (printf "https://kubernetes.default.svc.%s" .Values.clusterDomain) .Values.policy.kubernetesIssuer.issuer }}
{{- end }}

{{/*
The ConfigMap holding the policy.
*/}}
{{- define "token-authority.policyConfigMapName" -}}
{{- printf "%s-policy" (include "token-authority.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
A value as TOML: strings (JSON escapes are TOML escapes), booleans, whole numbers as integers
(Helm reads every YAML number as a float; toToml would write 3 as 3.0), other numbers, arrays,
and maps as inline tables. Call with the value itself; recursive for arrays and maps.
*/}}
{{- define "token-authority.tomlValue" -}}
{{- $v := . }}
{{- $kind := kindOf $v }}
{{- if eq $kind "string" }}
{{- toJson $v }}
{{- else if eq $kind "bool" }}
{{- ternary "true" "false" $v }}
{{- else if or (eq $kind "float64") (eq $kind "float32") }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (eq $kind "int") (eq $kind "int64") }}
{{- $v }}
{{- else if eq $kind "slice" }}
{{- $items := list }}
{{- range $v }}{{ $items = append $items (include "token-authority.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if eq $kind "map" }}
{{- $items := list }}
{{- range $k := keys $v | sortAlpha }}{{ $items = append $items (printf "%s = %s" (toJson $k) (include "token-authority.tomlValue" (get $v $k))) }}{{ end }}
{{- printf "{%s}" (join ", " $items) }}
{{- else }}
{{- fail (printf "policy: a %s value cannot be written as TOML" $kind) }}
{{- end }}
{{- end }}

{{/*
One TOML array-of-tables entry: (list "issuer" dict) -> [[issuer]] and its keys, sorted.
*/}}
{{- define "token-authority.tomlTable" -}}
[[{{ index . 0 }}]]
{{- include "token-authority.tomlKeys" (index . 1) }}
{{- end }}

{{/*
A table the policy file has at most one of: (list "txn" dict) -> [txn] and its keys, sorted.
*/}}
{{- define "token-authority.tomlSingleTable" -}}
[{{ index . 0 }}]
{{- include "token-authority.tomlKeys" (index . 1) }}
{{- end }}

{{/*
The keys of a table, sorted, each on a line of its own after the header.
*/}}
{{- define "token-authority.tomlKeys" -}}
{{- $table := . }}
{{- range $k := keys $table | sortAlpha }}
{{ $k }} = {{ include "token-authority.tomlValue" (get $table $k) }}
{{- end }}
{{- end }}

{{/*
"true" when the keys live in a PostgreSQL database shared by the replicas (store.postgres.url
or .host set): the chart then runs a Deployment instead of the sled StatefulSet.
*/}}
{{- define "token-authority.sharedStore" -}}
{{- if or .Values.store.postgres.url .Values.store.postgres.host }}true{{- end }}
{{- end }}

{{/*
How many pods the Deployment runs: replicaCount, else 3. (The sled StatefulSet always runs one.)
*/}}
{{- define "token-authority.replicaCount" -}}
{{- if kindIs "invalid" .Values.replicaCount }}3{{- else }}{{ int .Values.replicaCount }}{{- end }}
{{- end }}

{{/*
TA_STORE: store.postgres.url as given, else a URL built from host, port, database, user and
sslMode (the schema keeps those free of URL syntax). Never a password: that is a file.
*/}}
{{- define "token-authority.storeUrl" -}}
{{- $pg := .Values.store.postgres }}
{{- if $pg.url }}
{{- $pg.url }}
{{- else }}
{{- $host := ternary (printf "[%s]" $pg.host) $pg.host (contains ":" $pg.host) }}
{{- printf "postgres://%s@%s:%d/%s?sslmode=%s" $pg.user $host (int $pg.port) $pg.database $pg.sslMode }}
{{- end }}
{{- end }}

{{/*
The database port, for the NetworkPolicy's egress rule: the port of store.postgres.url (5432
when it names none), else store.postgres.port.
*/}}
{{- /*
The database's ports, comma-separated: each host's of the URL (several for a multi-host URL,
postgres://u@a:5432,b:5433/db), a host without one taking the `port=` parameter's (one for all,
or one per host) or 5432; else store.postgres.port.
*/}}
{{- define "token-authority.storePorts" -}}
{{- $pg := .Values.store.postgres }}
{{- $ports := list }}
{{- if $pg.url }}
{{- $u := urlParse $pg.url }}
{{- $param := list }}
{{- range (splitList "&" $u.query) }}
{{- if hasPrefix "port=" . }}{{ $param = splitList "," (trimPrefix "port=" .) }}{{ end }}
{{- end }}
{{- range $i, $host := splitList "," $u.host }}
{{- $p := regexFind ":[0-9]+$" $host | trimPrefix ":" }}
{{- if and (not $p) $param }}
{{- $p = index $param (min $i (sub (len $param) 1)) }}
{{- end }}
{{- $ports = append $ports (default "5432" $p) }}
{{- end }}
{{- else }}
{{- $ports = append $ports (toString (int $pg.port)) }}
{{- end }}
{{- $ports | uniq | join "," }}
{{- end }}

{{- define "token-authority.storePasswordDir" -}}
/etc/token-authority/store-password
{{- end }}

{{- define "token-authority.storeCaDir" -}}
/etc/token-authority/store-ca
{{- end }}

{{/*
Where the PKCS#11 token's PIN (signer.pkcs11.pinSecret) is mounted; the file is always `pin`.
*/}}
{{- define "token-authority.pkcs11PinDir" -}}
/etc/token-authority/pkcs11-pin
{{- end }}

{{/*
The directories the chart mounts volumes at, which signer.pkcs11.mountPath must stay clear of.
*/}}
{{- define "token-authority.mountDirs" -}}
{{- toJson (list (include "token-authority.dataDir" .) (include "token-authority.secretsDir" .) (include "token-authority.tlsDir" .) (include "token-authority.clientCaDir" .) (include "token-authority.policyDir" .) (include "token-authority.kubeTokenDir" .) (include "token-authority.storePasswordDir" .) (include "token-authority.storeCaDir" .) (include "token-authority.pkcs11PinDir" .)) }}
{{- end }}

{{/*
A duration as the server reads it (humantime: "10s", "1m 30s", "500ms", "2weeks") in
nanoseconds, or -1 when it holds a unit the server does not know (the server refuses it
at start; the checks that read this then leave the value to it).
*/}}
{{- define "token-authority.durationNanos" -}}
{{- $units := dict "ns" 1 "nsec" 1 "us" 1000 "usec" 1000 "ms" 1000000 "msec" 1000000 "s" 1000000000 "sec" 1000000000 "second" 1000000000 "seconds" 1000000000 "m" 60000000000 "min" 60000000000 "minute" 60000000000 "minutes" 60000000000 "h" 3600000000000 "hr" 3600000000000 "hour" 3600000000000 "hours" 3600000000000 "d" 86400000000000 "day" 86400000000000 "days" 86400000000000 "w" 604800000000000 "week" 604800000000000 "weeks" 604800000000000 "M" 2630016000000000 "month" 2630016000000000 "months" 2630016000000000 "y" 31557600000000000 "year" 31557600000000000 "years" 31557600000000000 }}
{{- $total := 0 }}
{{- $known := true }}
{{- range (regexFindAll "[0-9]+\\s*[A-Za-z]+" (toString .) -1) }}
{{- $unit := regexFind "[A-Za-z]+$" . }}
{{- if hasKey $units $unit }}
{{- $total = add $total (mul (regexFind "^[0-9]+" . | atoi) (get $units $unit)) }}
{{- else }}
{{- $known = false }}
{{- end }}
{{- end }}
{{- ternary $total -1 $known }}
{{- end }}

{{/*
The same in milliseconds (-1: a unit the server does not know).
*/}}
{{- define "token-authority.durationMillis" -}}
{{- $nanos := include "token-authority.durationNanos" . | int64 }}
{{- ternary (div $nanos 1000000) -1 (ge $nanos 0) }}
{{- end }}

{{/*
What the server refuses to start with, found at render time instead of in a crash loop after
an upgrade has replaced the pod: each rule is the server's own (src/config/mod.rs), named by
the values. Durations with a unit the server does not know are left to the server.
*/}}
{{- define "token-authority.checkConfig" -}}
{{- $c := .Values.config }}
{{- $second := 1000000000 }}
{{- $n := dict }}
{{- range $name, $value := dict "config.defaultTtl" $c.defaultTtl "config.maxTtl" $c.maxTtl "config.leeway" $c.leeway "config.jwksMaxAge" $c.jwksMaxAge "config.publishLead" $c.publishLead "config.rotationPeriod" $c.rotationPeriod "status.listTtl" .Values.status.listTtl }}
{{- $nanos := include "token-authority.durationNanos" $value | int64 }}
{{- if ge $nanos 0 }}
{{- if ne (mod $nanos $second) 0 }}
{{- fail (printf "%s (%s) must be a whole number of seconds: the server refuses to start with it" $name (toString $value)) }}
{{- end }}
{{- $_ := set $n $name (div $nanos $second) }}
{{- end }}
{{- end }}
{{- $minTtl := toString .Values.status.minTtl }}
{{- if and (ne $minTtl "off") (ne $minTtl "false") }}
{{- $nanos := include "token-authority.durationNanos" $minTtl | int64 }}
{{- if and (ge $nanos 0) (ne (mod $nanos $second) 0) }}
{{- fail (printf "status.minTtl (%s) must be a whole number of seconds, or off: the server refuses to start with it" $minTtl) }}
{{- end }}
{{- end }}
{{- range $name := list "config.defaultTtl" "config.maxTtl" "config.rotationPeriod" "status.listTtl" }}
{{- if and (hasKey $n $name) (lt (int64 (get $n $name)) 1) }}
{{- fail (printf "%s must be at least 1s: the server refuses to start with it" $name) }}
{{- end }}
{{- end }}
{{- if and (hasKey $n "config.defaultTtl") (hasKey $n "config.maxTtl") (gt (int64 (get $n "config.defaultTtl")) (int64 (get $n "config.maxTtl"))) }}
{{- fail (printf "config.defaultTtl (%s) is above config.maxTtl (%s): the server refuses to start with it" (toString $c.defaultTtl) (toString $c.maxTtl)) }}
{{- end }}
{{- if and (hasKey $n "config.maxTtl") (gt (int64 (get $n "config.maxTtl")) 31622400) }}
{{- fail (printf "config.maxTtl (%s) must be at most 366 days: the server refuses to start with it" (toString $c.maxTtl)) }}
{{- end }}
{{- range $name := list "config.rotationPeriod" "config.publishLead" "config.jwksMaxAge" }}
{{- if and (hasKey $n $name) (gt (int64 (get $n $name)) 316224000) }}
{{- fail (printf "%s must be at most 10 years: the server refuses to start with it" $name) }}
{{- end }}
{{- end }}
{{- if and (hasKey $n "status.listTtl") (gt (int64 (get $n "status.listTtl")) 604800) }}
{{- fail (printf "status.listTtl (%s) must be at most 7 days: the server refuses to start with it" (toString .Values.status.listTtl)) }}
{{- end }}
{{- if and (hasKey $n "config.leeway") (gt (int64 (get $n "config.leeway")) 3600) }}
{{- fail (printf "config.leeway (%s) must be at most 1h: the server refuses to start with it" (toString $c.leeway)) }}
{{- end }}
{{- if and (hasKey $n "config.publishLead") (hasKey $n "config.jwksMaxAge") (gt (int64 (get $n "config.publishLead")) 0) (lt (int64 (get $n "config.publishLead")) (int64 (get $n "config.jwksMaxAge"))) }}
{{- fail (printf "config.publishLead (%s) is shorter than config.jwksMaxAge (%s): verifiers could miss a new key, and the server refuses to start with it" (toString $c.publishLead) (toString $c.jwksMaxAge)) }}
{{- end }}
{{- end }}
