{{/* Common labels. */}}
{{- define "ferrolb.labels" -}}
app.kubernetes.io/name: ferrolb
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "speaker"). */}}
{{- define "ferrolb.selector" -}}
app.kubernetes.io/name: ferrolb
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object name of one component. */}}
{{- define "ferrolb.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* Image of one component. */}}
{{- define "ferrolb.image" -}}
{{- $i := .root.Values.image -}}
{{- printf "%s/%s-%s:%s" $i.registry $i.repository .component (default .root.Chart.AppVersion $i.tag) -}}
{{- end }}

{{/* The heartbeat Secret's name. */}}
{{- define "ferrolb.peerSecret" -}}
{{- default (printf "%s-peer-secret" .Release.Name) .Values.speaker.peerSecret.existingSecret -}}
{{- end }}
