#!/usr/bin/env bash
# fetch-kernels.sh CACHE_DIR VERSION...
#
# Downloads Debian's generic amd64 kernels and prepares, per VERSION
# (5.10, 6.1, 6.12 or 7 = newest 7.x), CACHE_DIR/kernels/VERSION/ with:
#   vmlinux            uncompressed ELF kernel (QEMU boots it via PVH, which
#                      under TCG is about twice as fast as a bzImage boot;
#                      absent if extraction failed: run.sh then uses vmlinuz)
#   vmlinuz            the bzImage as shipped
#   initramfs.cpio.gz  static busybox + guest/init + the modules needed to
#                      mount the host root (9p, virtio-pci, overlay)
#   root/              the unpacked packages; root/lib/modules/RELEASE is
#                      bind-mounted into the guest so modprobe works there
#   config             the kernel config
#   version            the full kernel release (uname -r)
#   packages           the Debian packages it came from, "NAME VERSION" a line
#                      (what `make vmlinux-h` states in bpf/vmlinux.h)
#
# Packages come from a private apt configuration under CACHE_DIR/apt (own
# sources.list, lists, cache and an empty dpkg status): the host's apt
# state is never touched. A kernel that is already prepared costs no
# network access at all.
set -euo pipefail

here=$(cd -- "$(dirname -- "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"

MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

usage() {
	echo "usage: $0 CACHE_DIR VERSION...   (VERSION: $VMTEST_VERSIONS)" >&2
	exit 2
}

# ---------------------------------------------------------------- host ---

# ensure_host_tools: install the host packages the harness needs, only if
# a command is missing, and refresh the host's package lists only if the
# install fails without them.
ensure_host_tools() {
	local -a pkgs=()
	command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
	command -v depmod >/dev/null && command -v modprobe >/dev/null || pkgs+=(kmod)
	command -v cpio >/dev/null || pkgs+=(cpio)
	command -v zstd >/dev/null || pkgs+=(zstd)
	command -v xz >/dev/null || pkgs+=(xz-utils)
	command -v readelf >/dev/null || pkgs+=(binutils)
	[ -r "$KEYRING" ] || pkgs+=(debian-archive-keyring)
	[ ${#pkgs[@]} -eq 0 ] && return 0

	[ "$(id -u)" -eq 0 ] || die "missing host packages ${pkgs[*]}: install them (apt-get install ${pkgs[*]}) or run as root"
	log "installing host packages: ${pkgs[*]}"
	# Another apt run (e.g. a setup script) may hold the dpkg lock: wait.
	local -a apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${pkgs[@]}" >&2; then
		log "install failed; running apt-get update and retrying"
		"${apt[@]}" update >&2 || die "apt-get update failed (is the Debian mirror reachable?)"
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${pkgs[@]}" >&2 ||
			die "cannot install ${pkgs[*]}: install them by hand and retry"
	fi
}

# ------------------------------------------------------------ private apt ---

# suite_for VERSION: the Debian release whose archive carries that kernel.
suite_for() {
	case "$1" in
	5.10) echo bullseye ;;
	6.1) echo bookworm ;;
	6.12 | 7) echo trixie ;; # 7.x lives in trixie-backports
	esac
}

# apt_root SUITE: directory of the private apt configuration for SUITE.
apt_root() { echo "$CACHE/apt/$1"; }

# apt_init SUITE: write the private apt.conf and sources.list (cheap;
# rewritten every time so an edit here takes effect).
apt_init() {
	local suite=$1 root
	root=$(apt_root "$suite")
	mkdir -p "$root"/etc/apt.conf.d "$root"/etc/preferences.d "$root"/etc/sources.list.d \
		"$root"/etc/trusted.gpg.d "$root"/state/lists/partial "$root"/cache/archives/partial
	touch "$root/state/status"
	# Dir::Etc points at our own directory, so nothing from /etc/apt
	# (sources, pins, hooks, proxies of other tools) applies; the empty
	# dpkg status makes resolution independent of what the host has.
	cat >"$root/apt.conf" <<EOF
Dir::Etc "$root/etc";
Dir::State "$root/state";
Dir::State::status "$root/state/status";
Dir::Cache "$root/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::Retries "3";
EOF
	local s="deb [signed-by=$KEYRING]"
	{
		echo "$s $MIRROR $suite main"
		echo "$s $SECURITY_MIRROR $suite-security main"
		[ "$suite" != trixie ] || echo "$s $MIRROR $suite-backports main"
	} >"$root/etc/sources.list"
}

# papt SUITE COMMAND...: run an apt command with the private configuration.
papt() {
	local suite=$1
	shift
	APT_CONFIG="$(apt_root "$suite")/apt.conf" "$@"
}

# apt_update SUITE [force]: refresh the private package lists when missing,
# older than a day, or when forced (after a download failed). Only runs for
# kernels that still have to be downloaded. The age comes from our own
# stamp: apt gives list files the server's modification time.
apt_update() {
	local suite=$1 force=${2:-} stamp
	stamp="$(apt_root "$suite")/state/updated"
	if [ -z "$force" ] && [ -n "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
		return 0
	fi
	log "updating package lists for $suite"
	papt "$suite" apt-get -q update >"$CACHE/apt/$suite.update.log" 2>&1 || {
		tail -n 20 "$CACHE/apt/$suite.update.log" >&2
		die "apt-get update for $suite failed (see $CACHE/apt/$suite.update.log); is deb.debian.org reachable?"
	}
	touch "$stamp"
}

# newest_of SUITE PACKAGE...: print the package whose candidate version is
# the highest (by Debian version rules).
newest_of() {
	local suite=$1 best='' bestv='' p v
	shift
	# One apt-cache call for all candidates: "package version" lines.
	while read -r p v; do
		if [ -z "$bestv" ] || dpkg --compare-versions "$v" gt "$bestv"; then
			best=$p bestv=$v
		fi
	done < <(papt "$suite" apt-cache show --no-all-versions "$@" 2>/dev/null |
		awk '/^Package: /{p=$2} /^Version: /{print p, $2}')
	echo "$best"
}

# pick_image SUITE VERSION: name of the newest generic amd64 kernel image
# package of that version (signed flavour; not -cloud-, which lacks 9p).
pick_image() {
	local suite=$1 version=$2 re
	# 5.10 -> ^linux-image-5\.10[.-]... ; 7 -> ^linux-image-7\....
	re="^linux-image-${version//./\\.}[.-][^ ]*-amd64\$"
	local -a names
	mapfile -t names < <(papt "$suite" apt-cache search --names-only "$re" | cut -d' ' -f1 |
		grep -v -e '-cloud-' -e '-rt-' || true)
	[ ${#names[@]} -gt 0 ] || return 1
	newest_of "$suite" "${names[@]}"
}

# image_packages SUITE IMAGE: the packages that hold the kernel and its
# modules. Up to 7.0 that is the image package itself; newer images are
# metapackages depending on linux-binary-*, linux-modules-*, linux-base-*.
image_packages() {
	local suite=$1 image=$2
	echo "$image"
	papt "$suite" apt-cache depends --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "$image" |
		sed -n 's/^ *|\{0,1\}Depends: //p' |
		grep -E '^linux-(binary|modules|base)-[0-9]' || true
}

# download SUITE DIR PACKAGE...: apt-get download into DIR; on failure the
# lists may be stale (a removed version), so refresh once and retry.
download() {
	local suite=$1 dir=$2
	shift 2
	if ! (cd "$dir" && papt "$suite" apt-get -q download "$@" >"$dir/download.log" 2>&1); then
		log "download failed, refreshing the package lists once"
		apt_update "$suite" force
		(cd "$dir" && papt "$suite" apt-get -q download "$@" >"$dir/download.log" 2>&1) || {
			tail -n 20 "$dir/download.log" >&2
			die "apt-get download $* failed"
		}
	fi
}

# --------------------------------------------------------------- kernel ---

# unpack_debs DIR: dpkg -x every downloaded package into DIR/root and move
# a /usr/lib/modules tree (7.x packages) to /lib/modules so depmod,
# modprobe and the guest find it at one place.
unpack_debs() {
	local dir=$1 deb
	mkdir -p "$dir/root"
	for deb in "$dir"/debs/*.deb; do
		dpkg -x "$deb" "$dir/root"
	done
	if [ -d "$dir/root/usr/lib/modules" ]; then
		mkdir -p "$dir/root/lib/modules"
		mv "$dir/root/usr/lib/modules/"* "$dir/root/lib/modules/"
		rmdir "$dir/root/usr/lib/modules"
	fi
}

# kernel_release DIR: the release is the single directory name under
# root/lib/modules.
kernel_release() {
	local -a rels
	mapfile -t rels < <(ls "$1/root/lib/modules")
	[ ${#rels[@]} -eq 1 ] || die "expected one modules directory in $1/root/lib/modules, found: ${rels[*]:-none}"
	echo "${rels[0]}"
}

# find_file DIR RELEASE NAME: NAME (vmlinuz or config) under boot/ (up to
# 7.0) or next to the modules (7.x layout).
find_file() {
	local dir=$1 rel=$2 name=$3 f
	for f in "$dir/root/boot/$name-$rel" "$dir/root/lib/modules/$rel/$name"; do
		[ -f "$f" ] && { echo "$f"; return 0; }
	done
	return 1
}

# le32 FILE OFFSET: read a little-endian 32-bit number.
le32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }

# extract_vmlinux BZIMAGE OUT: decompress the kernel ELF from a bzImage.
# The x86 boot header says where the compressed payload is (boot protocol
# >= 2.08: payload_offset at 0x248, payload_length at 0x24c, relative to
# the protected-mode code that starts after the setup sectors).
extract_vmlinux() {
	local bz=$1 out=$2 setup_sects off len magic
	setup_sects=$(od -An -t u1 -j $((0x1f1)) -N 1 "$bz" | tr -d ' ')
	[ "$setup_sects" -ne 0 ] || setup_sects=4
	off=$(( (setup_sects + 1) * 512 + $(le32 "$bz" $((0x248))) ))
	len=$(le32 "$bz" $((0x24c)))
	magic=$(od -An -t x1 -j "$off" -N 6 "$bz" | tr -d ' \n')

	local -a cmd
	case "$magic" in
	1f8b*) cmd=(gzip -dc) ;;
	fd377a585a00) cmd=(xz -dc) ;;
	28b52ffd*) cmd=(zstd -dcq) ;;
	5d0000*) cmd=(xz -dc --format=lzma) ;;
	*) log "unknown bzImage payload compression (magic $magic)"; return 1 ;;
	esac
	# All formats but gzip carry a 4-byte size trailer the tools reject.
	case "$magic" in 1f8b*) ;; *) len=$((len - 4)) ;; esac
	tail -c +$((off + 1)) "$bz" | head -c "$len" | "${cmd[@]}" >"$out" 2>/dev/null || true

	# Only useful if it is an ELF with the Xen PVH entry note (type 0x12)
	# that QEMU needs to boot it directly.
	if [ "$(head -c 4 "$out" | od -An -t x1 | tr -d ' ')" != 7f454c46 ]; then
		log "extracted kernel is not an ELF file"
		return 1
	fi
	if ! readelf -n "$out" 2>/dev/null | grep -q -E 'Xen.*(0x00000012|PHYS32_ENTRY)'; then
		log "kernel has no PVH entry point"
		return 1
	fi
}

# build_initramfs DIR RELEASE: busybox, guest/init and the boot modules.
build_initramfs() {
	local dir=$1 rel=$2 stage mod line path name
	stage=$(mktemp -d "$dir/initramfs.XXXXXX")
	mkdir -p "$stage/bin" "$stage/modules" "$stage/dev" "$stage/proc" "$stage/sys"
	cp "$dir/busybox" "$stage/bin/busybox"
	# Applet links made here, not with "busybox --install" at boot: each
	# syscall counts under TCG. The busybox is a static amd64 binary, so the
	# host can ask it for its applet list.
	local applet
	for applet in $("$stage/bin/busybox" --list); do
		[ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
	done
	cp "$here/guest/init" "$stage/init"
	chmod 0755 "$stage/init" "$stage/bin/busybox"
	: >"$stage/modules.list"

	# modprobe resolves dependencies in load order and knows what is built
	# in; -C with an empty directory keeps the host's modprobe.d out.
	mkdir -p "$stage/noconf"
	for mod in $INITRAMFS_MODULES; do
		modprobe -C "$stage/noconf" -d "$dir/root" -S "$rel" --show-depends "$mod" >"$stage/deps" ||
			die "modprobe cannot resolve $mod for $rel"
		while read -r line; do
			case "$line" in
			insmod\ *)
				path=$(echo "$line" | cut -d' ' -f2)
				name=$(basename "$path")
				name=${name%.xz}
				name=${name%.zst}
				name=${name%.gz}
				grep -qxF "$name" "$stage/modules.list" && continue
				case "$path" in
				*.xz) xz -dc "$path" >"$stage/modules/$name" ;;
				*.zst) zstd -dcq "$path" >"$stage/modules/$name" ;;
				*.gz) gzip -dc "$path" >"$stage/modules/$name" ;;
				*) cp "$path" "$stage/modules/$name" ;;
				esac
				echo "$name" >>"$stage/modules.list"
				;;
			esac
		done <"$stage/deps"
	done
	rm -rf "$stage/noconf" "$stage/deps"

	# Written aside and renamed: a VM starting meanwhile reads the old or
	# the new image, never half of one.
	(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 >"$dir/initramfs.cpio.gz.tmp"
	mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
	tr '\n' ' ' <"$stage/modules.list" >"$dir/initramfs.modules"
	rm -rf "$stage"
}

# record_packages DEBS_DIR OUT: "NAME VERSION" of every kernel package
# downloaded (busybox-static is not part of the kernel).
record_packages() {
	local deb
	for deb in "$1"/*.deb; do
		dpkg-deb -f "$deb" Package Version | paste -sd' '
	done | grep -v '^busybox-static ' | LC_ALL=C sort >"$2"
}

# banner_debian_version VMLINUX: the Debian version in the kernel's own
# banner ("... #1 SMP PREEMPT_DYNAMIC Debian 6.12.118-1 (2026-11-20)"),
# which is the version of the packages built from that kernel source.
banner_debian_version() {
	LC_ALL=C grep -a -o -m1 'Linux version [^(]*(.*) #[0-9]* [A-Z_ ]*Debian [^ ]* ([0-9-]*)' "$1" |
		head -n1 | sed 's/.* Debian \([^ ]*\) (.*/\1/'
}

# backfill_versions DIR: kernels prepared before packages had versions get
# them from the kernel banner (no download; written aside and renamed).
backfill_versions() {
	local dir=$1 v
	[ -f "$dir/packages" ] && [ -f "$dir/vmlinux" ] || return 0
	awk 'NF == 1 { found = 1 } END { exit !found }' "$dir/packages" || return 0
	v=$(banner_debian_version "$dir/vmlinux")
	[ -n "$v" ] || return 0
	awk -v v="$v" 'NF == 1 { $0 = $1 " " v } { print }' "$dir/packages" >"$dir/packages.tmp"
	mv "$dir/packages.tmp" "$dir/packages"
}

# refresh_cached DIR VERSION: a prepared kernel needs nothing but maybe a
# new initramfs (guest/init changed). Reads files with builtins: this is the
# warm path and should cost almost nothing.
refresh_cached() {
	local dir=$1 version=$2 ready rel
	read -r ready <"$dir/ready" || ready=
	read -r rel <"$dir/version"
	if [ "$ready" != "$INIT_SHA" ]; then
		log "$version: guest init changed, rebuilding the initramfs"
		build_initramfs "$dir" "$rel"
		echo "$INIT_SHA" >"$dir/ready"
	fi
	backfill_versions "$dir"
	log "$version: cached ($rel)"
}

# fetch VERSION: resolve and download the packages of one kernel into
# kernels/VERSION.tmp/debs. Network phase, run one kernel after the other
# (kernels of one suite share its private apt state).
fetch() {
	local version=$1 suite stage image
	suite=$(suite_for "$version")
	stage=$CACHE/kernels/$version.tmp
	apt_init "$suite"
	apt_update "$suite"
	image=$(pick_image "$suite" "$version") ||
		die "no linux-image-$version*-amd64 package in $suite (try again after deleting $CACHE/apt/$suite/state/lists)"
	local -a pkgs
	mapfile -t pkgs < <(image_packages "$suite" "$image")
	log "$version: fetching ${pkgs[*]} from $suite"

	rm -rf "$stage"
	mkdir -p "$stage/debs"
	download "$suite" "$stage/debs" "${pkgs[@]}" busybox-static
	record_packages "$stage/debs" "$stage/packages"
}

# extract_busybox STAGE: the static busybox for the initramfs, kept apart
# from the kernel tree.
extract_busybox() {
	local stage=$1 bb
	mkdir -p "$stage/bb"
	dpkg -x "$stage"/debs/busybox-static_*.deb "$stage/bb"
	for bb in "$stage/bb/bin/busybox" "$stage/bb/usr/bin/busybox" ""; do
		[ -z "$bb" ] || [ -f "$bb" ] && break
	done
	[ -n "$bb" ] || die "no busybox binary in the busybox-static package"
	cp "$bb" "$stage/busybox"
	rm -rf "$stage/bb" "$stage"/debs/busybox-static_*.deb
}

# build VERSION: turn the downloaded packages into the prepared kernel
# directory, then rename it into place, so an interrupted run leaves
# nothing half done. CPU phase (unpacking, depmod, decompression): several
# kernels build in parallel.
build() {
	local version=$1 dir stage rel vmlinuz config
	dir=$CACHE/kernels/$version
	stage=$dir.tmp
	extract_busybox "$stage"
	unpack_debs "$stage"
	rm -rf "$stage/debs"
	rel=$(kernel_release "$stage")
	echo "$rel" >"$stage/version"

	vmlinuz=$(find_file "$stage" "$rel" vmlinuz) || die "no vmlinuz in the packages of $rel"
	config=$(find_file "$stage" "$rel" config) || die "no config in the packages of $rel"
	mv "$vmlinuz" "$stage/vmlinuz"
	cp "$config" "$stage/config"
	extract_vmlinux "$stage/vmlinuz" "$stage/vmlinux" || {
		log "$version: using the bzImage (slower boot)"
		rm -f "$stage/vmlinux"
	}

	# Debian packages ship no modules.dep (their postinst runs depmod).
	depmod -b "$stage/root" "$rel" || die "depmod failed for $rel"
	build_initramfs "$stage" "$rel"
	echo "$INIT_SHA" >"$stage/ready"

	rm -rf "$dir"
	mv "$stage" "$dir"
	log "$version: ready ($rel; initramfs modules: $(cat "$dir/initramfs.modules"))"
}

# build_all VERSION...: run build for each, at most $(nproc) at a time.
build_all() {
	local jobs v failed=0
	jobs=$(nproc 2>/dev/null || echo 2)
	local -a pids=() names=()
	for v in "$@"; do
		while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
		build "$v" &
		pids+=($!) names+=("$v")
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || { log "${names[$i]}: preparing the kernel failed"; failed=1; }
	done
	[ "$failed" -eq 0 ] || die "some kernels could not be prepared (see above)"
}

main() {
	[ $# -ge 2 ] || usage
	local v
	mkdir -p "$1"
	CACHE=$(abs_dir "$1")
	shift
	for v in "$@"; do check_version "$v"; done

	# Only checks commands; installs (and needs the network) only if one
	# is missing.
	ensure_host_tools
	INIT_SHA=$(init_sha)

	local -a todo=()
	for v in "$@"; do
		if [ -f "$CACHE/kernels/$v/ready" ]; then
			refresh_cached "$CACHE/kernels/$v" "$v"
		else
			todo+=("$v")
		fi
	done
	[ ${#todo[@]} -gt 0 ] || return 0
	for v in "${todo[@]}"; do fetch "$v"; done
	build_all "${todo[@]}"
}

main "$@"
