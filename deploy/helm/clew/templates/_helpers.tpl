{{- define "clew.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "clew.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clew.labels" -}}
{{ include "clew.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "clew.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clew.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* OTEL_RESOURCE_ATTRIBUTES from .Values.resourceAttributes, empty values left out. */ -}}
{{- define "clew.resourceAttributes" -}}
{{- $pairs := list -}}
{{- range $key, $value := .Values.resourceAttributes -}}
{{- if $value -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
