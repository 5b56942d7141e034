{{/*
Helpers of the event-substrate chart. Naming: "es.*".
*/}}

{{/* Chart name. */}}
{{- define "es.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "es.fullname" -}}
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

{{/* <fullname>-<suffix>, the full name shortened so that the whole fits 63 characters.
     Args: dict "root" $ "suffix" "gateway" */}}
{{- define "es.resourceName" -}}
{{- $max := sub 62 (len .suffix) | int -}}
{{- printf "%s-%s" (include "es.fullname" .root | trunc $max | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "es.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The services: values key, component (= binary name), config section, port of the service's
     main listener, port of /readyz and /metrics, whether it reads s3 and avro_dir, whether it
     consumes Kafka, and the secret keys it gets. */}}
{{- define "es.services" -}}
gateway:
  key: gateway
  component: gateway
  section: gateway
  port: 8080
  opsPort: 8090
  s3: true
  avro: true
  consumer: false
  http: true
  secrets: [database-url, jwt-secret, login-webhook-secret, api-key-pepper, notifications-ticket-secret, s3-access-key-id, s3-secret-access-key, kafka-sasl-password, schema-registry-url]
notificationWriter:
  key: notificationWriter
  component: notification-writer
  section: notification_writer
  port: 8091
  opsPort: 8091
  s3: false
  avro: false
  consumer: true
  http: false
  secrets: [database-url, kafka-sasl-password, schema-registry-url]
ruleEvaluator:
  key: ruleEvaluator
  component: rule-evaluator
  section: rule_evaluator
  port: 8092
  opsPort: 8092
  s3: false
  avro: true
  consumer: true
  http: false
  secrets: [database-url, kafka-sasl-password, schema-registry-url]
dispatcher:
  key: dispatcher
  component: dispatcher
  section: dispatcher
  port: 8093
  opsPort: 8093
  s3: true
  avro: true
  consumer: true
  http: false
  secrets: [database-url, secrets-keys, s3-access-key-id, s3-secret-access-key, kafka-sasl-password, schema-registry-url]
mediaSaga:
  key: mediaSaga
  component: media-saga
  section: media_saga
  port: 8094
  opsPort: 8094
  s3: true
  avro: true
  consumer: true
  http: true
  secrets: [database-url, media-webhook-secret, s3-access-key-id, s3-secret-access-key, kafka-sasl-password, schema-registry-url]
{{- end -}}

{{/* The order the services are rendered in. */}}
{{- define "es.serviceKeys" -}}
[gateway, notificationWriter, ruleEvaluator, dispatcher, mediaSaga]
{{- end -}}

{{/* Secret key -> environment variable. */}}
{{- define "es.secretEnv" -}}
database-url: SUBSTRATE_DATABASE__URL
jwt-secret: SUBSTRATE_AUTH__JWT_SECRET
login-webhook-secret: SUBSTRATE_WEBHOOKS__LOGIN_SECRET
media-webhook-secret: SUBSTRATE_MEDIA_SAGA__WEBHOOK_SECRET
api-key-pepper: SUBSTRATE_API_KEYS__PEPPER
secrets-keys: SUBSTRATE_SECRETS__KEYS
notifications-ticket-secret: SUBSTRATE_NOTIFICATIONS__TICKET_SECRET
s3-access-key-id: SUBSTRATE_S3__ACCESS_KEY_ID
s3-secret-access-key: SUBSTRATE_S3__SECRET_ACCESS_KEY
kafka-sasl-password: SUBSTRATE_KAFKA__SASL_PASSWORD
schema-registry-url: SUBSTRATE_SCHEMA_REGISTRY__URL
{{- end -}}

{{/* Common labels. Args: dict "root" $ "component" "gateway" */}}
{{- define "es.labels" -}}
helm.sh/chart: {{ include "es.chart" .root }}
{{ include "es.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: event-substrate
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels. Args: dict "root" $ "component" "gateway" */}}
{{- define "es.selectorLabels" -}}
app.kubernetes.io/name: {{ include "es.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* metadata.annotations (commonAnnotations plus extra ones), indented for metadata; nothing
     when there are none. Args: dict "root" $ "extra" map */}}
{{- define "es.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (.root.Values.commonAnnotations | default dict) -}}
{{- with $all }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* The ServiceAccount of the services. */}}
{{- define "es.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "es.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the secret values. */}}
{{- define "es.secretName" -}}
{{- default (include "es.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The image reference of a service. A per-service digest or tag wins over the global ones;
     a digest wins over a tag at the same level. Args: dict "root" $ "image" <service image values> */}}
{{- define "es.image" -}}
{{- $g := .root.Values.image -}}
{{- $s := .image | default dict -}}
{{- $repo := $s.repository | default $g.repository -}}
{{- if $s.digest -}}
{{- printf "%s@%s" $repo $s.digest -}}
{{- else if $s.tag -}}
{{- printf "%s:%s" $repo $s.tag -}}
{{- else if $g.digest -}}
{{- printf "%s@%s" $repo $g.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo ($g.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Deep merge of src into dst (maps merged key by key, everything else replaced, including
     false, 0, "" and empty lists, unlike sprig's merge). Mutates dst.
     Args: dict "dst" map "src" map */}}
{{- define "es.merge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- $cur := index $dst $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $cur) -}}
{{- $_ := include "es.merge" (dict "dst" $cur "src" $v) -}}
{{- else if kindIs "map" $v -}}
{{- $_ := set $dst $k (deepCopy $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Copies "in" into "out" without null values, empty strings and the maps left empty (an empty
     string in values means "unset: the service's default"). Args: dict "in" map "out" map */}}
{{- define "es.prune" -}}
{{- $out := .out -}}
{{- range $k, $v := .in -}}
{{- if kindIs "map" $v -}}
{{- $sub := dict -}}
{{- $_ := include "es.prune" (dict "in" $v "out" $sub) -}}
{{- if $sub -}}
{{- $_ := set $out $k $sub -}}
{{- end -}}
{{- else if kindIs "invalid" $v -}}
{{- else if and (kindIs "string" $v) (eq $v "") -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The effective configuration of a service before extraConfig (shared config, then the
     service's config, then what the chart sets), pruned; as YAML.
     Args: dict "root" $ "svc" <entry of es.services> */}}
{{- define "es.typedConfig" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $v := index $root.Values $svc.key -}}
{{- $sections := list "kafka" "schema_registry" "database" "telemetry" "lifecycle" -}}
{{- if $svc.s3 }}{{ $sections = append $sections "s3" }}{{ end -}}
{{- $cfg := dict -}}
{{- range $sections -}}
{{- if hasKey $root.Values.config . -}}
{{- $_ := set $cfg . (deepCopy (index $root.Values.config .)) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "es.merge" (dict "dst" $cfg "src" (deepCopy ($v.config | default dict))) -}}
{{- /* What the chart owns: listeners on all interfaces, the image's schemas, mounted files. */ -}}
{{- $own := dict "listen" (printf "0.0.0.0:%v" $svc.port) -}}
{{- if eq $svc.key "gateway" -}}
{{- $_ := set $own "ops_listen" (printf "0.0.0.0:%v" $svc.opsPort) -}}
{{- $_ := set $own "routes_file" "/etc/event-substrate/routes/routes.yaml" -}}
{{- end -}}
{{- if $svc.avro -}}
{{- $_ := set $own "avro_dir" "/app/avro" -}}
{{- end -}}
{{- $forced := dict $svc.section $own -}}
{{- with $root.Values.tls.kafkaCA -}}
{{- if or .secretName .configMapName -}}
{{- $_ := set $forced "kafka" (dict "ssl_ca_location" (printf "/etc/event-substrate/kafka-ca/%s" .key)) -}}
{{- end -}}
{{- end -}}
{{- with $root.Values.tls.databaseCA -}}
{{- if or .secretName .configMapName -}}
{{- $_ := set $forced "database" (dict "ca_file" (printf "/etc/event-substrate/database-ca/%s" .key)) -}}
{{- end -}}
{{- end -}}
{{- $_ := include "es.merge" (dict "dst" $cfg "src" $forced) -}}
{{- $pruned := dict -}}
{{- $_ := include "es.prune" (dict "in" $cfg "out" $pruned) -}}
{{- toYaml $pruned -}}
{{- end -}}

{{/* The config file of a service: the typed configuration with extraConfig merged last. */}}
{{- define "es.configFile" -}}
{{- $typed := include "es.typedConfig" . | fromYaml -}}
{{- $v := index .root.Values .svc.key -}}
{{- $_ := include "es.merge" (dict "dst" $typed "src" (deepCopy ($v.extraConfig | default dict))) -}}
{{- toYaml $typed -}}
{{- end -}}

{{/* Whether a secret key is available to the containers: "yes" (chart-created and non-empty, or
     a required key of an existingSecret), "optional" (an existingSecret's optional key) or "".
     Args: dict "root" $ "key" "jwt-secret" "required" bool */}}
{{- define "es.secretPresence" -}}
{{- $s := .root.Values.secrets -}}
{{- if $s.existingSecret -}}
{{- if .required }}yes{{ else }}optional{{ end -}}
{{- else if index ($s.stringData | default dict) .key -}}
yes
{{- end -}}
{{- end -}}

{{/* The effective Kafka security protocol of a service (its config, else the shared one). */}}
{{- define "es.kafkaProtocol" -}}
{{- $cfg := include "es.typedConfig" . | fromYaml -}}
{{- (get ($cfg.kafka | default dict) "security_protocol") | default "plaintext" -}}
{{- end -}}

{{/* The secret environment variables of a service or of the hook.
     Args: dict "root" $ "keys" list "secretName" name "kafkaSasl" bool "jwtRequired" bool
     "ticketRequired" bool "registryRequired" bool (required keys of an existingSecret are referenced without
     `optional`, so a missing one stops the pod with an event naming it) */}}
{{- define "es.secretEnvVars" -}}
{{- $root := .root -}}
{{- $envs := include "es.secretEnv" $root | fromYaml -}}
{{- $required := list "database-url" "login-webhook-secret" "media-webhook-secret" "api-key-pepper" "secrets-keys" -}}
{{- if .jwtRequired }}{{ $required = append $required "jwt-secret" }}{{ end -}}
{{- if .ticketRequired }}{{ $required = append $required "notifications-ticket-secret" }}{{ end -}}
{{- if .registryRequired }}{{ $required = append $required "schema-registry-url" }}{{ end -}}
{{- if .kafkaSasl }}{{ $required = append $required "kafka-sasl-password" }}{{ end -}}
{{- range $key := .keys -}}
{{- if and (eq $key "kafka-sasl-password") (not $.kafkaSasl) -}}
{{- continue -}}
{{- end -}}
{{- $presence := include "es.secretPresence" (dict "root" $root "key" $key "required" (has $key $required)) -}}
{{- /* A registry URL in the config file is not overridden from an existingSecret. */ -}}
{{- if and (eq $key "schema-registry-url") (eq $presence "optional") -}}
{{- $presence = "" -}}
{{- end -}}
{{- if $presence }}
- name: {{ index $envs $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.secretName }}
      key: {{ $key }}
      {{- if eq $presence "optional" }}
      optional: true
      {{- end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The subset of secret values a service uses, for its checksum (chart-created Secret only). */}}
{{- define "es.secretDigest" -}}
{{- $s := .root.Values.secrets -}}
{{- if $s.existingSecret -}}
existingSecret={{ $s.existingSecret }}
{{- else -}}
{{- range $key := .keys }}
{{ $key }}={{ index ($s.stringData | default dict) $key }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level scheduling: a service's own non-empty value, else the top-level one.
     Args: dict "root" $ "v" <values block> */}}
{{- define "es.scheduling" -}}
{{- $root := .root -}}
{{- $v := .v -}}
{{- with ($v.nodeSelector | default $root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.tolerations | default $root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.affinity | default $root.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($v.priorityClassName | default $root.Values.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Topology spread constraints with the service's selector filled in.
     Args: dict "root" $ "v" <values block> "component" "gateway" */}}
{{- define "es.topologySpread" -}}
{{- $root := .root -}}
{{- $out := list -}}
{{- range (.v.topologySpreadConstraints | default $root.Values.topologySpreadConstraints) -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "es.selectorLabels" (dict "root" $root "component" $.component) | fromYaml)) -}}
{{- if not (hasKey $c "matchLabelKeys") -}}
{{- $_ := set $c "matchLabelKeys" (list "pod-template-hash") -}}
{{- end -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- with $out }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The CA volumes (Secret or ConfigMap you manage). */}}
{{- define "es.caVolumes" -}}
{{- range $name, $ca := dict "kafka-ca" .Values.tls.kafkaCA "database-ca" .Values.tls.databaseCA }}
{{- if $ca.secretName }}
- name: {{ $name }}
  secret:
    secretName: {{ $ca.secretName }}
    items:
      - key: {{ $ca.key }}
        path: {{ $ca.key }}
{{- else if $ca.configMapName }}
- name: {{ $name }}
  configMap:
    name: {{ $ca.configMapName }}
    items:
      - key: {{ $ca.key }}
        path: {{ $ca.key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "es.caVolumeMounts" -}}
{{- range $name, $ca := dict "kafka-ca" .Values.tls.kafkaCA "database-ca" .Values.tls.databaseCA }}
{{- if or $ca.secretName $ca.configMapName }}
- name: {{ $name }}
  mountPath: /etc/event-substrate/{{ $name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* A probe. Args: dict "path" "/healthz" "port" "ops" "t" <timings> */}}
{{- define "es.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .t.initialDelaySeconds | default 0 }}
periodSeconds: {{ .t.periodSeconds | default 10 }}
timeoutSeconds: {{ .t.timeoutSeconds | default 2 }}
failureThreshold: {{ .t.failureThreshold | default 3 }}
{{- end -}}

{{/* A PodDisruptionBudget number: an integer, or a quoted percentage ("50%"). */}}
{{- define "es.intOrPercent" -}}
{{- if and (kindIs "string" .) (hasSuffix "%" .) -}}
{{- . | quote -}}
{{- else -}}
{{- int . -}}
{{- end -}}
{{- end -}}
