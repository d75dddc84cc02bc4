# Stage 2 of the guest: PID 1 after switch_root, run by the static busybox
# that stage 1 copied to /run/vmtest. run.sh copies this file into the run
# directory for every run, so changing it needs no initramfs rebuild.
#
# It finishes the setup, runs the command (cmd.sh, written by run.sh) with
# its output on the virtio serial port, reports the exit code on ttyS1 and
# reboots, which ends QEMU.
# shellcheck shell=dash

bb=/run/vmtest/busybox
status() {
	read -r up _ </proc/uptime
	echo "$* t=$up" >/dev/ttyS1
}

# /dev/console is ttyS0 (kernel log); keep our own noise there too.
exec </dev/null >/dev/console 2>&1

status "KDROP_VMTEST_STAGE=stage2"
$bb hostname vmtest
$bb ip link set lo up

# No modules are preloaded: with the kernel's own modules tree bind-mounted
# at /lib/modules/$(uname -r), the kernel's request_module() autoloads
# veth, nf_tables, xt_* etc. through the host's /sbin/modprobe, and loading
# a module costs 0.1-0.5 s under TCG, so only pay for what a test uses.

# Programs load BPF objects: no memlock limit (kernels before 5.11 charge
# BPF maps against RLIMIT_MEMLOCK).
ulimit -l unlimited

# The command writes into a FIFO that busybox cat copies to the virtio
# serial port stage 1 found (/dev/vmtest-output). Not the port itself: a
# port can be open only once, so "echo >/dev/stderr" or "tee /dev/stdout"
# would fail with EBUSY.
fifo=/run/vmtest/output.fifo
$bb mkfifo "$fifo"
$bb cat "$fifo" >/dev/vmtest-output &
relay=$!

status "KDROP_VMTEST_STAGE=command"
$bb env -i /bin/bash /run/vmtest/cmd.sh </dev/null >"$fifo" 2>&1
rc=$?
status "KDROP_VMTEST_EXIT=$rc"

# cat ends when the last writer closes the FIFO; a daemon the command left
# behind may keep it open, so do not wait for that forever.
for _ in 1 2 3 4 5 6 7 8 9 10; do
	$bb kill -0 "$relay" 2>/dev/null || break
	$bb sleep 0.2
done
$bb kill "$relay" 2>/dev/null

$bb sync
# run.sh starts QEMU with -no-reboot, so a reboot ends QEMU.
$bb reboot -f
$bb sleep 10
