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
Labels of one component's pods: the component's labels, plus the user's
podLabels, which cannot replace the chart's own. Call with
(dict "ctx" $ "component" "..." "extra" .Values.<component>.podLabels).
*/}}
{{- define "ferry.podLabels" -}}
{{- $own := include "ferry.componentLabels" (dict "ctx" .ctx "component" .component) | fromYaml }}
{{- toYaml (merge (dict) $own (.extra | default dict)) }}
{{- end }}

{{/*
Annotations of one component's pods, as a YAML map, or nothing when there is
none: the Prometheus scrape annotations (with metrics.scrapeAnnotations) and
the user's podAnnotations, which win. Call with
(dict "ctx" $ "port" <metrics port> "extra" .Values.<component>.podAnnotations).
*/}}
{{- define "ferry.podAnnotations" -}}
{{- $annotations := dict }}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
{{- $annotations = dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString .port) "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $annotations = merge (dict) (.extra | default dict) $annotations }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The image of both binaries: <registry>/<repository>@<digest> when a digest is
set (the tag is then ignored), else <registry>/<repository>:<tag>, the tag
defaulting to the chart's appVersion. An empty registry leaves the registry
part out.
*/}}
{{- define "ferry.image" -}}
{{- $image := .Values.image }}
{{- $name := $image.repository }}
{{- with $image.registry }}
{{- $name = printf "%s/%s" . $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $name $image.digest }}
{{- else }}
{{- printf "%s:%s" $name ($image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Selector labels of the `helm test` pods: without app.kubernetes.io/name,
which the server pod sets to its own name (see tests/mesh-traffic-server.yaml).
Call with (dict "ctx" $ "component" "test-server" or "test-client").
*/}}
{{- define "ferry.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The body the `helm test` server answers and the client expects.
*/}}
{{- define "ferry.testBody" -}}
{{- printf "ferry helm test: answered by ferry-test-server in namespace %s" .Release.Namespace }}
{{- end }}

{{/*
In-cluster DNS name of the control plane Service (also its TLS server name).
*/}}
{{- define "ferry.controlPlaneHost" -}}
{{- printf "ferry-control-plane.%s.svc" .Release.Namespace }}
{{- end }}

{{/*
Container securityContext shared by the control plane and the test pods:
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
