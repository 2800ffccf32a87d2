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

# What a build output was made from is recorded beside it (OUT.inputs) as one hash of its inputs'
# contents, not compared by modification time: a fresh clone's files are all newer than outputs
# kept from an earlier run (CI keeps target/ between runs, see .ci/run), yet nothing changed.
# inputs_of FILE... [-- WORD...]: a hash of the FILEs' contents (not their paths) and the WORDs.
inputs_of() {
	local f
	{
		for f in "$@"; do
			[[ $f == -- ]] && break
			sha256sum <"$f"
		done
		while (($#)) && [[ $1 != -- ]]; do shift; done
		(($#)) && shift
		printf '%s\n' "$@"
	} | sha256sum | cut -d' ' -f1
}
# fresh OUT INPUTS: OUT exists and was made from INPUTS (FORCE=1: never).
fresh() { [[ ${FORCE:-0} != 1 && -s $1 && $(cat "$1.inputs" 2>/dev/null) == "$2" ]]; }
# made OUT INPUTS: records that OUT was made from INPUTS.
made() { echo "$2" >"$1.inputs"; }
