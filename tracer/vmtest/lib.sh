# Shared helpers for the vmtest scripts. Sourced, never executed.
# shellcheck shell=bash

VMTEST_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)

# The kernel versions the harness knows, and the Debian suites that carry
# them. "7" means the newest 7.x in trixie-backports.
VMTEST_VERSIONS="5.10 6.1 6.12 7"

# Modules the guest needs before it can reach the host root and the output
# port. Those built into a kernel are skipped (modprobe --show-depends says
# "builtin").
INITRAMFS_MODULES="virtio_pci virtio_console 9pnet_virtio 9p overlay"

# Bump when fetch-kernels.sh builds the initramfs differently.
INITRAMFS_FORMAT=2

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

# init_sha: identifies what an initramfs is built from (guest/init, the
# module list, the layout). fetch-kernels.sh stores it in the kernel's
# "ready" file; a mismatch means the image must be rebuilt (no download).
init_sha() {
	{
		cat "$VMTEST_DIR/guest/init"
		echo "$INITRAMFS_MODULES $INITRAMFS_FORMAT"
	} | sha256sum | cut -d' ' -f1
}
