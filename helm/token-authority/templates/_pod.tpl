{{/*
The pod template of the server, shared by the StatefulSet (sled, one pod) and the Deployment
(store.postgres, several pods), so that the two modes cannot drift apart. What differs:
with sled, TA_DATA_DIR and the data volume; with PostgreSQL, TA_STORE and its password and
CA files, no data volume at all (the server keeps no state on disk), and the topology spread.
*/}}
{{- define "token-authority.podTemplate" -}}
{{- $grpcPort := int .Values.containerPorts.grpc }}
{{- $httpPort := int .Values.containerPorts.http }}
{{- $tls := eq (include "token-authority.tlsEnabled" .) "true" }}
{{- $kubeIssuer := and .Values.policy.enabled .Values.policy.kubernetesIssuer.enabled }}
{{- $shared := eq (include "token-authority.sharedStore" .) "true" }}
{{- $pg := .Values.store.postgres }}
{{- $pkcs11 := eq .Values.signer.type "pkcs11" }}
{{- $p11 := .Values.signer.pkcs11 }}
{{- /* A volume mounted over (or above) one of the chart's own directories would hide its
files or be hidden by them: say so at render time. */}}
{{- if and $pkcs11 $p11.volume }}
{{- $mount := trimSuffix "/" $p11.mountPath }}
{{- range $dir := include "token-authority.mountDirs" . | fromJsonArray }}
{{- if or (eq $mount $dir) (hasPrefix (printf "%s/" $mount) $dir) (hasPrefix (printf "%s/" $dir) $mount) }}
{{- fail (printf "signer.pkcs11.mountPath (%s) collides with %s, where the chart mounts its own volume: choose another directory, e.g. /opt/pkcs11" $p11.mountPath $dir) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The server refuses to start with more connections per address than in all: say so at
render time, not as a crash loop. 1024: the server's default --max-connections. */}}
{{- $maxConnections := int (.Values.config.maxConnections | default 1024) }}
{{- if gt (int .Values.config.maxConnectionsPerIp) $maxConnections }}
{{- fail (printf "config.maxConnectionsPerIp (%d) must be at most config.maxConnections (%d): the server refuses to start otherwise" (int .Values.config.maxConnectionsPerIp) $maxConnections) }}
{{- end }}
{{- /* The same for watchers. 1024: the server's default --max-watchers. */}}
{{- $maxWatchers := int (.Values.config.maxWatchers | default 1024) }}
{{- if gt (int .Values.config.maxWatchersPerIp) $maxWatchers }}
{{- fail (printf "config.maxWatchersPerIp (%d) must be at most config.maxWatchers (%d): the server refuses to start otherwise" (int .Values.config.maxWatchersPerIp) $maxWatchers) }}
{{- end }}
metadata:
  labels:
    {{- include "token-authority.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* No checksum annotation of the policy or the certificate: it would restart the pod
  on every change, while the server reloads both files itself. */}}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "token-authority.serviceAccountName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- /* The server drains for config.shutdownGrace, then flushes its keystore: Kubernetes
  must not kill it before. */}}
  {{- include "token-authority.checkConfig" . }}
  {{- $drainMillis := include "token-authority.durationMillis" .Values.config.shutdownGrace | int }}
  {{- $delayMillis := include "token-authority.durationMillis" (.Values.config.shutdownDelay | default "0s") | int }}
  {{- if gt (add (max $delayMillis 0) $drainMillis 5000) (mul (int .Values.terminationGracePeriodSeconds) 1000) }}
  {{- fail (printf "terminationGracePeriodSeconds (%v) must exceed config.shutdownDelay (%s) plus config.shutdownGrace (%s) by at least 5 s: after SIGTERM the server serves for shutdownDelay, drains for shutdownGrace, then flushes its keystore, and Kubernetes kills it at the grace period" .Values.terminationGracePeriodSeconds (.Values.config.shutdownDelay | default "0s") .Values.config.shutdownGrace) }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: token-authority
      image: {{ include "token-authority.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      # The image's ENTRYPOINT is ["token-authority", "serve"]; configuration is env only.
      env:
        {{- if $shared }}
        # store.postgres: the key set lives in the shared database; no data directory (the
        # server keeps no state on disk with a shared store).
        - name: TA_STORE
          value: {{ include "token-authority.storeUrl" . | quote }}
        {{- if $pg.passwordSecret.name }}
        - name: TA_STORE_PASSWORD_FILE
          value: {{ printf "%s/%s" (include "token-authority.storePasswordDir" .) $pg.passwordSecret.key | quote }}
        {{- end }}
        {{- if $pg.ca.name }}
        - name: TA_STORE_CA_FILE
          value: {{ printf "%s/%s" (include "token-authority.storeCaDir" .) $pg.ca.key | quote }}
        {{- end }}
        {{- with $pg.syncInterval }}
        - name: TA_STORE_SYNC_INTERVAL
          value: {{ . | quote }}
        {{- end }}
        {{- else }}
        - name: TA_DATA_DIR
          value: {{ include "token-authority.dataDir" . | quote }}
        {{- end }}
        - name: TA_GRPC_LISTEN
          value: {{ include "token-authority.listen" (list .Values.config.bindAddress $grpcPort) | quote }}
        - name: TA_HTTP_LISTEN
          value: {{ include "token-authority.listen" (list .Values.config.bindAddress $httpPort) | quote }}
        - name: TA_ISSUER
          value: {{ include "token-authority.issuer" . | quote }}
        - name: TA_ADMIN_TOKEN_FILE
          value: {{ printf "%s/admin-token" (include "token-authority.secretsDir" .) | quote }}
        - name: TA_KEK_FILE
          value: {{ printf "%s/kek" (include "token-authority.secretsDir" .) | quote }}
        - name: TA_DEFAULT_TTL
          value: {{ .Values.config.defaultTtl | quote }}
        - name: TA_MAX_TTL
          value: {{ .Values.config.maxTtl | quote }}
        - name: TA_LEEWAY
          value: {{ .Values.config.leeway | quote }}
        - name: TA_JWKS_MAX_AGE
          value: {{ .Values.config.jwksMaxAge | quote }}
        - name: TA_PUBLISH_LEAD
          value: {{ .Values.config.publishLead | quote }}
        - name: TA_ROTATION_PERIOD
          value: {{ .Values.config.rotationPeriod | quote }}
        {{- /* A bare `off` in a values file is YAML's false: the same as "off". */}}
        - name: TA_STATUS_MIN_TTL
          value: {{ ternary "off" .Values.status.minTtl (eq (toString .Values.status.minTtl) "false") | quote }}
        - name: TA_STATUS_LIST_SIZE
          value: {{ .Values.status.listSize | int | toString | quote }}
        - name: TA_STATUS_LIST_TTL
          value: {{ .Values.status.listTtl | quote }}
        - name: TA_SHUTDOWN_GRACE
          value: {{ .Values.config.shutdownGrace | quote }}
        {{- with .Values.config.shutdownDelay }}
        - name: TA_SHUTDOWN_DELAY
          value: {{ . | quote }}
        {{- end }}
        {{- if $tls }}
        - name: TA_TLS_CERT
          value: {{ printf "%s/tls.crt" (include "token-authority.tlsDir" .) | quote }}
        - name: TA_TLS_KEY
          value: {{ printf "%s/tls.key" (include "token-authority.tlsDir" .) | quote }}
        {{- with .Values.tls.reloadInterval }}
        - name: TA_TLS_RELOAD_INTERVAL
          value: {{ . | quote }}
        {{- end }}
        {{- if .Values.tls.clientCa.enabled }}
        - name: TA_CLIENT_CA
          value: {{ printf "%s/%s" (include "token-authority.clientCaDir" .) .Values.tls.clientCa.key | quote }}
        {{- end }}
        {{- else }}
        # tls.mode=disabled: plaintext on a non-loopback address, for a mesh that
        # terminates mTLS in front of the server.
        - name: TA_ALLOW_PLAINTEXT
          value: "true"
        {{- end }}
        {{- if .Values.config.maxConnections }}
        - name: TA_MAX_CONNECTIONS
          value: {{ .Values.config.maxConnections | int | toString | quote }}
        {{- end }}
        {{- with .Values.config.handshakeTimeout }}
        - name: TA_HANDSHAKE_TIMEOUT
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.config.idleTimeout }}
        - name: TA_IDLE_TIMEOUT
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.config.maxConnectionAge }}
        - name: TA_MAX_CONNECTION_AGE
          value: {{ . | quote }}
        {{- end }}
        {{- if .Values.config.maxConnectionsPerIp }}
        - name: TA_MAX_CONNECTIONS_PER_IP
          value: {{ .Values.config.maxConnectionsPerIp | int | toString | quote }}
        {{- end }}
        {{- if .Values.config.maxWatchers }}
        - name: TA_MAX_WATCHERS
          value: {{ .Values.config.maxWatchers | int | toString | quote }}
        {{- end }}
        {{- if .Values.config.maxWatchersPerIp }}
        - name: TA_MAX_WATCHERS_PER_IP
          value: {{ .Values.config.maxWatchersPerIp | int | toString | quote }}
        {{- end }}
        {{- /* null: the server's default; 0 is a setting (the budget off). */}}
        {{- if not (kindIs "invalid" .Values.config.authFailuresPerIp) }}
        - name: TA_AUTH_FAILURES_PER_IP
          value: {{ .Values.config.authFailuresPerIp | int | toString | quote }}
        {{- end }}
        {{- if .Values.policy.enabled }}
        - name: TA_POLICY_FILE
          value: {{ printf "%s/policy.toml" (include "token-authority.policyDir" .) | quote }}
        {{- end }}
        {{- if .Values.audit.enabled }}
        - name: TA_AUDIT_LOG
          value: {{ ternary (printf "%s/%s" (include "token-authority.dataDir" .) .Values.audit.file) "-" (ne .Values.audit.file "") | quote }}
        - name: TA_AUDIT_KEY_FILE
          value: {{ printf "%s/audit-key" (include "token-authority.secretsDir" .) | quote }}
        {{- if .Values.audit.sync }}
        - name: TA_AUDIT_SYNC
          value: "true"
        {{- end }}
        {{- end }}
        {{- if $pkcs11 }}
        # signer.type=pkcs11: keys are generated and used in the token; the PIN is a file of
        # its Secret (signer.pkcs11.pinSecret).
        - name: TA_SIGNER
          value: "pkcs11"
        - name: TA_PKCS11_MODULE
          value: {{ $p11.module | quote }}
        - name: TA_PKCS11_TOKEN_LABEL
          value: {{ $p11.tokenLabel | quote }}
        - name: TA_PKCS11_PIN_FILE
          value: {{ printf "%s/pin" (include "token-authority.pkcs11PinDir" .) | quote }}
        {{- with $p11.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- end }}
        - name: TA_LOG_FORMAT
          value: {{ .Values.config.logFormat | quote }}
        # The Secret files (0440, group fsGroup) and the fsGroup-owned data volume are
        # group-accessible by design; without this the server refuses to start (see
        # config.allowGroupReadableFiles in values.yaml).
        - name: TA_ALLOW_GROUP_READABLE_FILES
          value: {{ .Values.config.allowGroupReadableFiles | quote }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ $grpcPort }}
          protocol: TCP
        - name: http
          containerPort: {{ $httpPort }}
          protocol: TCP
      {{- if $tls }}
      # HTTPS probes on the HTTP port: native gRPC probes cannot speak TLS, and the kubelet
      # does not verify the certificate of an HTTPS probe. /readyz answers 200 once the
      # keys are loaded and 503 as soon as the server starts draining on SIGTERM; /healthz
      # answers 200 while the process serves at all.
      startupProbe:
        httpGet:
          path: /readyz
          port: {{ $httpPort }}
          scheme: HTTPS
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: {{ $httpPort }}
          scheme: HTTPS
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: {{ $httpPort }}
          scheme: HTTPS
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      {{- else }}
      # Native gRPC probes (grpc.health.v1.Health). The server reports SERVING once its
      # keys are loaded and NOT_SERVING as soon as it starts draining on SIGTERM.
      startupProbe:
        grpc:
          port: {{ $grpcPort }}
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        grpc:
          port: {{ $grpcPort }}
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        grpc:
          port: {{ $grpcPort }}
          service: tokenauthority.v1.TokenAuthority
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- if not $shared }}
        - name: data
          mountPath: {{ include "token-authority.dataDir" . }}
        {{- end }}
        - name: secrets
          mountPath: {{ include "token-authority.secretsDir" . }}
          readOnly: true
        {{- /* Whole-volume mounts, never subPath: a subPath mount never sees the kubelet's
        updates, so renewed certificates and policy edits would not reach the server. */}}
        {{- if $tls }}
        - name: tls
          mountPath: {{ include "token-authority.tlsDir" . }}
          readOnly: true
        {{- if .Values.tls.clientCa.enabled }}
        - name: client-ca
          mountPath: {{ include "token-authority.clientCaDir" . }}
          readOnly: true
        {{- end }}
        {{- end }}
        {{- if .Values.policy.enabled }}
        - name: policy
          mountPath: {{ include "token-authority.policyDir" . }}
          readOnly: true
        {{- end }}
        {{- if $kubeIssuer }}
        - name: kube-api-access
          mountPath: {{ include "token-authority.kubeTokenDir" . }}
          readOnly: true
        {{- end }}
        {{- if and $shared $pg.passwordSecret.name }}
        - name: store-password
          mountPath: {{ include "token-authority.storePasswordDir" . }}
          readOnly: true
        {{- end }}
        {{- if and $shared $pg.ca.name }}
        - name: store-ca
          mountPath: {{ include "token-authority.storeCaDir" . }}
          readOnly: true
        {{- end }}
        {{- if $pkcs11 }}
        - name: pkcs11-pin
          mountPath: {{ include "token-authority.pkcs11PinDir" . }}
          readOnly: true
        {{- if $p11.volume }}
        - name: pkcs11
          mountPath: {{ $p11.mountPath }}
          readOnly: true
        {{- end }}
        {{- end }}
  volumes:
    - name: secrets
      secret:
        secretName: {{ include "token-authority.secretName" . }}
        # Owner root, group fsGroup (65532): readable by the server, nobody else.
        defaultMode: 0440
        items:
          - key: admin-token
            path: admin-token
          - key: kek
            path: kek
          {{- if .Values.audit.enabled }}
          - key: audit-key
            path: audit-key
          {{- end }}
    {{- if $tls }}
    - name: tls
      secret:
        secretName: {{ include "token-authority.tlsSecretName" . }}
        # Owner root, group fsGroup (65532): readable by the server, nobody else. Only
        # the certificate and its key: never the generated CA's key.
        defaultMode: 0440
        items:
          - key: tls.crt
            path: tls.crt
          - key: tls.key
            path: tls.key
    {{- if .Values.tls.clientCa.enabled }}
    - name: client-ca
      {{- if eq .Values.tls.clientCa.kind "ConfigMap" }}
      configMap:
        name: {{ .Values.tls.clientCa.name }}
        defaultMode: 0444
      {{- else }}
      secret:
        secretName: {{ default (include "token-authority.tlsSecretName" .) .Values.tls.clientCa.name }}
        defaultMode: 0440
      {{- end }}
        items:
          - key: {{ .Values.tls.clientCa.key }}
            path: {{ .Values.tls.clientCa.key }}
    {{- end }}
    {{- end }}
    {{- if .Values.policy.enabled }}
    - name: policy
      configMap:
        name: {{ include "token-authority.policyConfigMapName" . }}
        defaultMode: 0444
    {{- end }}
    {{- if $kubeIssuer }}
    # The pod's own service-account token, short-lived and renewed by the kubelet, and the
    # cluster CA: what the server needs to fetch the cluster's JWKS from the API server
    # (the automatic mount is off; this is the only credential the pod gets).
    - name: kube-api-access
      projected:
        # Group fsGroup (65532), like the Secret volumes.
        defaultMode: 0440
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: {{ int .Values.policy.kubernetesIssuer.tokenExpirationSeconds }}
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
    {{- end }}
    {{- if $shared }}
    {{- if $pg.passwordSecret.name }}
    # The database password, from your Secret (store.postgres.passwordSecret).
    - name: store-password
      secret:
        secretName: {{ $pg.passwordSecret.name }}
        defaultMode: 0440
        items:
          - key: {{ $pg.passwordSecret.key }}
            path: {{ $pg.passwordSecret.key }}
    {{- end }}
    {{- if $pg.ca.name }}
    # The CA that signs the database server's certificate (store.postgres.ca).
    - name: store-ca
      {{- if eq $pg.ca.kind "ConfigMap" }}
      configMap:
        name: {{ $pg.ca.name }}
        defaultMode: 0444
      {{- else }}
      secret:
        secretName: {{ $pg.ca.name }}
        defaultMode: 0440
      {{- end }}
        items:
          - key: {{ $pg.ca.key }}
            path: {{ $pg.ca.key }}
    {{- end }}
    {{- else if not .Values.persistence.enabled }}
    # persistence.enabled=false: keys die with the pod. Test clusters only.
    - name: data
      emptyDir: {}
    {{- end }}
    {{- if $pkcs11 }}
    # The token's user PIN, from your Secret (signer.pkcs11.pinSecret), as the file `pin`.
    # 0400; with the pod's fsGroup the kubelet adds group read (0440, group fsGroup), which is
    # how the non-root server reads it (TA_ALLOW_GROUP_READABLE_FILES accepts that mode).
    - name: pkcs11-pin
      secret:
        secretName: {{ $p11.pinSecret.name }}
        defaultMode: 0400
        items:
          - key: {{ $p11.pinSecret.key }}
            path: pin
    {{- if $p11.volume }}
    # The vendor's library and configuration (signer.pkcs11.volume), mounted read-only.
    - name: pkcs11
      {{- toYaml $p11.volume | nindent 6 }}
    {{- end }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml .Values.topologySpreadConstraints | nindent 4 }}
  {{- else if $shared }}
  # Spread the replicas over nodes, then zones, so that one node or zone going down takes at
  # most its share of them. ScheduleAnyway: on fewer nodes than replicas (or during a rolling
  # update's surge) the pods still run, doubled up, rather than stay Pending; the scheduler
  # still spreads them whenever it can. matchLabelKeys: each rollout's pods are spread on
  # their own, not counted against the old ReplicaSet's.
  topologySpreadConstraints:
    {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
    - maxSkew: 1
      topologyKey: {{ . }}
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "token-authority.selectorLabels" $ | nindent 10 }}
      matchLabelKeys:
        - pod-template-hash
    {{- end }}
  {{- end }}
{{- end }}
