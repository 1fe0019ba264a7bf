{{/*
Names. Kubernetes limits most names (and every label value) to 63 characters (DNS-1123 label),
so every name below is truncated to 63 and a trailing "-" left by the cut is trimmed. Names that
get a suffix (e.g. "-webhook") are built from the fullname truncated further, so the suffix
always survives.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, or "<release>-<name>", or just "<release>" when the release
name already contains the chart name (so `helm install kubetune ...` gives "kubetune", not
"kubetune-kubetune").
*/}}
{{- define "kubetune.fullname" -}}
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

{{/* "<fullname>-<suffix>" within 63 characters: the fullname is cut, never the suffix. */}}
{{- define "kubetune.suffixed" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $max := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "kubetune.fullname" $ctx | trunc $max | trimSuffix "-") $suffix }}
{{- end }}

{{/* "name-version" for the helm.sh/chart label ("+" is not allowed in label values). */}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: immutable in a Deployment, so never the version. */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" or "repository@digest"; the tag defaults to appVersion. Arg: (list image ctx). */}}
{{- define "kubetune.imageRef" -}}
{{- $image := index . 0 }}
{{- $ctx := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $ctx.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "kubetune.image" -}}
{{- include "kubetune.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "kubetune.trainerImage" -}}
{{- include "kubetune.imageRef" (list .Values.trainer.image .) }}
{{- end }}

{{/* Object names. */}}
{{- define "kubetune.metricsServiceName" -}}
{{- include "kubetune.suffixed" (list . "metrics") }}
{{- end }}

{{- define "kubetune.webhookServiceName" -}}
{{- include "kubetune.suffixed" (list . "webhook") }}
{{- end }}

{{- define "kubetune.webhookSecretName" -}}
{{- include "kubetune.suffixed" (list . "webhook-tls") }}
{{- end }}

{{- define "kubetune.webhookCertificateName" -}}
{{- include "kubetune.suffixed" (list . "webhook") }}
{{- end }}

{{- define "kubetune.webhookIssuerName" -}}
{{- include "kubetune.suffixed" (list . "selfsigned") }}
{{- end }}

{{/*
The ValidatingWebhookConfiguration is cluster-scoped: two releases with the same name in
different namespaces must not collide, so its name carries the release namespace.
*/}}
{{- define "kubetune.webhookConfigurationName" -}}
{{- printf "%s-%s" (include "kubetune.fullname" . | trunc 40 | trimSuffix "-") .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped RBAC names carry the release namespace too (see above). Arg: (list ctx suffix). */}}
{{- define "kubetune.clusterName" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s-%s" (include "kubetune.fullname" $ctx | trunc 30 | trimSuffix "-") ($ctx.Release.Namespace | trunc 20 | trimSuffix "-") $suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ClusterRole of the trainer pods (patch pods), bound per namespace by RoleBindings. */}}
{{- define "kubetune.trainerClusterRoleName" -}}
{{- include "kubetune.clusterName" (list . "trainer") }}
{{- end }}

{{/* DNS names the webhook certificate must carry (the API server calls <svc>.<ns>.svc). */}}
{{- define "kubetune.webhookDNSNames" -}}
{{- $svc := include "kubetune.webhookServiceName" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* Namespaces that get the trainer ServiceAccount + Role: the release namespace, every watched
namespace and trainer.serviceAccount.namespaces, without duplicates (JSON list). */}}
{{- define "kubetune.trainerNamespaces" -}}
{{- concat (list .Release.Namespace) .Values.watchNamespaces .Values.trainer.serviceAccount.namespaces | uniq | toJson }}
{{- end }}

{{/* The leader-election Lease (in the release namespace). */}}
{{- define "kubetune.leaseName" -}}
{{- include "kubetune.suffixed" (list . "leader") }}
{{- end }}
