{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end }}

{{/*
Selector labels of one component; call with (dict "ctx" $ "component" "...").
*/}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Labels of one component's objects: the common labels plus its selector labels.
*/}}
{{- define "ferry.componentLabels" -}}
{{ include "ferry.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The image of both binaries; the tag defaults to the chart's appVersion.
*/}}
{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
In-cluster DNS name of the control plane Service (also its TLS server name).
*/}}
{{- define "ferry.controlPlaneHost" -}}
{{- printf "ferry-control-plane.%s.svc" .Release.Namespace }}
{{- end }}

{{/*
Container securityContext shared by the control plane and the test pod:
non-root, read-only root, no privilege escalation, no capabilities.
*/}}
{{- define "ferry.restrictedSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
