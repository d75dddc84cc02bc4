#!/usr/bin/env bash
# Smoke test of a running cluster (`cluster.sh up`): pods on the bridge and on
# the host network reach the API through the `kubernetes` Service with their
# service-account token, a Service reaches a pod, `kubectl logs` and `exec`
# work, the unsafe sysctl net.core.somaxconn is allowed, the guard drops what
# must not leave, and nothing was pulled. Leaves namespace kdrop-smoke behind
# (`cluster.sh down` removes everything).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
eval "$("$here/cluster.sh" env)"
K() {
	"${KDROP_KUBE_BIN:-$here/../../.cache/kube/bin}/kubectl" -n kdrop-smoke \
		--cache-dir "$KDROP_CLUSTER_HOME/data/kubectl-cache" "$@"
}
images=$KDROP_CLUSTER_HOME/images
[ -f "$images/busybox.tar" ] || "$here/cluster.sh" images
"$here/cluster.sh" import "$images/busybox.tar"

pass=0 failed=0
check() { # check NAME CMD...: runs CMD, counts the outcome
	local out
	if out=$("${@:2}" 2>&1); then
		pass=$((pass + 1))
		echo "ok   $1"
	else
		failed=$((failed + 1))
		echo "FAIL $1"
		echo "$out" | tail -n 5 | sed 's/^/     /'
	fi
}

K create namespace kdrop-smoke --dry-run=client -o yaml | K apply -f - >/dev/null
K apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: kdrop.local/busybox:1, imagePullPolicy: Never,
     command: [sh, -c, 'echo client started; exec sleep 3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: kdrop.local/busybox:1, imagePullPolicy: Never, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    sysctls: [{name: net.core.somaxconn, value: "128"}]
  containers:
  - {name: c, image: kdrop.local/busybox:1, imagePullPolicy: Never,
     command: [sh, -c, 'mkdir -p /www && echo hello-web > /www/index.html && exec httpd -f -p 8080 -h /www']}
---
# The shape of kdrop's agent: a privileged DaemonSet on the host's network
# and PID namespace with host paths.
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      hostNetwork: true
      hostPID: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: kdrop.local/busybox:1
        imagePullPolicy: Never
        command: [sleep, "3600"]
        securityContext: {privileged: true}
        volumeMounts: [{name: btf, mountPath: /host/btf, readOnly: true}]
      volumes: [{name: btf, hostPath: {path: /sys/kernel/btf}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
K wait --for=condition=Ready pod/client pod/hostnet pod/web --timeout=90s >/dev/null
K rollout status daemonset/agent --timeout=90s >/dev/null

# api_from POD: /api through the kubernetes Service, with the pod's token, as
# client-go's in-cluster config does (10.96.0.1:443).
api_from() {
	# shellcheck disable=SC2016 # expanded in the pod
	K exec "$1" -- sh -c 'wget -qO- --no-check-certificate \
		--header "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" \
		"https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api"' | grep -q '"kind": *"APIVersions"'
}
guard_drops() {
	iptables -w 5 -t mangle -L KDROP-GUARD -v -n -x | awk '$3 == "DROP" {n += $1} END {print n + 0}'
}
guard_counts() { # a SYN to a Service address nobody serves dies in the guard
	local before after
	before=$(guard_drops)
	K exec client -- nc -w 1 10.96.0.250 80 </dev/null || true
	after=$(guard_drops)
	echo "guard drops $before -> $after"
	[ "$after" -gt "$before" ]
}
no_pulls() { ! grep -q 'PullImage' "$KDROP_CLUSTER_HOME/logs/containerd.log"; }

logs_work() { K logs client | grep -q 'client started'; }
exec_works() { [ "$(K exec client -- echo exec-ok)" = exec-ok ]; }
service_to_pod() { # no cluster DNS: by ClusterIP
	K exec client -- wget -qO- "http://$(K get svc web -o jsonpath='{.spec.clusterIP}')/" | grep -q hello-web
}
agent_sees_host() { # host PID 1 and the host's BTF from the DaemonSet pod
	local pod
	pod=$(K get pods -l app=agent -o jsonpath='{.items[0].metadata.name}')
	[ "$(K exec "$pod" -- cat /proc/1/comm)" = "$(cat /proc/1/comm)" ] &&
		K exec "$pod" -- test -s /host/btf/vmlinux
}
somaxconn() { [ "$(K exec web -- cat /proc/sys/net/core/somaxconn)" = 128 ]; }

check "kubectl logs" logs_work
check "kubectl exec" exec_works
check "pod -> API via Service 10.96.0.1:443, SA token" api_from client
check "hostNetwork pod -> API via Service, SA token" api_from hostnet
check "pod -> Service -> pod" service_to_pod
check "unsafe sysctl net.core.somaxconn=128 in a pod" somaxconn
check "privileged hostPID DaemonSet sees host PID 1 and BTF" agent_sees_host
check "guard drops a SYN to an unserved Service IP" guard_counts
check "nothing pulled (containerd log)" no_pulls
echo "$pass passed, $failed failed"
[ "$failed" -eq 0 ]
