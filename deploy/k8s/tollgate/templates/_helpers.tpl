{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release "tollgate" of chart "tollgate" gives "tollgate"; "prod" gives "prod-tollgate". */}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tollgate.secretName" -}}
{{- required "secrets.existingSecret must name the Secret holding the admin token, master key and DSNs" .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "tollgate.postgresqlSecretName" -}}
{{- default (printf "%s-postgresql" (include "tollgate.fullname" .)) .Values.postgresql.existingSecret -}}
{{- end -}}

{{/* Labels: include with (dict "root" $ "component" "auth") ------------------------------- */}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" .root }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end -}}

{{/* DNS ------------------------------------------------------------------------------------ */}}

{{/* "<name>.<ns>.svc" (+ ".<clusterDomain>"): include with (dict "root" $ "name" "x") */}}
{{- define "tollgate.svcHost" -}}
{{- $host := printf "%s.%s.svc" .name .root.Release.Namespace -}}
{{- if .root.Values.clusterDomain -}}{{- $host = printf "%s.%s" $host .root.Values.clusterDomain -}}{{- end -}}
{{- $host -}}
{{- end -}}

{{/* The quota replicas in ordinal order, each by its stable StatefulSet DNS name:
     tollgate-quota-0.tollgate-quota.<ns>.svc:7102, tollgate-quota-1..., as a YAML list. */}}
{{- define "tollgate.quotaTargets" -}}
{{- $quota := printf "%s-quota" (include "tollgate.fullname" .) -}}
{{- $targets := list -}}
{{- range $i := until (int .Values.quota.replicas) -}}
{{- $pod := printf "%s-%d.%s" $quota $i $quota -}}
{{- $targets = append $targets (printf "%s:%d" (include "tollgate.svcHost" (dict "root" $ "name" $pod)) (int $.Values.quota.port)) -}}
{{- end -}}
{{- toYaml $targets -}}
{{- end -}}

{{/* Configuration --------------------------------------------------------------------------- */}}

{{/* The YAML config every process reads. Chart-derived keys win over .Values.config. */}}
{{- define "tollgate.config" -}}
{{- $fullname := include "tollgate.fullname" . -}}
{{- $v := .Values -}}
{{- $derived := dict
  "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $v.metrics.port)))
  "shutdown" (dict "drain_timeout" (printf "%ds" (int $v.shutdown.drainTimeoutSeconds)))
  "auth" (dict "grpc_listen" (printf "0.0.0.0:%d" (int $v.auth.port)))
  "quota" (dict "grpc_listen" (printf "0.0.0.0:%d" (int $v.quota.port)))
  "router" (dict "grpc_listen" (printf "0.0.0.0:%d" (int $v.router.port)))
  "billing" (dict "grpc_listen" (printf "0.0.0.0:%d" (int $v.billing.port)))
  "edge" (dict
    "listen" (printf "0.0.0.0:%d" (int $v.edge.port))
    "auth_target" (printf "%s:%d" (include "tollgate.svcHost" (dict "root" . "name" (printf "%s-auth" $fullname))) (int $v.auth.port))
    "quota_targets" (include "tollgate.quotaTargets" . | fromYamlArray)
    "router_target" (printf "%s:%d" (include "tollgate.svcHost" (dict "root" . "name" (printf "%s-router" $fullname))) (int $v.router.port))
    "billing_target" (printf "%s:%d" (include "tollgate.svcHost" (dict "root" . "name" (printf "%s-billing" $fullname))) (int $v.billing.port)))
-}}
{{- if $v.postgresql.enabled -}}
{{- $pg := include "tollgate.svcHost" (dict "root" . "name" (printf "%s-postgresql" $fullname)) -}}
{{- range $svc := list "auth" "quota" "router" "billing" -}}
{{- $_ := set (index $derived $svc) "database" (dict "dsn" (printf "host=%s port=5432 dbname=tollgate_%s user=postgres" $pg $svc)) -}}
{{- end -}}
{{- end -}}
{{- $config := mergeOverwrite (deepCopy (default (dict) $v.config)) $derived -}}
{{- toYaml $config -}}
{{- end -}}

{{/* checksum/config for a workload: the edge's targets only restart the edge, so scaling quota
     does not restart auth, router, billing or the quota replicas that keep their ordinal.
     include with (dict "root" $ "component" "auth") */}}
{{- define "tollgate.configChecksum" -}}
{{- $config := include "tollgate.config" .root | fromYaml -}}
{{- if ne .component "edge" -}}
{{- $config = omit $config "edge" -}}
{{- end -}}
{{- toYaml $config | sha256sum -}}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------------------------ */}}

{{/* Pod annotations: include with (dict "root" $ "component" "auth") */}}
{{- define "tollgate.podAnnotations" -}}
checksum/config: {{ include "tollgate.configChecksum" . }}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* secretKeyRef env entry: include with (dict "root" $ "name" "TOLLGATE_X" "key" "admin-token"),
     plus "optional" true for a key the Secret may lack */}}
{{- define "tollgate.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.secretName" .root }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* The database credentials of one service: the DSN from the Secret, or with the bundled
     PostgreSQL, PGPASSWORD (the DSN without password is in the ConfigMap).
     include with (dict "root" $ "svc" "auth") */}}
{{- define "tollgate.dbEnv" -}}
{{- if .root.Values.postgresql.enabled -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tollgate.postgresqlSecretName" .root }}
      key: postgres-password
{{- else -}}
{{- include "tollgate.secretEnv" (dict "root" .root "name" (printf "TOLLGATE_%s__DATABASE__DSN" (upper .svc)) "key" (index .root.Values.secrets.keys (printf "%sDsn" .svc))) -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.terminationGracePeriodSeconds" -}}
{{- add (int .preStop) (int .root.Values.shutdown.drainTimeoutSeconds) (int .root.Values.shutdown.graceMarginSeconds) -}}
{{- end -}}

{{/* The pod template of a gRPC service (auth, quota, router, billing).
     include with (dict "root" $ "component" "auth") */}}
{{- define "tollgate.grpcPodTemplate" -}}
{{- $root := .root -}}
{{- $svc := .component -}}
{{- $values := index $root.Values $svc -}}
metadata:
  labels:
    {{- include "tollgate.selectorLabels" . | nindent 4 }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "tollgate.podAnnotations" . | nindent 4 }}
spec:
  serviceAccountName: {{ include "tollgate.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ include "tollgate.terminationGracePeriodSeconds" (dict "root" $root "preStop" 0) }}
  containers:
    - name: {{ $svc }}
      image: {{ include "tollgate.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args: ["serve", "--target={{ $svc }}", "--config=/etc/tollgate/tollgate.yaml"]
      env:
        {{- include "tollgate.secretEnv" (dict "root" $root "name" "TOLLGATE_ADMIN__TOKEN" "key" $root.Values.secrets.keys.adminToken) | nindent 8 }}
        {{- include "tollgate.secretEnv" (dict "root" $root "name" "TOLLGATE_GRPC__SERVICE_TOKENS__EDGE" "key" $root.Values.secrets.keys.edgeServiceToken) | nindent 8 }}
        {{- include "tollgate.secretEnv" (dict "root" $root "name" "TOLLGATE_ADMIN__TOKEN_ROTATION" "key" $root.Values.secrets.keys.adminTokenRotation "optional" true) | nindent 8 }}
        {{- include "tollgate.secretEnv" (dict "root" $root "name" "TOLLGATE_GRPC__SERVICE_TOKENS__EDGE_ROTATION" "key" $root.Values.secrets.keys.edgeServiceTokenRotation "optional" true) | nindent 8 }}
        {{- include "tollgate.dbEnv" (dict "root" $root "svc" $svc) | nindent 8 }}
        {{- include "tollgate.tlsEnv" $root | nindent 8 }}
        {{- if eq $svc "router" }}
        {{- include "tollgate.secretEnv" (dict "root" $root "name" "TOLLGATE_ROUTER__MASTER_KEY" "key" $root.Values.secrets.keys.routerMasterKey) | nindent 8 }}
        {{- end }}
        {{- with $root.Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: grpc
          containerPort: {{ $values.port }}
          protocol: TCP
        - name: metrics
          containerPort: {{ $root.Values.metrics.port }}
          protocol: TCP
      startupProbe:
        {{- include "tollgate.grpcProbe" (dict "root" $root "port" $values.port "probe" $root.Values.grpcProbes.startup) | nindent 8 }}
      readinessProbe:
        {{- include "tollgate.grpcProbe" (dict "root" $root "port" $values.port "probe" $root.Values.grpcProbes.readiness) | nindent 8 }}
      livenessProbe:
        {{- include "tollgate.grpcProbe" (dict "root" $root "port" $values.port "probe" $root.Values.grpcProbes.liveness) | nindent 8 }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/tollgate
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- include "tollgate.tlsVolumeMount" $root | nindent 8 }}
  volumes:
    - name: config
      configMap:
        name: {{ include "tollgate.fullname" $root }}-config
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- include "tollgate.tlsVolume" . | nindent 4 }}
  {{- with $root.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Mutual TLS ------------------------------------------------------------------------------ */}}

{{/* Which certificates: "existing", "certManager" or "generated" (tls.enabled only). */}}
{{- define "tollgate.tlsMode" -}}
{{- if .Values.tls.existingSecret -}}existing
{{- else if .Values.tls.certManager.enabled -}}certManager
{{- else -}}generated
{{- end -}}
{{- end -}}

{{/* The components that get a certificate: the four services, the edge and the admin client. */}}
{{- define "tollgate.tlsComponents" -}}
{{- toYaml (list "edge" "auth" "quota" "router" "billing" "admin") -}}
{{- end -}}

{{/* The Secret holding a component's certificate. include with (dict "root" $ "component" "auth") */}}
{{- define "tollgate.tlsSecretName" -}}
{{- $mode := include "tollgate.tlsMode" .root -}}
{{- if eq $mode "existing" -}}{{ .root.Values.tls.existingSecret }}
{{- else if eq $mode "certManager" -}}{{ printf "%s-tls-%s" (include "tollgate.fullname" .root) .component }}
{{- else -}}{{ printf "%s-tls" (include "tollgate.fullname" .root) }}
{{- end -}}
{{- end -}}

{{/* The DNS names a component's certificate carries, as a YAML list: a service's in-cluster names
     (the quota replicas' by wildcard) and localhost (the in-pod probe), so clients verify it; the
     edge's and the admin's their identity (edge.tollgate.internal: Helm's genSignedCert cannot
     write URI SANs). include with (dict "root" $ "component" "auth") */}}
{{- define "tollgate.tlsDnsNames" -}}
{{- $root := .root -}}
{{- $names := list -}}
{{- if has .component (list "edge" "admin") -}}
{{- $names = list (printf "%s.tollgate.internal" .component) -}}
{{- else -}}
{{- $svc := printf "%s-%s" (include "tollgate.fullname" $root) .component -}}
{{- $ns := $root.Release.Namespace -}}
{{- $bases := list $svc -}}
{{- if eq .component "quota" -}}{{- $bases = append $bases (printf "*.%s" $svc) -}}{{- end -}}
{{- range $b := $bases -}}
{{- $names = append $names (printf "%s.%s" $b $ns) -}}
{{- $names = append $names (printf "%s.%s.svc" $b $ns) -}}
{{- $names = append $names (printf "%s.%s.svc.%s" $b $ns (default "cluster.local" $root.Values.clusterDomain)) -}}
{{- end -}}
{{- $names = concat (list $svc) $names (list "localhost") -}}
{{- end -}}
{{- toYaml $names -}}
{{- end -}}

{{/* TOLLGATE_GRPC__TLS__* of a Tollgate container (nothing with tls.enabled false). */}}
{{- define "tollgate.tlsEnv" -}}
{{- if .Values.tls.enabled -}}
- name: TOLLGATE_GRPC__TLS__CERT_FILE
  value: /etc/tollgate-tls/tls.crt
- name: TOLLGATE_GRPC__TLS__KEY_FILE
  value: /etc/tollgate-tls/tls.key
- name: TOLLGATE_GRPC__TLS__CA_FILE
  value: /etc/tollgate-tls/ca.crt
{{- end -}}
{{- end -}}

{{- define "tollgate.tlsVolumeMount" -}}
{{- if .Values.tls.enabled -}}
- name: tls
  mountPath: /etc/tollgate-tls
  readOnly: true
{{- end -}}
{{- end -}}

{{/* The pod's own certificate and key and the CA, nothing else of the Secret (a Secret volume is
     updated in place when the Secret changes; no subPath, so that stays true).
     include with (dict "root" $ "component" "auth") */}}
{{- define "tollgate.tlsVolume" -}}
{{- if .root.Values.tls.enabled -}}
- name: tls
  secret:
    secretName: {{ include "tollgate.tlsSecretName" . }}
    defaultMode: 0440
    {{- if ne (include "tollgate.tlsMode" .root) "certManager" }}
    items:
      - {key: ca.crt, path: ca.crt}
      - {key: {{ .component }}.crt, path: tls.crt}
      - {key: {{ .component }}.key, path: tls.key}
    {{- end }}
{{- end -}}
{{- end -}}

{{/* A gRPC service's probe: native gRPC without TLS, else `tollgate health` in the container,
     which presents the pod's certificate (TOLLGATE_GRPC__TLS__* are in its environment).
     include with (dict "root" $ "port" 7101 "probe" .Values.grpcProbes.startup) */}}
{{- define "tollgate.grpcProbe" -}}
{{- if .root.Values.tls.enabled -}}
exec:
  command: ["tollgate", "health", "127.0.0.1:{{ .port }}"]
{{- else -}}
grpc:
  port: {{ .port }}
{{- end }}
{{ toYaml .probe }}
{{- end -}}
