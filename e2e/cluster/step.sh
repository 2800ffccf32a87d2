# shellcheck shell=bash
# Sourced by build.sh and images.sh.
# step NAME COMMAND... -> runs COMMAND and prints how long it took.
step() {
	local name=$1
	shift
	local start=$SECONDS
	echo "==> $name"
	"$@"
	echo "==> $name: $((SECONDS - start)) s"
}
