{{/* The chart's name, for app.kubernetes.io/name. */}}
{{- define "kdrop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The base of the objects' names: the release name if it contains the chart's
name (release "kdrop" gives kdrop, kdrop-agent, kdrop-viewer, kdrop-metrics,
as in deploy/kustomize), else release-chart.
*/}}
{{- define "kdrop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kdrop.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 56 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Namespace of the namespaced objects. */}}
{{- define "kdrop.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name -}}
{{- end -}}

{{- define "kdrop.serviceAccountName" -}}
{{- default (include "kdrop.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "kdrop.version" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "kdrop.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "kdrop.version" .) -}}
{{- end -}}

{{/* Labels that select the agent's pods; immutable in a DaemonSet. */}}
{{- define "kdrop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kdrop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{/*
Labels of every object. Call with (dict "ctx" $ "component" "agent");
an empty component leaves the label out (the Namespace).
*/}}
{{- define "kdrop.labels" -}}
{{- $ := .ctx -}}
app.kubernetes.io/name: {{ include "kdrop.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/part-of: kdrop
app.kubernetes.io/version: {{ include "kdrop.version" $ | quote }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $.Chart.Name $.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* The service account whose stream tokens open /events: bound to no role. */}}
{{- define "kdrop.streamAccountName" -}}
{{ include "kdrop.fullname" . }}-stream
{{- end -}}
