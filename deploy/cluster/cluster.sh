#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for kdrop's
# end-to-end tests: containerd + runc, a CNI bridge, etcd, kube-apiserver,
# controller-manager, scheduler, kubelet, kube-proxy (iptables mode, or
# nftables with KDROP_PROXY_MODE=nftables), all run as plain processes;
# on demand, kube-router's network-policy firewall (a test fixture only,
# see the Makefile). Nothing is pulled: images are imported from tarballs.
#
#   cluster.sh up            start (idempotent; cleans leftovers of a crashed run first)
#   cluster.sh down          stop everything and undo every change to the host
#   cluster.sh status        what is running
#   cluster.sh env           export lines: KUBECONFIG, node name and IP, state dir
#   cluster.sh import F.tar  import docker-archive tarballs into the running cluster
#   cluster.sh kube-router start|stop   the NetworkPolicy engine, for the tests that need one
#   cluster.sh images        build the pause and busybox image tarballs
#
# Needs root. See README.md beside this file for what it changes on the host.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
H=${KDROP_CLUSTER_HOME:-$REPO/.cache/cluster}
BIN=${KDROP_KUBE_BIN:-$REPO/.cache/kube/bin}
ETCD=${KDROP_ETCD:-$(command -v etcd || echo /usr/bin/etcd)}
GO=${GO:-go}
# The NetworkPolicy engine: kube-router's firewall controller alone (no
# routing, no service proxy), enforcing with iptables and ipset. A test
# fixture only (the Makefile's kube-router target says why): never shipped.
KUBE_ROUTER=${KDROP_KUBE_ROUTER:-$REPO/.cache/kube-router/v2.1.0/kube-router}

# kube-proxy's mode: iptables (rules through iptables-nft) or nftables
# (its own table `kube-proxy`, ip and ip6; needs the nft command).
PROXY_MODE=${KDROP_PROXY_MODE:-iptables}
case $PROXY_MODE in iptables | nftables) ;; *)
	echo "cluster: KDROP_PROXY_MODE=$PROXY_MODE: want iptables or nftables" >&2
	exit 2
	;;
esac

NODE=${KDROP_CLUSTER_NODE:-kdrop-node}
# The node address lives on an interface of the harness's own, so the
# cluster does not depend on eth0's address (kubelet refuses loopback).
NODE_IP=${KDROP_CLUSTER_NODE_IP:-10.250.0.2}
NODE_IF=kdrop-node0
POD_CIDR=10.244.0.0/24
POD_GW=10.244.0.1
SVC_CIDR=10.96.0.0/24
SVC_API_IP=10.96.0.1 # the `kubernetes` Service: first address of SVC_CIDR
API_PORT=6443
ETCD_CLIENT=127.0.0.1:23790
ETCD_PEER=127.0.0.1:23800
BRIDGE=cni0
BRIDGE_MAC=02:6b:64:72:6f:70 # locally administered
GUARD=KDROP-GUARD
PAUSE_IMAGE=registry.k8s.io/pause:3.6 # containerd 1.6's default sandbox_image

SOCK=/run/containerd/containerd.sock
PKI=$H/pki ETC=$H/etc LOGS=$H/logs RUN=$H/run DATA=$H/data SAVED=$H/host IMAGES=$H/images
ADMIN_KC=$ETC/admin.kubeconfig
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Started on demand (cluster.sh kube-router start), stopped by down too.
ON_DEMAND=(kube-router)

# Host state that kubelet or the harness changes; `up` saves the values the
# first time, `down` writes them back.
SYSCTLS=(
	net.ipv4.ip_forward                          # harness (routing for pods)
	net.bridge.bridge-nf-call-iptables           # harness (Services between pods on one bridge)
	net.bridge.bridge-nf-call-ip6tables
	vm.overcommit_memory vm.panic_on_oom         # kubelet
	kernel.panic kernel.panic_on_oops            # kubelet
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes # kubelet
	net.ipv4.conf.all.route_localnet             # kube-proxy, when it serves localhost NodePorts
	net.netfilter.nf_conntrack_max               # kube-proxy's conntrack settings (left alone by config)
	net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait
	net.netfilter.nf_conntrack_tcp_be_liberal
	net.ipv6.conf.all.forwarding
)
# Directories and files created on the host outside the state dir; each is
# removed by `down` unless it existed before the first `up`.
HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd /run/netns /run/xtables.lock)
# Mounts under these are unmounted by `down`.
MOUNT_ROOTS=(/var/lib/kubelet /run/containerd "$H" /run/netns/cni- /var/run/netns/cni-)

# ---------------------------------------------------------------- helpers

now() { local t=${EPOCHREALTIME/./}; echo $((10#$t / 1000)); } # ms
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }
say() { echo "cluster: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

STEP='' STEP_T=''
step() { # step NAME: ends the previous step (printing its time), starts NAME
	local t; t=$(now)
	[ -z "$STEP" ] || printf '  %-34s %6ss\n' "$STEP" "$(secs $((t - STEP_T)))" >&2
	STEP=$1 STEP_T=$t
}

# fail NAME MSG: the end of a failed `up`, with the component's log.
fail() {
	say "ERROR: $2"
	if [ -s "$LOGS/$1.log" ]; then
		echo "----- last lines of $LOGS/$1.log" >&2
		tail -n 25 "$LOGS/$1.log" >&2
		echo "-----" >&2
	else
		say "$LOGS/$1.log is empty"
	fi
	say "state and logs are in $H; \`$0 down\` cleans up"
	exit 1
}

# Its discovery cache goes in the state dir, not ~/.kube.
KC() { "$BIN/kubectl" --kubeconfig "$ADMIN_KC" --cache-dir "$DATA/kubectl-cache" "$@"; }
CTR() { ctr --address "$SOCK" -n k8s.io "$@"; }
CRICTL() { "$BIN/crictl" --config "$ETC/crictl.yaml" "$@"; }
ipt() { iptables -w 5 "$@"; }

# cmdline PID: the process's arguments, space-separated ("" if gone or a zombie).
cmdline() { tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline" || true; }

# procs: "PID ARGUMENTS" for every process, from one ps (a loop over /proc
# with a subshell each takes seconds).
procs() { ps -eww -o pid= -o args=; }

# ours PID: a process the harness started: its arguments name the state dir.
ours() { [[ $(cmdline "$1") == *"$H/"* ]]; }

pid_of() { # pid_of NAME: the PID of a running component, or fails
	local pid
	pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
	[ -n "$pid" ] && ours "$pid" && echo "$pid"
}

# start NAME [VAR=VALUE...] -- CMD...: a daemon in a session of its own (so it
# outlives this script and a Ctrl-C here does not reach it), logging to
# logs/NAME.log. No component inherits a proxy from the caller: the apiserver
# would send its kubelet connections (logs, exec) to it. Only containerd gets
# one, a dead one (see start_containerd).
start() {
	local name=$1 envs=()
	shift
	while [ "$1" != -- ]; do envs+=("$1"); shift; done
	shift
	: >"$LOGS/$name.log"
	env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u no_proxy -u NO_PROXY \
		-u all_proxy -u ALL_PROXY "${envs[@]}" \
		setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
	# Not a process group leader (no job control here), so setsid execs in
	# place and $! is the daemon's own PID.
	local pid=$! t0
	echo "$pid" >"$RUN/$name.pid"
	# Until the child has exec'd, its cmdline is this script's, which does
	# not name the state dir, so pid_of (and wait_for) would take the
	# daemon for gone: on a loaded machine that window lasts long enough
	# for a first readiness check (kube-router start failed so, with the
	# daemon running and its log still empty). Wait for the exec, or the
	# exit.
	t0=$(now)
	until ours "$pid" || ! kill -0 "$pid" 2>/dev/null; do
		[ $(($(now) - t0)) -lt 30000 ] || break
		sleep 0.02
	done
}

# wait_for NAME SECONDS WHAT CMD...: polls CMD until it succeeds; fails with
# NAME's log if NAME exits or time runs out.
wait_for() {
	local name=$1 limit=$(($2 * 1000)) what=$3 t0
	shift 3
	t0=$(now)
	until "$@" >/dev/null 2>&1; do
		pid_of "$name" >/dev/null || fail "$name" "$name exited while waiting for $what"
		[ $(($(now) - t0)) -lt "$limit" ] || fail "$name" "timed out after $((limit / 1000))s waiting for $what"
		sleep 0.1
	done
}

# ---------------------------------------------------------------- PKI

# cert NAME SUBJECT EXTENSIONS: an EC P-256 key and a certificate signed by the CA.
cert() {
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "$2" 2>/dev/null
	openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 3650 -out "$PKI/$1.crt" \
		-extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%b' "$3") 2>/dev/null
	rm -f "$PKI/$1.csr"
}

make_pki() {
	# Names and addresses are in the certificates: another node name or IP
	# means new ones.
	local want="node=$NODE ip=$NODE_IP svc=$SVC_API_IP v2"
	if [ "$(cat "$PKI/.stamp" 2>/dev/null)" = "$want" ]; then
		return
	fi
	rm -rf "$PKI"
	mkdir -p "$PKI"
	chmod 700 "$PKI"
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 3650 -subj /CN=kdrop-cluster-ca \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
	local client='extendedKeyUsage=clientAuth\n'
	cert apiserver /CN=kube-apiserver "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$NODE,IP:$SVC_API_IP,IP:$NODE_IP,IP:127.0.0.1\n"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
	cert admin "/O=system:masters/CN=kdrop-admin" "$client"
	cert controller-manager /CN=system:kube-controller-manager "$client"
	cert scheduler /CN=system:kube-scheduler "$client"
	cert kube-proxy /CN=system:kube-proxy "$client"
	cert kube-router /CN=system:kube-router "$client"
	cert kubelet "/O=system:nodes/CN=system:node:$NODE" "$client"
	cert kubelet-serving "/CN=$NODE" "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:$NODE,IP:$NODE_IP\n"
	# Service-account token signing key (ES256).
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
	openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	echo "$want" >"$PKI/.stamp"
}

kubeconfig() { # kubeconfig NAME CERT: a kubeconfig with embedded credentials
	local b64='base64 -w0'
	cat >"$ETC/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kdrop
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $($b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 "$PKI/$2.crt")
    client-key-data: $($b64 "$PKI/$2.key")
contexts:
- name: kdrop
  context: {cluster: kdrop, user: $2}
current-context: kdrop
EOF
	chmod 600 "$ETC/$1.kubeconfig"
}

# ---------------------------------------------------------------- configs

write_configs() {
	mkdir -p "$ETC/cni"
	kubeconfig admin admin
	kubeconfig controller-manager controller-manager
	kubeconfig scheduler scheduler
	kubeconfig kubelet kubelet
	kubeconfig kube-proxy kube-proxy
	kubeconfig kube-router kube-router

	# containerd: its own root under the state dir; the state dir must be
	# /run/containerd, where the runc shim keeps its sockets whatever the
	# config says. The CNI conf dir is our own.
	cat >"$ETC/containerd.toml" <<EOF
version = 2
root = "$DATA/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$DATA/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Root here lacks CAP_SYS_RESOURCE, so a negative oom_score_adj (-998 for
  # the sandbox) fails every pod with "can't get final child's PID from
  # pipe"; clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ETC/cni"
    max_conf_num = 1
EOF

	# Written elsewhere and renamed: containerd watches the directory and
	# logs errors for a half-written file.
	cat >"$ETC/cni.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kdrop",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$DATA/cni-ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	mv "$ETC/cni.tmp" "$ETC/cni/10-kdrop.conflist"

	cat >"$ETC/crictl.yaml" <<EOF
runtime-endpoint: unix://$SOCK
image-endpoint: unix://$SOCK
timeout: 10
EOF

	cat >"$ETC/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
failCgroupV1: false       # this host is cgroup v1 (plus an empty v2 mount)
failSwapOn: false
resolvConf: ""            # pods get no nameservers (there is no cluster DNS)
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100 # never delete the imported images: nothing can pull them back
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
allowedUnsafeSysctls: ["net.core.somaxconn"]
volumePluginDir: $DATA/kubelet-plugins # not /usr/libexec/kubernetes
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
EOF

	cat >"$ETC/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $ETC/kube-proxy.kubeconfig}
hostnameOverride: $NODE
mode: $PROXY_MODE
clusterCIDR: $POD_CIDR
nodePortAddresses: [primary]
iptables: {localhostNodePorts: false}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Zeros: leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# ---------------------------------------------------------------- host setup

save_host_state() {
	[ -f "$SAVED/sysctl" ] && return # saved by an earlier `up` not yet undone
	mkdir -p "$SAVED"
	local k v
	for k in "${SYSCTLS[@]}"; do
		v=$(sysctl -n "$k" 2>/dev/null) && printf '%s\t%s\n' "$k" "$v"
	done >"$SAVED/sysctl.tmp"
	for k in "${HOST_PATHS[@]}"; do
		[ ! -e "$k" ] || echo "$k"
	done >"$SAVED/paths"
	if command -v nft >/dev/null; then nft list tables >"$SAVED/nft-tables" 2>/dev/null || true; fi
	findmnt -no PROPAGATION / >"$SAVED/root-propagation"
	mv "$SAVED/sysctl.tmp" "$SAVED/sysctl"
}

setup_host() {
	sysctl -qw net.ipv4.ip_forward=1
	# A volume with mountPropagation: HostToContainer (kdrop's /var/run/netns)
	# needs its host path on a shared mount, as / is on every systemd host;
	# here / is private ("path is mounted on / but it is not a shared or slave
	# mount"). Only the root mount changes, not the ones below it.
	[ "$(findmnt -no PROPAGATION /)" = shared ] || mount --make-shared /
	# br_netfilter is built into some kernels (this one); where it is a
	# module that was not loaded, `down` unloads it again.
	if [ ! -e /proc/sys/net/bridge ] && modprobe br_netfilter 2>/dev/null; then touch "$SAVED/br_netfilter"; fi
	sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "bridge netfilter is not available (br_netfilter)"

	# The node address: a dummy interface when the kernel has them, else a
	# bridge without ports, which behaves the same here (up, carrier, no
	# traffic leaves it).
	ip link add "$NODE_IF" type dummy 2>/dev/null || ip link add "$NODE_IF" type bridge
	ip link set "$NODE_IF" addrgenmode none 2>/dev/null || true
	ip addr add "$NODE_IP/32" dev "$NODE_IF"
	ip link set "$NODE_IF" up
	# Service addresses route onto that interface, so host and hostNetwork
	# clients pick the node address as source and a packet kube-proxy does not
	# catch dies there instead of leaving through eth0.
	ip route add "$SVC_CIDR" dev "$NODE_IF" src "$NODE_IP"

	# The pod bridge, made before any pod so the pod range is always routed
	# onto it (the bridge plugin reuses it). Its MAC is set, so it stays put:
	# a bridge otherwise takes its lowest port's MAC, which changes as pods
	# come and go, and a pod whose ARP entry for the gateway still names the
	# old MAC has its packets flooded to every port (br_netfilter then sees,
	# and kube-proxy REJECTs, each copy).
	ip link add "$BRIDGE" type bridge
	ip link set "$BRIDGE" address "$BRIDGE_MAC"
	ip addr add "$POD_GW/${POD_CIDR#*/}" dev "$BRIDGE"
	ip link set "$BRIDGE" up

	# The guard: nothing with a pod, service or node address leaves this
	# host. mangle POSTROUTING sees the real egress device after kube-proxy's
	# DNAT; lo must pass (the kernel's own ICMP errors to pods go through it),
	# and so must the pod bridge.
	ipt -t mangle -N "$GUARD"
	ipt -t mangle -A "$GUARD" -o lo -j RETURN
	ipt -t mangle -A "$GUARD" -o "$BRIDGE" -j RETURN
	ipt -t mangle -A "$GUARD" -s "$POD_CIDR" -j DROP
	ipt -t mangle -A "$GUARD" -d "$POD_CIDR" -j DROP
	ipt -t mangle -A "$GUARD" -d "$SVC_CIDR" -j DROP
	ipt -t mangle -A "$GUARD" -s "$NODE_IP/32" -j DROP
	ipt -t mangle -A "$GUARD" -d "$NODE_IP/32" -j DROP
	ipt -t mangle -I POSTROUTING 1 -j "$GUARD"
}

# ---------------------------------------------------------------- components

start_containerd() {
	# A dead proxy for containerd alone: an accidental pull fails at once.
	start containerd HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= -- \
		/usr/bin/containerd --config "$ETC/containerd.toml"
}

start_etcd() {
	start etcd -- "$ETCD" --name kdrop --data-dir "$DATA/etcd" \
		--listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
		--listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
		--initial-cluster "kdrop=http://$ETCD_PEER" --logger zap --log-outputs stderr
}

start_apiserver() {
	start kube-apiserver -- "$BIN/kube-apiserver" \
		--etcd-servers "http://$ETCD_CLIENT" \
		--bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--client-ca-file "$PKI/ca.crt" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
		--service-cluster-ip-range "$SVC_CIDR" \
		--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
		--allow-privileged=true \
		--kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "$PKI/ca.crt" \
		--kubelet-preferred-address-types InternalIP
}

# All but a few that no test here needs and that slow the start (they run
# discovery or watch many resources); the order in which the controller-manager
# starts controllers is random, and the default ServiceAccount waits for one.
KCM_CONTROLLERS='*,-horizontal-pod-autoscaler-controller,-resourcequota-controller,-validatingadmissionpolicy-status-controller,-certificatesigningrequest-approving-controller,-certificatesigningrequest-signing-controller,-certificatesigningrequest-cleaner-controller'

# --authentication-skip-lookup: the request-header CA they would look up is
# not configured, and the lookup logs an error every few seconds.
start_rest() {
	start kube-controller-manager -- "$BIN/kube-controller-manager" \
		--kubeconfig "$ETC/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$ETC/controller-manager.kubeconfig" \
		--authorization-kubeconfig "$ETC/controller-manager.kubeconfig" --authentication-skip-lookup \
		--controllers "$KCM_CONTROLLERS" --use-service-account-credentials \
		--flex-volume-plugin-dir "$DATA/flexvolume" \
		--service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
		--leader-elect=false --bind-address 127.0.0.1
	start kube-scheduler -- "$BIN/kube-scheduler" \
		--kubeconfig "$ETC/scheduler.kubeconfig" \
		--authentication-kubeconfig "$ETC/scheduler.kubeconfig" \
		--authorization-kubeconfig "$ETC/scheduler.kubeconfig" --authentication-skip-lookup \
		--leader-elect=false --bind-address 127.0.0.1
	start kubelet -- "$BIN/kubelet" --config "$ETC/kubelet.yaml" \
		--kubeconfig "$ETC/kubelet.kubeconfig" --hostname-override "$NODE" --node-ip "$NODE_IP"
	start kube-proxy -- "$BIN/kube-proxy" --config "$ETC/kube-proxy.yaml"
}

# kube-router's RBAC: what its firewall controller watches (its informer
# factory starts all seven informers, whichever controllers run), read-only.
KUBE_ROUTER_RBAC='
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:kube-router"}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, nodes, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kube-router"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-router"}
'

# start_kube_router: the NetworkPolicy engine, once the node exists (it
# reads the node's address at start). Its firewall only: pods without
# policies go through its default chain, which allows everything. It runs
# only for the tests that need it, not for the whole suite: at every sync
# (when pods, namespaces or policies change) it rewrites the whole filter
# table with iptables-restore, which restarts every rule's counter,
# kube-proxy's included, and its KUBE-ROUTER-FORWARD ACCEPTs pods' traffic
# before kube-proxy's REJECT of a ClusterIP without endpoints is reached
# (measured: the service-without-endpoints incident timed out instead of
# being refused). Its chains get new names at every sync too; it syncs
# periodically only every hour, not every 5 minutes, so a test can compare
# a rule's counter over a minute.
start_kube_router() {
	KC apply -f - <<<"$KUBE_ROUTER_RBAC" >/dev/null
	start kube-router -- "$KUBE_ROUTER" --kubeconfig "$ETC/kube-router.kubeconfig" \
		--run-firewall=true --run-router=false --run-service-proxy=false \
		--hostname-override "$NODE" --service-cluster-ip-range "$SVC_CIDR" \
		--iptables-sync-period 1h --health-port 0 --metrics-port 0
}

# kube-router has synced once: its chains exist and jump from FORWARD.
kube_router_ready() {
	ipt -S KUBE-ROUTER-FORWARD >/dev/null && ipt -S FORWARD | grep -q -- '-j KUBE-ROUTER-FORWARD'
}

node_ready() {
	[ "$(KC get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

api_endpoint_published() {
	[[ " $(KC -n default get endpointslices -l kubernetes.io/service-name=kubernetes \
		-o jsonpath='{.items[*].endpoints[*].addresses[*]}') " == *" $NODE_IP "* ]]
}

# The way pods see the API: the `kubernetes` Service, through kube-proxy.
api_via_service() {
	curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "https://$SVC_API_IP:443/readyz"
}

api_ready() {
	curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
		"https://$NODE_IP:$API_PORT/readyz"
}

import_images() { # import_images FILE...: into containerd's k8s.io namespace, unpacked
	local f
	for f in "$@"; do
		[ -f "$f" ] || die "image tarball $f does not exist"
		CTR images import --snapshotter overlayfs "$f" >"$LOGS/import.log" 2>&1 ||
			fail import "ctr images import $f failed"
		say "imported $(awk '/^unpacking /{print $2}' "$LOGS/import.log" | tr '\n' ' ')"
	done
}

healthy() {
	local c
	for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
	api_ready >/dev/null 2>&1 && node_ready 2>/dev/null
}

# A containerd of someone else's (or of a cluster with another state dir)
# shares /run/containerd, its shims and runc state with us, and the cleanup
# would take down its pods, bridge and iptables chains: refuse to touch any.
check_no_foreign_containerd() {
	local p args a
	while read -r p args; do
		a=${args%% *}
		[ "${a##*/}" = containerd ] || continue
		[[ $args == *"$H/"* ]] || die "another containerd (pid $p: $args) is running; stop it first"
	done < <(procs)
}

cmd_up() {
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	local b
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl crictl; do
		[ -x "$BIN/$b" ] || die "$BIN/$b missing: run \`make kube-bins\`"
	done
	for b in "$ETCD" /usr/bin/containerd /usr/bin/ctr /usr/sbin/runc /usr/lib/cni/bridge /usr/sbin/conntrack /usr/sbin/ipset; do
		[ -x "$b" ] || die "$b missing: run \`make deps\`"
	done
	if [ "$PROXY_MODE" = nftables ]; then
		command -v nft >/dev/null || die "kube-proxy's nftables mode needs the nft command: apt-get install nftables"
	fi
	[ -f "$IMAGES/pause.tar" ] || cmd_images
	mkdir -p "$ETC" "$LOGS" "$RUN" "$DATA"

	if healthy; then
		say "already up"
		# shellcheck disable=SC2086 # a space-separated list
		import_images ${KDROP_CLUSTER_IMAGES:-}
		return
	fi
	local t0; t0=$(now)
	check_no_foreign_containerd
	step "clean leftovers"
	cleanup
	mkdir -p "$ETC" "$LOGS" "$RUN" "$DATA"
	step "host: sysctls, links, guard"
	save_host_state
	setup_host
	step "PKI"
	make_pki
	write_configs
	step "containerd, image import"
	start_containerd
	start_etcd # starts meanwhile
	wait_for containerd 20 "containerd's socket" CTR version
	# shellcheck disable=SC2086
	import_images "$IMAGES/pause.tar" ${KDROP_CLUSTER_IMAGES:-}
	step "etcd"
	wait_for etcd 20 "etcd /health" curl -fsS --max-time 1 "http://$ETCD_CLIENT/health"
	step "kube-apiserver ready"
	start_apiserver
	wait_for kube-apiserver 60 "kube-apiserver /readyz" api_ready
	step "node Ready"
	start_rest
	wait_for kubelet 90 "node $NODE Ready" node_ready
	# kubelet sets kernel.panic=10 and kernel.panic_on_oops=1 once at start;
	# put the host's values back so a kernel oops while the cluster is up
	# (this is a BPF project) does not reboot the machine.
	local k v
	while IFS=$'\t' read -r k v; do
		case $k in kernel.panic | kernel.panic_on_oops) sysctl -qw "$k=$v" ;; esac
	done <"$SAVED/sysctl"
	step "ServiceAccount default/default"
	wait_for kube-controller-manager 60 "ServiceAccount default/default" KC -n default get serviceaccount default
	step "Service kubernetes reachable"
	wait_for kube-apiserver 60 "an endpoint of Service default/kubernetes" api_endpoint_published
	wait_for kube-proxy 60 "https://$SVC_API_IP:443 through kube-proxy" api_via_service
	step ""
	say "up in $(secs $(($(now) - t0)))s: node $NODE ($NODE_IP); $0 env"
}

# ---------------------------------------------------------------- down

stop_component() { # stop_component NAME SECONDS: TERM, then KILL after SECONDS
	local pid t0 killed=0
	pid=$(pid_of "$1") || { rm -f "$RUN/$1.pid"; return 0; }
	kill -TERM "$pid" 2>/dev/null || true
	t0=$(now)
	while ours "$pid"; do
		if [ $killed = 0 ] && [ $(($(now) - t0)) -ge $(($2 * 1000)) ]; then
			say "$1 still running after ${2}s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			killed=1
		elif [ $(($(now) - t0)) -ge $(($2 * 1000 + 5000)) ]; then
			say "$1 (pid $pid) survives SIGKILL; giving up on it"
			break
		fi
		sleep 0.1
	done
	rm -f "$RUN/$1.pid"
}

# Processes of a crashed run whose pid files are gone: anything whose
# arguments name the state dir (other tests' etcd and apiservers do not).
kill_strays() {
	local p args
	while read -r p args; do
		case $args in
		"$BIN/kubectl "*) ;; # someone's client, not a server
		*containerd\ --config\ "$H/"* | "$BIN/"kube*\ *"$H/"* | "$KUBE_ROUTER "*"$H/"* | "$ETCD "*"$H/"*)
			say "killing stray ${args:0:80}"
			kill -KILL "$p" 2>/dev/null || true
			;;
		esac
	done < <(procs)
}

# kubepods cgroups in every hierarchy (v1 controllers, named ones, cgroup2).
kubepods_dirs() {
	local m
	awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/mounts | while read -r m; do
		[ -d "$m/kubepods" ] && echo "$m/kubepods"
	done
	return 0
}

# Pods' processes (containers, pause) left after containerd and the shims died.
kill_pod_processes() {
	local d pids=() i
	for i in 1 2 3 4 5 6 7 8 9 10; do
		pids=()
		for d in $(kubepods_dirs); do
			mapfile -t -O "${#pids[@]}" pids < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
		done
		[ ${#pids[@]} -gt 0 ] || return 0
		kill -KILL "${pids[@]}" 2>/dev/null || true
		sleep 0.2
	done
}

# The runc shims of our containerd (each serves one pod).
kill_shims() {
	local p args
	while read -r p args; do
		[[ $args == *containerd-shim*"-address $SOCK"* ]] || continue
		kill -KILL "$p" 2>/dev/null || true
	done < <(procs)
}

unmount_all() {
	local m r
	# Reverse order of mounting, so children go before their parents.
	tac /proc/self/mountinfo | awk '{print $5}' | while read -r m; do
		m=$(printf '%b' "${m//\\/\\0}") # mountinfo escapes spaces as \040
		for r in "${MOUNT_ROOTS[@]}"; do
			if [[ $m == "$r" || $m == "$r"/* || ($r == */cni- && $m == "$r"*) ]]; then
				umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "cannot unmount $m"
				break
			fi
		done
	done
}

# iptables_cleanup CMD [REGEX]: removes the KUBE-*, CNI-* and KDROP-* chains
# (or those REGEX matches) and every rule that jumps to them, in one
# iptables-restore transaction per table.
iptables_cleanup() {
	local save=$1-save restore=$1-restore re=${2:-^(KUBE-|CNI-|KDROP-)}
	command -v "$save" >/dev/null || return 0
	"$save" 2>/dev/null | awk -v re="$re" '
		function ours(c) { return c ~ re }
		/^\*/ { if (n) flush(); table = $0; n = 0; delete chains; nc = 0; next }
		/^:/ { c = substr($1, 2); if (ours(c)) chains[++nc] = c; next }
		/^-A / {
			for (i = 3; i < NF; i++) if (($i == "-j" || $i == "-g") && ours($(i + 1)) && !ours($2)) {
				sub(/^-A /, "-D "); dels[++n] = $0; break
			}
			next
		}
		/^COMMIT/ { flush() }
		function flush(   i) {
			if (n + nc == 0) return
			print table
			for (i = 1; i <= n; i++) print dels[i]
			for (i = 1; i <= nc; i++) print "-F " chains[i]
			for (i = 1; i <= nc; i++) print "-X " chains[i]
			print "COMMIT"
			n = 0; nc = 0
		}' >"$RUN/$1.cleanup" 2>/dev/null || true
	if [ -s "$RUN/$1.cleanup" ]; then
		"$restore" -w 5 --noflush <"$RUN/$1.cleanup" || say "$restore failed on $RUN/$1.cleanup"
	fi
	rm -f "$RUN/$1.cleanup"
}

# kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, and TMP-* of a restore cut
# short), destroyed once no rule refers to them (after iptables_cleanup).
ipset_cleanup() {
	command -v ipset >/dev/null || return 0
	local s
	for s in $(ipset list -n 2>/dev/null); do
		case $s in
		KUBE-SRC-* | KUBE-DST-* | TMP-????????????????)
			# the kernel may hold a set a moment after its last rule went
			ipset destroy "$s" 2>/dev/null || { sleep 0.5; ipset destroy "$s" 2>/dev/null; } || say "cannot destroy ipset $s"
			;;
		esac
	done
}

# iptables-nft leaves its tables behind, empty; drop those that did not
# exist before the first `up` and hold no rules now, and kube-proxy's own
# table (nftables mode), whatever it holds.
nft_cleanup() {
	command -v nft >/dev/null && [ -f "$SAVED/nft-tables" ] || return 0
	local fam name
	nft list tables 2>/dev/null | while read -r _ fam name; do
		grep -qx "table $fam $name" "$SAVED/nft-tables" && continue
		case $fam in ip | ip6) ;; *) continue ;; esac
		if [ "$name" = kube-proxy ]; then
			nft delete table "$fam" "$name" 2>/dev/null || true
			continue
		fi
		# Anything but the table, its base chains and braces is content.
		nft list table "$fam" "$name" 2>/dev/null | grep -vE '^\s*(table |chain |type |\}|$)' | grep -q . && continue
		nft delete table "$fam" "$name" 2>/dev/null || true
	done
}

# restore_propagation puts back the root mount's propagation.
restore_propagation() {
	[ -f "$SAVED/root-propagation" ] || return 0
	local was
	was=$(cat "$SAVED/root-propagation")
	[ "$(findmnt -no PROPAGATION /)" = "$was" ] && return 0
	case $was in
	private | slave | shared | unbindable) mount --make-"$was" / ;;
	*) false ;;
	esac || say "cannot put the propagation of / back to $was"
}

restore_host() {
	local k v
	if [ -f "$SAVED/sysctl" ]; then
		while IFS=$'\t' read -r k v; do
			[ "$(sysctl -n "$k" 2>/dev/null)" = "$v" ] || sysctl -qw "$k=$v" 2>/dev/null || say "cannot restore $k=$v"
		done <"$SAVED/sysctl"
	fi
	restore_propagation
	if [ -f "$SAVED/br_netfilter" ]; then modprobe -r br_netfilter 2>/dev/null || say "cannot unload br_netfilter"; fi
	local p
	for p in "${HOST_PATHS[@]}"; do
		[ -e "$p" ] || continue
		# Without the record of what existed before, keep everything.
		if [ ! -f "$SAVED/paths" ] || grep -qx "$p" "$SAVED/paths"; then continue; fi
		# --one-file-system: never descend into something still mounted.
		rm -rf --one-file-system "$p" 2>/dev/null || say "cannot remove $p"
	done
	rm -rf "$SAVED"
}

# cleanup: everything `down` does after the components are stopped; safe
# when nothing runs, after a partial `up` and after kill -9 of it all.
cleanup() {
	local c n i
	mkdir -p "$RUN"
	for c in "${ON_DEMAND[@]}"; do stop_component "$c" 5; done
	for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[i]}" 5; done
	kill_strays
	kill_shims
	kill_pod_processes
	unmount_all
	for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
		ip netns delete "$n" 2>/dev/null || true
	done
	# Deepest first: a cgroup can only go once its children have.
	for c in $(kubepods_dirs); do
		find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[ ! -d "$c" ] || say "cannot remove cgroup $c"
	done
	iptables_cleanup iptables
	iptables_cleanup ip6tables
	ipset_cleanup
	ip link del "$BRIDGE" 2>/dev/null || true
	ip link del "$NODE_IF" 2>/dev/null || true
	nft_cleanup
	restore_host
	rm -rf --one-file-system "$DATA" "$RUN"
}

cmd_down() {
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	check_no_foreign_containerd
	local t0; t0=$(now)
	if pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null && api_ready >/dev/null 2>&1; then
		step "delete workloads"
		# Controllers first, orphaning their pods so nothing recreates them,
		# then the pods with a short grace period: kubelet stops them the
		# way a real node would.
		KC delete daemonsets,deployments,replicasets,statefulsets,jobs,cronjobs --all -A \
			--cascade=orphan --wait=false >/dev/null 2>&1 || true
		KC delete pods --all -A --grace-period=1 --wait=false >/dev/null 2>&1 || true
		local t1; t1=$(now)
		while [ -n "$(CRICTL pods -q --state ready 2>/dev/null)" ] && [ $(($(now) - t1)) -lt 15000 ]; do
			sleep 0.2
		done
	fi
	if pid_of containerd >/dev/null; then
		step "stop kubelet, remove pods"
		stop_component kubelet 10
		# Whatever kubelet left: stop (CNI DEL, unmounts) and remove it.
		CRICTL rmp -fa >/dev/null 2>&1 || true
	fi
	step "stop control plane"
	# Clients first: the apiserver then exits faster, and it must go before
	# etcd (on SIGTERM it removes its own endpoint from the kubernetes Service).
	local c pid
	for c in kube-router kube-proxy kube-scheduler kube-controller-manager kubelet; do
		if pid=$(pid_of "$c"); then kill -TERM "$pid" 2>/dev/null || true; fi
	done
	for c in kube-router kube-proxy kube-scheduler kube-controller-manager kubelet; do stop_component "$c" 10; done
	stop_component kube-apiserver 30
	stop_component etcd 10
	stop_component containerd 10
	step "clean host"
	cleanup
	step ""
	say "down in $(secs $(($(now) - t0)))s"
}

# ---------------------------------------------------------------- others

# status: exits 0 only when every component runs and the node is Ready.
cmd_status() {
	local c pid
	for c in "${COMPONENTS[@]}" "${ON_DEMAND[@]}"; do
		if pid=$(pid_of "$c"); then
			printf '%-24s running  pid %-7s rss %s KiB\n' "$c" "$pid" "$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")"
		else
			printf '%-24s stopped\n' "$c"
		fi
	done
	if pid_of kube-apiserver >/dev/null && api_ready >/dev/null 2>&1; then
		KC get nodes -o wide
		KC get pods -A -o wide 2>&1
	fi
	if iptables -w 5 -t mangle -S "$GUARD" >/dev/null 2>&1; then
		echo "guard ($GUARD in mangle POSTROUTING), dropped packets:"
		iptables -w 5 -t mangle -L "$GUARD" -v -n -x |
			awk '$3 == "DROP" {printf "  %6d  from %-16s to %s\n", $1, $8, $9}'
	fi
	healthy || { say "not (fully) up"; return 1; }
}

cmd_env() {
	cat <<EOF
export KUBECONFIG=$ADMIN_KC
export KDROP_CLUSTER_NODE=$NODE
export KDROP_CLUSTER_NODE_IP=$NODE_IP
export KDROP_CLUSTER_HOME=$H
export PATH=$BIN:\$PATH
EOF
}

# kube-router start|stop: the NetworkPolicy engine in the running cluster;
# stop also removes its chains (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*)
# and ipsets.
cmd_kube_router() {
	[ "$(id -u)" -eq 0 ] || die "must run as root"
	case ${1:-} in
	start)
		[ -x "$KUBE_ROUTER" ] || die "$KUBE_ROUTER missing: run \`make kube-router\`"
		healthy || die "the cluster is not up: \`$0 up\` first"
		pid_of kube-router >/dev/null && { say "kube-router already runs"; return; }
		start_kube_router
		# Its first sync waits for its informers and rewrites the filter
		# table: tens of seconds on a loaded machine. A failed start leaves
		# no kube-router (nor its chains) to the tests after this one.
		if ! (wait_for kube-router 180 "kube-router's KUBE-ROUTER-FORWARD chain" kube_router_ready); then
			# Once in ~20 runs it was gone before writing its first line
			# (the version, printed at once), with nothing in the kernel's
			# log: a start that never ran is retried once, and said.
			if pid_of kube-router >/dev/null || [ -s "$LOGS/kube-router.log" ]; then
				cmd_kube_router stop
				exit 1
			fi
			if kill -0 "$(cat "$RUN/kube-router.pid" 2>/dev/null)" 2>/dev/null ||
				pgrep -af -- "$ETC/kube-router.kubeconfig" >&2; then
				say "that kube-router runs, yet was taken for gone (pid file: $(cat "$RUN/kube-router.pid" 2>/dev/null))"
				pkill -f -- "$ETC/kube-router.kubeconfig" || true
				cmd_kube_router stop
				exit 1
			fi
			say "kube-router exited before writing a line of log; starting it once more"
			start_kube_router
			if ! (wait_for kube-router 180 "kube-router's KUBE-ROUTER-FORWARD chain" kube_router_ready); then
				cmd_kube_router stop
				exit 1
			fi
		fi
		say "kube-router's firewall runs (pid $(pid_of kube-router); log: $LOGS/kube-router.log)"
		;;
	stop)
		stop_component kube-router 10
		iptables_cleanup iptables '^KUBE-(ROUTER-|POD-FW-|NWPLCY-)'
		iptables_cleanup ip6tables '^KUBE-(ROUTER-|POD-FW-|NWPLCY-)'
		ipset_cleanup
		;;
	*) die "usage: $0 kube-router start|stop" ;;
	esac
}

cmd_import() {
	[ $# -gt 0 ] || die "usage: $0 import FILE.tar..."
	pid_of containerd >/dev/null || die "containerd is not running: \`$0 up\` first"
	mkdir -p "$LOGS"
	import_images "$@"
}

# The images the cluster needs, built without a registry: the pause image,
# and a busybox toolbox for tests (every applet as a link in /bin).
cmd_images() {
	mkdir -p "$IMAGES"
	command -v "$GO" >/dev/null || die "go is needed to build the images"
	(
		cd "$REPO"
		CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$IMAGES/pause" ./deploy/cluster/pause
		"$GO" build -o "$IMAGES/mkimage" ./cmd/mkimage
	)
	"$IMAGES/mkimage" -binary= -file "$IMAGES/pause=/pause" -entrypoint /pause -cmd= \
		-title pause -tag "$PAUSE_IMAGE" -out "$IMAGES/pause.tar" >/dev/null
	if [ -x /bin/busybox ]; then
		local links=() a
		for a in $(/bin/busybox --list); do
			[ "$a" = busybox ] || links+=(-symlink "busybox=/bin/$a")
		done
		"$IMAGES/mkimage" -binary= -file /bin/busybox=/bin/busybox "${links[@]}" \
			-entrypoint= -cmd /bin/sh -env PATH=/bin -title busybox \
			-tag kdrop.local/busybox:1 -out "$IMAGES/busybox.tar" >/dev/null
	fi
	rm -f "$IMAGES/mkimage" "$IMAGES/pause"
	say "images in $IMAGES: $(cd "$IMAGES" && echo *.tar)"
}

# One `up` or `down` at a time. The daemons must not inherit fd 9 (see
# start), or they would hold the lock for as long as they run.
lock() {
	mkdir -p "$H"
	exec 9>"$H/.lock"
	flock -w 300 9 || die "another cluster.sh has held $H/.lock for 5 minutes"
}

case ${1:-} in
up) lock; cmd_up ;;
down) lock; cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
import) shift; cmd_import "$@" ;;
kube-router) shift; lock; cmd_kube_router "$@" ;;
images) lock; cmd_images ;;
*)
	sed -n '2,/^set -e/p' "$0" | sed -e '/^set -e/d' -e 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
