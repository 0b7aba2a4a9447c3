{{/* The release's base name, at most 63 characters. */}}
{{- define "sekisho.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sekisho.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sekisho
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "sekisho.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sekisho.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "sekisho.gateway" -}}{{ include "sekisho.fullname" . }}-gateway{{- end -}}
{{- define "sekisho.chainstore" -}}{{ include "sekisho.fullname" . }}-chainstore{{- end -}}
{{- define "sekisho.ui" -}}{{ include "sekisho.fullname" . }}-ui{{- end -}}

{{/* A filter's resource name: (dict "root" $ "name" "face-detect"). */}}
{{- define "sekisho.filter" -}}{{ include "sekisho.fullname" .root }}-{{ .name }}{{- end -}}

{{/* The environment every container gets. */}}
{{- define "sekisho.env" -}}
- name: SEKISHO_LOG
  value: {{ .Values.logLevel | quote }}
- name: SEKISHO_CACHE
  value: {{ .Values.image.cacheDir | quote }}
{{- end -}}

{{/* Pod-level settings shared by every Deployment: (dict "root" $ "part" .Values.gateway
   "nodeSelector" … "tolerations" … ["token" true]); only a part given "token" mounts an API token. */}}
{{- define "sekisho.podSpec" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
automountServiceAccountToken: {{ .token | default false }}
enableServiceLinks: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .part.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
