{{/* Chart name, truncated to the 63 characters Kubernetes allows in a label. */}}
{{- define "gpucap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name. */}}
{{- define "gpucap.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gpucap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gpucap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "agent"). */}}
{{- define "gpucap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpucap.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gpucap.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "gpucap.ledgerUrl" -}}
{{- if .Values.agent.ledgerUrl -}}
{{- .Values.agent.ledgerUrl -}}
{{- else -}}
{{- printf "http://%s-ledger.%s.svc:%d" (include "gpucap.fullname" .) .Release.Namespace (int .Values.ledger.port) -}}
{{- end -}}
{{- end -}}

{{/* True when the Prometheus Operator's API is served. */}}
{{- define "gpucap.hasPrometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}

{{/* The ledger's environment, shared by the migrate init container and the server. */}}
{{- define "gpucap.ledgerEnv" -}}
{{- if .Values.ledger.database.existingSecret }}
- name: GPUCAP_DB
  valueFrom:
    secretKeyRef:
      name: {{ .Values.ledger.database.existingSecret }}
      key: {{ .Values.ledger.database.secretKey }}
{{- else if .Values.ledger.database.url }}
- name: GPUCAP_DB
  value: {{ .Values.ledger.database.url | quote }}
{{- else }}
- name: GPUCAP_DB
  value: "sqlite:////var/lib/gpucap-ledger/gpucap.db"
{{- end }}
{{- /* Secrets as files from Secret volumes (gpucap.ledgerMounts), not environment values. */}}
{{- if .Values.ledger.signingSecret.existingSecret }}
- name: GPUCAP_LEDGER_SECRET_FILE
  value: /etc/gpucap/signing-secret/secret
{{- end }}
{{- if .Values.ledger.metricsToken.existingSecret }}
- name: GPUCAP_METRICS_TOKEN_FILE
  value: /etc/gpucap/metrics-token/token
{{- end }}
{{- if .Values.ledger.registryConfigMap }}
- name: GPUCAP_REGISTRY
  value: /etc/gpucap/registry/registry.yaml
{{- end }}
- name: GPUCAP_LEDGER_HOST
  value: "0.0.0.0"
- name: GPUCAP_LEDGER_PORT
  value: {{ .Values.ledger.port | quote }}
- name: GPUCAP_REPORT_INTERVAL_S
  value: {{ .Values.ledger.reportIntervalSeconds | quote }}
- name: GPUCAP_STALE_INTERVALS
  value: {{ .Values.ledger.staleIntervals | quote }}
{{- range $name, $value := .Values.ledger.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "gpucap.ledgerMounts" -}}
- name: data
  mountPath: /var/lib/gpucap-ledger
- name: tmp
  mountPath: /tmp
{{- if .Values.ledger.registryConfigMap }}
- name: registry
  mountPath: /etc/gpucap/registry
  readOnly: true
{{- end }}
{{- if .Values.ledger.signingSecret.existingSecret }}
- name: signing-secret
  mountPath: /etc/gpucap/signing-secret
  readOnly: true
{{- end }}
{{- if .Values.ledger.metricsToken.existingSecret }}
- name: metrics-token
  mountPath: /etc/gpucap/metrics-token
  readOnly: true
{{- end }}
{{- end -}}
