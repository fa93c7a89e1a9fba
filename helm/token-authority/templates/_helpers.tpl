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
app.kubernetes.io/version: {{ (include "token-authority.imageTag" .) | trunc 63 | trimSuffix "-" | quote }}
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
which is also where the JWKS and the discovery document are served.
*/}}
{{- define "token-authority.issuer" -}}
{{- if .Values.config.issuer }}
{{- .Values.config.issuer }}
{{- else }}
{{- printf "http://%s.%s.svc.%s:%d" (include "token-authority.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.ports.http) }}
{{- end }}
{{- end }}
