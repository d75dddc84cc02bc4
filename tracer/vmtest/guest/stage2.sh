# Stage 2 of the guest: PID 1 after switch_root, run by the static busybox
# that stage 1 copied to /run/vmtest. run.sh copies this file into the run
# directory for every run, so changing it needs no initramfs rebuild.
#
# It finishes the setup that needs the host's tools, runs the command
# (cmd.sh, written by run.sh) with its output on ttyS1, reports the exit
# code on ttyS2 and powers the VM off.
# shellcheck shell=sh

bb=/run/vmtest/busybox
status() { echo "$* t=$($bb cut -d" " -f1 /proc/uptime)" >/dev/ttyS2; }

# /dev/console is ttyS0 (kernel log); keep our own noise there too.
exec </dev/null >/dev/console 2>&1

status "KDROP_VMTEST_STAGE=stage2"
$bb hostname vmtest
$bb ip link set lo up

# Netfilter and veth are modules on every Debian kernel. Autoloading works
# once the modules tree is in place, but iptables-nft probes several
# families and match modules and a failed autoload shows up as a confusing
# "Protocol not supported" in a test; loading the common ones up front is
# cheap and makes the guest predictable.
: /sbin/modprobe -a -q veth nf_tables nft_compat nft_chain_nat xt_tcpudp \
	xt_comment xt_mark xt_conntrack 2>/dev/null

status "KDROP_VMTEST_STAGE=modules-probed"

# Programs load BPF objects: no memlock limit (kernels before 5.11 charge
# BPF maps against RLIMIT_MEMLOCK).
ulimit -l unlimited

# ttyS1 carries the command's output to run.sh untouched: no \n -> \r\n,
# no echo.
$bb stty -F /dev/ttyS1 raw -echo

status "KDROP_VMTEST_STAGE=command"
$bb env -i /bin/bash /run/vmtest/cmd.sh </dev/null >/dev/ttyS1 2>&1
rc=$?
status "KDROP_VMTEST_EXIT=$rc"

$bb sync
# run.sh starts QEMU with -no-reboot, so a reboot ends QEMU.
$bb reboot -f
$bb sleep 10
