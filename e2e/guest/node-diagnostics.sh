#!/bin/bash
# What only the node shows, printed by the cluster suite on a failure (THINPOOL_E2E_NODE_DIAGNOSTICS,
# set by e2e/guest/cluster.sh): the kubelet's mounts as the node sees them, each pod container's
# volume mounts and processes as it sees them, and the pool's device-mapper tables.
export CONTAINERD_NAMESPACE=k8s.io

echo "--- mounts under /var/lib/kubelet (the node's mount namespace)"
findmnt -rn -o TARGET,SOURCE,FSTYPE,PROPAGATION | grep -F /var/lib/kubelet | cut -c1-220

# volumes PID: a container's mounts other than its image, /proc, /sys, /dev and /etc files.
volumes() {
	awk '$5 !~ /^\/(proc|sys|dev|etc)/ && $5 != "/" {
		opt = ""; for (i = 7; $i != "-"; i++) opt = opt " " $i
		print "    " $5, "root=" $4, $(i + 1), $(i + 2), opt }' "/proc/$1/mountinfo" | head -15
}
echo "--- containers: volumes and processes as each sees them"
ctr tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { print $1, $2 }' | while read -r id pid; do
	info=$(ctr containers info "$id" 2>/dev/null)
	pod=$(sed -n 's/.*"io.kubernetes.pod.name": "\([^"]*\)".*/\1/p' <<<"$info" | head -1)
	name=$(sed -n 's/.*"io.kubernetes.container.name": "\([^"]*\)".*/\1/p' <<<"$info" | head -1)
	[[ -n $name && $name != POD ]] || continue
	echo "- pod $pod, container $name (pid $pid)"
	volumes "$pid"
	# The files on each volume as the container sees them (/proc/PID/root is its root).
	awk '{ for (i = 7; $i != "-"; i++); if ($(i + 1) ~ /^(ext4|xfs)$/) print $5 }' "/proc/$pid/mountinfo" | while read -r m; do
		ls -la --time-style=+%T "/proc/$pid/root$m" | head -8 | sed "s|^|    $m: |"
	done
	ps -o pid,stat,wchan:24,args --ppid "$pid" -p "$pid" | cut -c1-160 | sed 's/^/    /'
done
echo "--- processes in uninterruptible sleep"
ps -eo pid,stat,wchan:24,args | awk 'NR == 1 || $2 ~ /^D/' | cut -c1-160
echo "--- device-mapper"
dmsetup table 2>&1 | cut -c1-200
dmsetup status 2>&1 | cut -c1-200
echo "--- kubelet: volume expansion (last 20 lines)"
grep -E 'NodeExpand|Expansion|expand' /var/log/cluster/kubelet.log 2>/dev/null | tail -20 | cut -c1-300
echo "--- kernel log (last 25 lines)"
dmesg | tail -25
