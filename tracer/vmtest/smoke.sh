#!/usr/bin/env bash
# smoke.sh CACHE_DIR VERSION...
#
# Boots each prepared kernel and checks inside that the guest offers what
# the tracer tests rely on: the right kernel, BTF, network namespaces, veth,
# iptables (nf_tables, autoloaded from the kernel's own modules), bpffs and
# bpftool. Prints PASS or FAIL per kernel; exits non-zero if any failed.
set -uo pipefail

here=$(cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

[ $# -ge 2 ] || { echo "usage: $0 CACHE_DIR VERSION..." >&2; exit 2; }
cache=$1
shift

# The check runs inside the guest under bash; every step prints what it
# checks so a FAIL shows where it stopped.
read -r -d '' CHECK <<'EOF'
set -euo pipefail
step() { echo "--- $*"; }
want=$1
step "uname -r = $want"
[ "$(uname -r)" = "$want" ] || { echo "running $(uname -r)"; exit 1; }
step "KDROP_VM_KERNEL=$KDROP_VM_KERNEL, running as uid $(id -u)"
[ "$(id -u)" = 0 ]
step "BTF"
test -s /sys/kernel/btf/vmlinux
step "mounts"
for m in /sys/fs/bpf:bpf /sys/kernel/tracing:tracefs /sys/kernel/debug:debugfs \
	/sys/fs/cgroup:cgroup2 /run:tmpfs /tmp:tmpfs /dev:devtmpfs /:overlay; do
	grep -q " ${m%%:*} ${m#*:} " /proc/mounts || { echo "${m%%:*} is not ${m#*:}"; exit 1; }
done
step "memlock = $(ulimit -l)"
[ "$(ulimit -l)" = unlimited ]
step "writable root (overlay)"
touch /var/tmp/vmtest-smoke && rm /var/tmp/vmtest-smoke
step "ip netns add/del"
ip netns add vmtest-smoke
step "veth pair into the namespace"
ip link add vmtest-a type veth peer name vmtest-b
ip link set vmtest-b netns vmtest-smoke
ip addr add 10.99.0.1/24 dev vmtest-a && ip link set vmtest-a up
ip -n vmtest-smoke addr add 10.99.0.2/24 dev vmtest-b
ip -n vmtest-smoke link set vmtest-b up
ip -n vmtest-smoke link set lo up
step "iptables -L / -A INPUT -j DROP (iptables: $(iptables -V))"
iptables -L -n >/dev/null
ip netns exec vmtest-smoke iptables -A INPUT -p icmp -j DROP
ip netns exec vmtest-smoke iptables -L INPUT -n | grep -q DROP
# busybox ping: the host may have no ping installed, the guest always has
# the busybox that stage 1 copied.
step "ping across the veth is dropped by the rule"
ping() { /run/vmtest/busybox ping "$@"; }
if ping -c 1 -W 1 10.99.0.2 >/dev/null 2>&1; then echo "ping went through"; exit 1; fi
ip netns exec vmtest-smoke iptables -D INPUT -p icmp -j DROP
ping -c 1 -W 2 10.99.0.2 >/dev/null
ip netns del vmtest-smoke
if command -v bpftool >/dev/null; then
	step "bpftool prog list"
	bpftool prog list >/dev/null
else
	step "bpftool not installed on the host: skipped"
fi
echo "--- all checks passed"
EOF

passed=0 failed=0
for version in "$@"; do
	check_version "$version"
	kdir=$(kernel_dir "$cache" "$version")
	echo "smoke test on $version"
	start=$(date +%s%N)
	"$here/run.sh" "$cache" "$version" -- bash -c "$CHECK" smoke "$(cat "$kdir/version" 2>/dev/null)" 2>&1 |
		sed "s/^/  [$version] /"
	rc=${PIPESTATUS[0]}
	ms=$((($(date +%s%N) - start) / 1000000))
	if [ "$rc" -eq 0 ]; then
		printf 'PASS %-5s %s (%d.%ds)\n' "$version" "$(cat "$kdir/version")" $((ms / 1000)) $((ms % 1000 / 100))
		passed=$((passed + 1))
	else
		printf 'FAIL %-5s %s (exit %s)\n' "$version" "$(cat "$kdir/version" 2>/dev/null)" "$rc"
		failed=$((failed + 1))
	fi
done
echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
