{{/*
The migrations hook and Helm's ordering.

Helm runs pre-install hooks before it creates any ordinary object of the release, and
pre-upgrade hooks before it updates them. The Job therefore cannot use the release's Secret
(absent on install, still holding the old values on upgrade), ServiceAccount or ConfigMaps.
It gets hook-scoped copies instead, rendered from the same values:
  weight -20  ServiceAccount <fullname>-hook   (only with serviceAccount.create)
  weight -15  Secret <fullname>-hook           (only the keys the Job uses; not with existingSecret,
                                                which must exist before the install anyway)
  weight -15  ConfigMap <fullname>-hook        (only with migrations.topics: the topics.yaml)
  weight   0  Job <fullname>-migrate           (esctl migrate, [set-login-webhook-secret], provision)
Helm creates hooks in weight order and waits for the Job to complete. The copies carry
`before-hook-creation,hook-succeeded`: they are replaced on the next run and deleted once the
Job succeeded (Helm deletes hook-succeeded objects after the whole phase; after a failure it
deletes the copies too). The Job itself is kept (`before-hook-creation`) so its logs can be
read, until ttlSecondsAfterFinished. Hook objects are not part of the release: `helm uninstall`
leaves a finished Job to its TTL.
*/}}

{{- define "es.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: {{ .policy }}
{{- end -}}

{{/* The secret keys the Job uses. */}}
{{- define "es.hookSecretKeys" -}}
{{- $keys := list "database-url" "secrets-keys" -}}
{{- if and .Values.migrations.setLoginWebhookSecret .Values.gateway.enabled }}{{ $keys = append $keys "login-webhook-secret" }}{{ end -}}
{{- if .Values.migrations.provision }}{{ $keys = concat $keys (list "kafka-sasl-password" "schema-registry-url") }}{{ end -}}
{{- toYaml $keys -}}
{{- end -}}

{{- define "es.hookSecretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "es.resourceName" (dict "root" . "suffix" "hook") -}}
{{- end -}}
{{- end -}}

{{- define "es.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "es.resourceName" (dict "root" . "suffix" "hook") -}}
{{- else -}}
{{- include "es.serviceAccountName" . -}}
{{- end -}}
{{- end -}}
