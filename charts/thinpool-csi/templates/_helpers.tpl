{{/* The CSI driver name: fixed, it is in every PersistentVolume the driver made. */}}
{{- define "thinpool-csi.driverName" -}}thinpool.csi.io{{- end }}

{{- define "thinpool-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "thinpool-csi.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "thinpool-csi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The effective pool settings of a node group: its own `pool` over the chart-wide `pool` limits.
Validates everything a user can get wrong and fails the render with a message that says what to fix.
Called with (dict "root" $ "group" $group); returns the merged pool as YAML.
*/}}
{{- define "thinpool-csi.groupPool" -}}
{{- $root := .root -}}
{{- $g := .group -}}
{{- if not $g.name -}}
{{- fail "every entry of nodeGroups needs a name (it names the group's DaemonSet)" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$" (toString $g.name)) -}}
{{- fail (printf "nodeGroups name %q: use at most 20 lowercase letters, digits and '-'" (toString $g.name)) -}}
{{- end -}}
{{- $own := $g.pool | default dict -}}
{{- $pool := mergeOverwrite (deepCopy $root.Values.pool) (deepCopy $own) -}}
{{- /* A group may leave out a kind's section entirely (pool: {kind: loop}). */ -}}
{{- range $k := list "loop" "directLvm" "device" -}}
{{- if not (kindIs "map" (index $pool $k)) -}}
{{- $_ := set $pool $k dict -}}
{{- end -}}
{{- end -}}
{{- /* mergeOverwrite skips zero values; a limit the group sets, even 0, must reach the checks. */ -}}
{{- range $k := list "overprovisionRatio" "dataFillLimit" "metadataFillLimit" -}}
{{- if hasKey $own $k -}}
{{- $_ := set $pool $k (index $own $k) -}}
{{- end -}}
{{- end -}}
{{- /* A group's autoExtend.enabled: false must win over a chart-wide true (false is a zero value). */ -}}
{{- $ownGrow := $own.autoExtend | default dict -}}
{{- if and (kindIs "map" $ownGrow) (hasKey $ownGrow "enabled") -}}
{{- $_ := set $pool.autoExtend "enabled" $ownGrow.enabled -}}
{{- end -}}
{{- if not $pool.kind -}}
{{- fail (printf "nodeGroups %s: no pool configured: set pool.kind to loop (a trial), direct-lvm (an existing LVM thin pool) or device (an empty disk)" $g.name) -}}
{{- end -}}
{{- if not (has $pool.kind (list "loop" "direct-lvm" "device")) -}}
{{- fail (printf "nodeGroups %s: unknown pool.kind %q: use loop, direct-lvm or device" $g.name (toString $pool.kind)) -}}
{{- end -}}
{{- if eq $pool.kind "direct-lvm" -}}
{{- $lvm := (($pool.directLvm | default dict).pool | default "") | toString -}}
{{- if not (regexMatch "^[A-Za-z0-9_.+][A-Za-z0-9_.+-]*/[A-Za-z0-9_.+][A-Za-z0-9_.+-]*$" $lvm) -}}
{{- fail (printf "nodeGroups %s: pool.kind direct-lvm needs pool.directLvm.pool as VG/LV naming an existing LVM thin pool (got %q)" $g.name $lvm) -}}
{{- end -}}
{{- end -}}
{{- if eq $pool.kind "device" -}}
{{- $dev := (($pool.device | default dict).path | default "") | toString -}}
{{- if or (not (hasPrefix "/dev/" $dev)) (contains "/../" $dev) -}}
{{- fail (printf "nodeGroups %s: pool.kind device needs pool.device.path, an empty disk under /dev/ such as /dev/disk/by-id/... (got %q)" $g.name $dev) -}}
{{- end -}}
{{- end -}}
{{- if eq $pool.kind "loop" -}}
{{- $path := (($pool.loop | default dict).path | default "") | toString -}}
{{- if and $path (not (hasPrefix "/" $path)) -}}
{{- fail (printf "nodeGroups %s: pool.loop.path %q must be an absolute path on the node" $g.name $path) -}}
{{- end -}}
{{- end -}}
{{- $ratio := $pool.overprovisionRatio -}}
{{- if or (not (include "thinpool-csi.isNumber" $ratio)) (lt (float64 $ratio) 1.0) -}}
{{- fail (printf "nodeGroups %s: pool.overprovisionRatio %v must be a number of at least 1 (1 means no overprovisioning)" $g.name $ratio) -}}
{{- end -}}
{{- range $k := list "dataFillLimit" "metadataFillLimit" -}}
{{- $v := index $pool $k -}}
{{- if or (not (include "thinpool-csi.isNumber" $v)) (le (float64 $v) 0.0) (gt (float64 $v) 100.0) -}}
{{- fail (printf "nodeGroups %s: pool.%s %v must be a percentage above 0 and at most 100" $g.name $k $v) -}}
{{- end -}}
{{- end -}}
{{- $grow := $pool.autoExtend | default dict -}}
{{- if $grow.enabled -}}
{{- if eq $pool.kind "loop" -}}
{{- fail (printf "nodeGroups %s: pool.autoExtend grows LVM-backed pools (direct-lvm, device); a loop pool grows when pool.loop.dataSize is raised" $g.name) -}}
{{- end -}}
{{- $t := $grow.threshold -}}
{{- if or (not (include "thinpool-csi.isNumber" $t)) (lt (float64 $t) 50.0) (gt (float64 $t) 95.0) (ne (float64 $t) (float64 (int64 $t))) -}}
{{- fail (printf "nodeGroups %s: pool.autoExtend.threshold %v must be a whole percentage from 50 to 95" $g.name $t) -}}
{{- end -}}
{{- $p := $grow.percent -}}
{{- if or (not (include "thinpool-csi.isNumber" $p)) (lt (float64 $p) 1.0) (gt (float64 $p) 100.0) (ne (float64 $p) (float64 (int64 $p))) -}}
{{- fail (printf "nodeGroups %s: pool.autoExtend.percent %v must be a whole percentage from 1 to 100" $g.name $p) -}}
{{- end -}}
{{- $max := ($grow.maxSize | default "") | toString -}}
{{- if and $max (not (regexMatch "^[0-9]+(B|K|k|KB|M|MB|G|GB|T|TB|Ki|KiB|Mi|MiB|Gi|GiB|Ti|TiB)?$" $max)) -}}
{{- fail (printf "nodeGroups %s: pool.autoExtend.maxSize %q must be a size such as 500Gi, or empty for no limit" $g.name $max) -}}
{{- end -}}
{{- end -}}
{{- toYaml $pool -}}
{{- end }}

{{/* "true" when the value is a number (YAML gives float64, --set gives int64). */}}
{{- define "thinpool-csi.isNumber" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}true{{- end -}}
{{- end }}

{{/* The thinpool-csi flags of a node group's pool (one per line, already validated). */}}
{{- define "thinpool-csi.poolArgs" -}}
- --pool={{ .kind }}
{{- /* A group's own nodeGroups entry replaces the default one whole (Helm does not merge list
       entries): a loop setting it leaves out is left to the binary, whose defaults are the ones
       values.yaml shows, and never passed empty. */ -}}
{{- if eq .kind "loop" }}
{{- with .loop }}
{{- if .dataSize }}
- --loop-data-size={{ .dataSize }}
{{- end }}
{{- if .blockSize }}
- --loop-block-size={{ .blockSize }}
{{- end }}
{{- if .path }}
- --loop-dir={{ .path }}
{{- end }}
{{- end }}
{{- else if eq .kind "direct-lvm" }}
- --lvm-pool={{ .directLvm.pool }}
{{- else if eq .kind "device" }}
- --device={{ .device.path }}
- --lvm-pool={{ .device.lvmPool | default "thinpool-csi/thinpool" }}
{{- end }}
- --overprovision-ratio={{ .overprovisionRatio }}
- --data-fill-limit={{ .dataFillLimit }}
- --metadata-fill-limit={{ .metadataFillLimit }}
{{- with .autoExtend }}
{{- if .enabled }}
- --auto-extend-threshold={{ .threshold | int64 }}
- --auto-extend-percent={{ .percent | int64 }}
{{- if .maxSize }}
- --auto-extend-max-size={{ .maxSize }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Checks that concern all node groups together. */}}
{{- define "thinpool-csi.validateGroups" -}}
{{- if not .Values.nodeGroups -}}
{{- fail "no pool configured: nodeGroups is empty; add a group with pool.kind loop, direct-lvm or device (see values.yaml)" -}}
{{- end -}}
{{- $names := dict -}}
{{- range .Values.nodeGroups -}}
{{- if hasKey $names (toString .name) -}}
{{- fail (printf "nodeGroups: the name %q is used twice" (toString .name)) -}}
{{- end -}}
{{- $_ := set $names (toString .name) true -}}
{{- if and (gt (len $.Values.nodeGroups) 1) (not .nodeSelector) -}}
{{- fail (printf "nodeGroups %s: with more than one node group every group needs a nodeSelector, so that no node runs two plugins" (toString .name)) -}}
{{- end -}}
{{- end -}}
{{- $orphans := .Values.node.deleteOrphansAfter | int64 -}}
{{- if and (ne $orphans 0) (lt $orphans 600) -}}
{{- fail (printf "node.deleteOrphansAfter %d is too short: use 0 (never delete) or at least 600 seconds" $orphans) -}}
{{- end -}}
{{- $classes := list -}}
{{- range .Values.storageClasses -}}
{{- if not (has .fsType (list "ext4" "xfs")) -}}
{{- fail (printf "storageClasses %s: fsType %q is not supported: use ext4 or xfs" .name (toString .fsType)) -}}
{{- end -}}
{{- $classes = append $classes .name -}}
{{- end -}}
{{- if and .Values.defaultStorageClass (not (has .Values.defaultStorageClass $classes)) -}}
{{- fail (printf "defaultStorageClass %q is not one of storageClasses (%s)" .Values.defaultStorageClass (join ", " $classes)) -}}
{{- end -}}
{{- end }}
