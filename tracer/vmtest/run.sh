#!/usr/bin/env bash
# run.sh [--timeout SECONDS] CACHE_DIR VERSION [ENV=VAL...] -- COMMAND [ARGS...]
#
# Boots the kernel that fetch-kernels.sh prepared in CACHE_DIR/kernels/VERSION
# under QEMU (TCG, 2 vCPUs, 2 GiB, no network device), with the host's /
# shared read-only over virtio-9p plus a tmpfs overlay, and runs COMMAND as
# root inside, in the current directory, with ENV=VAL and
# KDROP_VM_KERNEL=VERSION set. COMMAND's output streams to stdout; run.sh
# exits with COMMAND's exit code.
#
# Guest channels: ttyS0 = kernel console -> CACHE_DIR/kernels/VERSION/console.log
#                 ttyS1 = status lines from the guest init (stage, exit code)
#                 virtio serial port "kdrop.output" = COMMAND's stdout+stderr,
#                 streamed to our stdout (kept apart from kernel log noise)
#
# Exit codes of its own: 124 timeout, 125 VM failure (no boot, panic,
# crash), 130/143 interrupted.
#
# Environment knobs (all optional):
#   KDROP_VMTEST_TIMEOUT  seconds before the VM is killed (default 600; or --timeout)
#   KDROP_VMTEST_MEMORY   guest RAM in MiB (default 2048)
#   KDROP_VMTEST_CPUS     vCPUs (default 2)
#   KDROP_VMTEST_CPU      QEMU CPU model (default max)
#   KDROP_VMTEST_APPEND   extra kernel command line, e.g. vmtest.p9cache=mmap
#   KDROP_VMTEST_DEBUG    non-empty: print the guest's boot timeline
#
# The guest mounts fresh tmpfs on /tmp and /run; a current directory or a
# COMMAND argument under the host's /tmp or /run (a clone in /tmp) is bound
# back into it from the host's tree, writable through the overlay.
set -euo pipefail

here=$(cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

TIMEOUT=${KDROP_VMTEST_TIMEOUT:-600}
MEMORY=${KDROP_VMTEST_MEMORY:-2048}
CPUS=${KDROP_VMTEST_CPUS:-2}
CPU_MODEL=${KDROP_VMTEST_CPU:-max}

usage() {
	echo "usage: $0 [--timeout SECONDS] CACHE_DIR VERSION [ENV=VAL...] -- COMMAND [ARGS...]" >&2
	exit 2
}

# Set by main / start_vm, used by cleanup.
RUN_DIR=
QEMU_PID=
TAIL_PID=

# shellcheck disable=SC2317 # trap handlers
cleanup() {
	[ -z "$QEMU_PID" ] || kill -TERM "$QEMU_PID" 2>/dev/null || true
	[ -z "$QEMU_PID" ] || wait "$QEMU_PID" 2>/dev/null || true
	[ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null || true
	[ -z "$RUN_DIR" ] || rm -rf "$RUN_DIR"
}

# shellcheck disable=SC2317 # trap handler
on_signal() {
	log "interrupted, stopping the VM"
	trap - EXIT
	cleanup
	exit "$1"
}

# write_cmd FILE CWD VERSION ENV... -- COMMAND...: the bash script the guest
# runs. printf %q quotes for bash, which the guest runs from the host root.
write_cmd() {
	local file=$1 cwd=$2 version=$3
	shift 3
	{
		echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
		echo 'export HOME=/root TERM=dumb LANG=C.UTF-8'
		cat <<-'EOF'
			vmtest_unhide() {
				mountpoint -q /run/vmtest/root || { mkdir -p /run/vmtest/root && mount --bind / /run/vmtest/root; } || return
				mountpoint -q "$1" && return
				mkdir -p -- "$1" && mount --bind -- "/run/vmtest/root$1" "$1"
			}
		EOF
		printf 'export KDROP_VM_KERNEL=%q\n' "$version"
		while [ "$1" != -- ]; do
			printf 'export %s=%q\n' "${1%%=*}" "${1#*=}"
			shift
		done
		shift
		# Host paths the guest's fresh /tmp and /run hide: bind them back
		# from the root overlay (a bind of / without its submounts).
		local p
		for p in "$cwd" "$@"; do
			case "$p" in
			/tmp/* | /run/*) ;;
			*) continue ;;
			esac
			[ -e "$p" ] || continue
			[ -d "$p" ] || p=$(dirname -- "$p")
			printf 'vmtest_unhide %q || exit 126\n' "$p"
		done
		printf 'cd -- %q || exit 126\n' "$cwd"
		printf 'exec'
		printf ' %q' "$@"
		printf '\n'
	} >"$file"
}

# start_vm KDIR VERSION: start QEMU in the background (via timeout(1), which
# also forwards our TERM to it).
start_vm() {
	local kdir=$1 version=$2 kernel
	kernel=$kdir/vmlinux
	[ -f "$kernel" ] || kernel=$kdir/vmlinuz

	# panic=-1: reboot at once on a panic, and -no-reboot turns any reboot
	# into a QEMU exit, so a panic never hangs until the timeout.
	# tsc=reliable: TCG's TSC follows the host clock and is the same on all
	# vCPUs, but on a busy host the guest's sync check and clocksource
	# watchdog often declare it unstable and fall back to the HPET, whose
	# every read is an emulated MMIO access: time-hungry programs (the Go
	# runtime) then crawl.
	local append="console=ttyS0 panic=-1 tsc=reliable random.trust_cpu=on"
	append+=" vmtest.kdir=$kdir vmtest.run=$RUN_DIR"
	append+=" ${KDROP_VMTEST_APPEND:-}"
	# shellcheck disable=SC2054 # the commas are QEMU option syntax
	local -a qemu=(
		qemu-system-x86_64 -accel tcg -cpu "$CPU_MODEL" -smp "$CPUS" -m "$MEMORY"
		-nodefaults -no-user-config -display none -nic none -no-reboot
		-kernel "$kernel" -initrd "$kdir/initramfs.cpio.gz" -append "$append"
		-chardev "file,id=console,path=$kdir/console.log" -serial chardev:console
		-chardev "file,id=status,path=$RUN_DIR/status" -serial chardev:status
		-device virtio-serial-pci
		-chardev "file,id=output,path=$RUN_DIR/output"
		-device virtserialport,chardev=output,name=kdrop.output
		# multidevs=remap: / spans several host file systems; remap inode
		# numbers so they stay unique inside the guest.
		-fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap"
		-device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
	)
	# qboot (shipped with Debian's QEMU) starts a direct kernel boot about
	# half a second sooner than SeaBIOS under TCG; ACPI comes from QEMU
	# either way.
	[ ! -f /usr/share/qemu/qboot.rom ] || qemu+=(-bios /usr/share/qemu/qboot.rom)
	: >"$RUN_DIR/output"
	: >"$RUN_DIR/status"
	timeout --signal=TERM --kill-after=10 "$TIMEOUT" "${qemu[@]}" </dev/null &
	QEMU_PID=$!
	# Stream the command's output as the guest writes it; tail exits after
	# QEMU does, having printed the rest.
	tail -s 0.1 -c +1 -f --pid="$QEMU_PID" "$RUN_DIR/output" &
	TAIL_PID=$!
}

# console_tail KDIR: the end of the kernel console, to explain a failure.
console_tail() {
	echo "---- last lines of $1/console.log ----" >&2
	tail -n 40 "$1/console.log" >&2 || true
	echo "----" >&2
}

# verdict KDIR VERSION QEMU_RC: turn what the guest reported into our exit
# code.
verdict() {
	local kdir=$1 version=$2 qrc=$3 rc
	rc=$(sed -n 's/^KDROP_VMTEST_EXIT=\([0-9]*\).*/\1/p' "$RUN_DIR/status" | tail -n 1)
	if [ -n "$rc" ]; then
		# 126/127: the command could not be started at all.
		if [ "$rc" -eq 126 ] || [ "$rc" -eq 127 ]; then
			log "$version: the command could not be started (exit $rc)"
			console_tail "$kdir"
		fi
		return "$rc"
	fi
	if [ "$qrc" -eq 124 ]; then
		log "$version: timed out after ${TIMEOUT}s (set KDROP_VMTEST_TIMEOUT or --timeout)"
		console_tail "$kdir"
		return 124
	fi
	if grep -q 'Kernel panic' "$kdir/console.log" 2>/dev/null; then
		log "$version: the guest kernel panicked"
	elif ! grep -q 'KDROP_VMTEST_STAGE=command' "$RUN_DIR/status"; then
		log "$version: the guest did not boot to the command (last stage: $(tail -n 1 "$RUN_DIR/status" 2>/dev/null || echo none); qemu exit $qrc)"
	else
		log "$version: the VM stopped before the command finished (qemu exit $qrc)"
	fi
	console_tail "$kdir"
	return 125
}

main() {
	if [ "${1:-}" = --timeout ]; then
		[ $# -ge 2 ] || usage
		TIMEOUT=$2
		shift 2
	fi
	[ $# -ge 4 ] || usage
	local cache version kdir arg seen=
	[ -d "$1" ] || die "cache directory $1 does not exist: run fetch-kernels.sh $1 $2 first"
	cache=$(abs_dir "$1")
	version=$2
	shift 2
	check_version "$version"
	kdir=$(kernel_dir "$cache" "$version")
	[ -f "$kdir/ready" ] || die "kernel $version is not prepared: run $here/fetch-kernels.sh $cache $version"
	for arg in "$@"; do
		[ "$arg" = -- ] && { seen=1; break; }
		[[ "$arg" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "expected ENV=VAL or --, got '$arg'"
	done
	[ -n "$seen" ] || usage
	[ "${!#}" != -- ] || usage
	[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "timeout must be a number of seconds, got '$TIMEOUT'"
	# Paths go on the kernel command line, which splits at spaces.
	[[ "$kdir" != *[[:space:]]* ]] || die "the cache path must not contain spaces: $kdir"
	# guest/init changed since the image was built: rebuild it (no network).
	if [ "$(cat "$kdir/ready")" != "$(init_sha)" ]; then
		"$here/fetch-kernels.sh" "$cache" "$version" >&2 || die "cannot refresh the initramfs of $version"
	fi

	mkdir -p "$cache/run"
	trap cleanup EXIT
	trap 'on_signal 130' INT
	trap 'on_signal 143' TERM
	RUN_DIR=$(mktemp -d "$cache/run/XXXXXX")
	cp "$here/guest/stage2.sh" "$RUN_DIR/stage2.sh"
	write_cmd "$RUN_DIR/cmd.sh" "$PWD" "$version" "$@"

	# A guest that dies before it reaches the command (seen: an early-boot
	# int3 oops of 7.x under TCG) ran nothing: boot it again, twice at most.
	local qrc attempt
	for attempt in 1 2 3; do
		start_vm "$kdir" "$version"
		qrc=0
		wait "$QEMU_PID" || qrc=$?
		QEMU_PID=
		wait "$TAIL_PID" 2>/dev/null || true
		TAIL_PID=
		if grep -q 'KDROP_VMTEST_STAGE=command' "$RUN_DIR/status" || [ "$qrc" -eq 124 ] || [ "$attempt" -eq 3 ]; then
			break
		fi
		log "$version: the guest died before running the command (boot attempt $attempt); booting again"
		console_tail "$kdir"
	done

	# The guest's boot timeline (uptime at each stage), for tuning.
	[ -z "${KDROP_VMTEST_DEBUG:-}" ] || sed 's/^/vmtest: guest: /' "$RUN_DIR/status" >&2
	local rc=0
	verdict "$kdir" "$version" "$qrc" || rc=$?
	exit "$rc"
}

main "$@"
