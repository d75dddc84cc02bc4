# Shared helpers for the vmtest scripts. Sourced, never executed.
# shellcheck shell=bash

# The kernel versions the harness knows, and the Debian suites that carry
# them. "7" means the newest 7.x in trixie-backports.
VMTEST_VERSIONS="5.10 6.1 6.12 7"

log() { printf 'vmtest: %s\n' "$*" >&2; }

die() {
	printf 'vmtest: error: %s\n' "$*" >&2
	exit 1
}

# check_version VERSION: die unless VERSION is one the harness supports.
check_version() {
	case " $VMTEST_VERSIONS " in
	*" $1 "*) ;;
	*) die "unknown kernel version '$1' (known: $VMTEST_VERSIONS)" ;;
	esac
}

# abs_dir DIR: print the physical absolute path of an existing directory.
# Physical, because the guest sees the host tree through 9p and must be able
# to reach the same path without depending on host-side bind mounts.
abs_dir() { (cd -P -- "$1" && pwd); }

# kernel_dir CACHE VERSION: where fetch-kernels.sh keeps one kernel.
kernel_dir() { printf '%s/kernels/%s\n' "$1" "$2"; }
