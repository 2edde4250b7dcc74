{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "clickheatmap-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: fullnameOverride, or "<release>-<chart name>" (just the
release name when it already contains the chart name). At most 63 characters (a DNS label).
*/}}
{{- define "clickheatmap-operator.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "clickheatmap-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every object the chart makes.
*/}}
{{- define "clickheatmap-operator.labels" -}}
helm.sh/chart: {{ include "clickheatmap-operator.chart" . }}
{{ include "clickheatmap-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: clickheatmap
{{- end }}

{{/*
Labels that select the operator pods (immutable in a Deployment: never add to them).
*/}}
{{- define "clickheatmap-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clickheatmap-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the metrics Service (a DNS label: at most 63 characters with its suffix).
*/}}
{{- define "clickheatmap-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "clickheatmap-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the leader election Role and RoleBinding (kept within 63 characters too).
*/}}
{{- define "clickheatmap-operator.leaderElectionName" -}}
{{- printf "%s-leader-election" (include "clickheatmap-operator.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "clickheatmap-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clickheatmap-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference: repository, then @digest when set, else :tag (default appVersion).
*/}}
{{- define "clickheatmap-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The image of the aggregator Deployments the operator creates: operator.aggregatorImage, or the
operator's own image (it holds the aggregator binary too).
*/}}
{{- define "clickheatmap-operator.aggregatorImage" -}}
{{- default (include "clickheatmap-operator.image" .) .Values.operator.aggregatorImage }}
{{- end }}

{{/*
"true" when leader election is on: always with more than one replica, or when asked for.
*/}}
{{- define "clickheatmap-operator.leaderElection" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.operator.leaderElection.enabled }}true{{ end }}
{{- end }}

{{/*
"true" when the operator watches every namespace (no operator.watchNamespaces).
*/}}
{{- define "clickheatmap-operator.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The Lease the operator's leader election uses (fixed by the operator).
*/}}
{{- define "clickheatmap-operator.leaseName" -}}
clickheatmap-operator
{{- end }}

{{/*
RBAC rules the operator needs where it reconciles pipelines (cluster-wide or per watched
namespace). Exactly the API calls the operator makes; no wildcards. It creates no RBAC objects.
*/}}
{{- define "clickheatmap-operator.reconcileRules" -}}
- apiGroups: ["clickheatmap.io"]
  resources: ["clickheatmappipelines"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["clickheatmap.io"]
  resources: ["clickheatmappipelines/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["clickheatmap.io"]
  resources: ["clickheatmappipelines/finalizers"]
  verbs: ["update"]
- apiGroups: ["clickheatmap.io"]
  resources: ["clickheatmapbackfills"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["clickheatmap.io"]
  resources: ["clickheatmapbackfills/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["clickheatmap.io"]
  resources: ["clickheatmapbackfills/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["configmaps", "serviceaccounts", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
AWS rate limits as SERVICE=RATE pairs, sorted by service, comma separated.
*/}}
{{- define "clickheatmap-operator.rateLimits" -}}
{{- $pairs := list -}}
{{- range $service, $rate := . -}}
{{- $pairs = append $pairs (printf "%s=%v" $service $rate) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end }}
