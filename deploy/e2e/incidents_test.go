package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/report"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// The incidents' workloads, in namespace shop: a server whose pod caps its
// listen queue with net.core.somaxconn=128 (the image server), an API
// Deployment rolled without a preStop hook, a Service nobody backs, and a
// client pod to run the clients from.
const workloads = `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: images, namespace: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: images}}
  template:
    metadata: {labels: {app: images}}
    spec:
      terminationGracePeriodSeconds: 2
      securityContext:
        sysctls:
        - {name: net.core.somaxconn, value: "128"}
      containers:
      - name: server
        image: ` + testappImage + `
        imagePullPolicy: Never
        # asks for 4096; the pod's somaxconn caps it at 128; never accepts,
        # as a server too slow to keep up
        args: [serve, -port, "8080", -backlog, "4096", -accept=false]
---
apiVersion: v1
kind: Service
metadata: {name: images, namespace: shop}
spec:
  selector: {app: images}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: api
        image: ` + testappImage + `
        imagePullPolicy: Never
        args: [serve, -port, "8080"]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: ` + testappImage + `
    imagePullPolicy: Never
    args: [sleep]
`

// incident is what the test knows of the cluster while the scenarios run.
type incident struct {
	tail *stream
	// operator is the kubeconfig of an operator bound to kdrop-viewer, who
	// runs tail and record.
	operator string
	figure   func(format string, args ...any)
}

func TestIncidents(t *testing.T) {
	var figures []string
	figure := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		figures = append(figures, line)
		fmt.Println("KDROP-E2E " + line)
	}
	defer func() {
		fmt.Println("KDROP-E2E summary:")
		for _, f := range figures {
			fmt.Println("KDROP-E2E   " + f)
		}
	}()
	t.Cleanup(func() {
		kubectlErr("delete", "namespace", "shop", "--wait=false")
		kubectlErr("delete", "-k", "deploy/kustomize", "--ignore-not-found", "--wait=false")
		kubectlErr("delete", "clusterrolebinding", "e2e-operator", "--ignore-not-found")
		kubectlErr("-n", "default", "delete", "serviceaccount", "operator", "stranger", "--ignore-not-found")
	})
	dumpOnFailure(t)

	applyYAML(t, workloads)
	kubectl(t, "-n", "shop", "rollout", "status", "deploy/images", "deploy/api", "--timeout=120s")
	kubectl(t, "-n", "shop", "wait", "pod/client", "--for=condition=Ready", "--timeout=120s")

	// An operator's account, bound to the viewer role deploy/ ships.
	kubectl(t, "create", "serviceaccount", "operator", "-n", "default")
	kubectl(t, "create", "clusterrolebinding", "e2e-operator", "--clusterrole=kdrop-viewer", "--serviceaccount=default:operator")
	operator := operatorKubeconfig(t, strings.TrimSpace(kubectl(t, "create", "token", "operator", "-n", "default", "--duration=2h")))

	// Traffic that makes drops all the time (connects to a closed port of
	// an api pod: NO_SOCKET), so the first event shows when kdrop is ready.
	apiIP := strings.TrimSpace(kubectl(t, "-n", "shop", "get", "pod", "-l", "app=api", "-o", "jsonpath={.items[0].status.podIP}"))
	noise := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "-n", "shop", "exec", "client", "--",
		"/testapp", "probe", "-every", "200ms", "-timeout", "1s", "-for", "90s", apiIP+":9")
	if err := noise.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { noise.Process.Kill(); noise.Wait() }()

	// Deploy kdrop the way the README says.
	applied := time.Now()
	kubectl(t, "apply", "-k", "deploy/kustomize")
	tail := startTail(t, operator)
	// Someone not bound to kdrop-viewer is refused at once, and told what
	// to bind.
	kubectl(t, "create", "serviceaccount", "stranger", "-n", "default")
	stranger := operatorKubeconfig(t, strings.TrimSpace(kubectl(t, "create", "token", "stranger", "-n", "default", "--duration=1h")))
	if out, err := exec.Command(kdropBin, "tail", "--kubeconfig", stranger, "--duration", "20s").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "you may not read kdrop's stream") || !strings.Contains(string(out), "--clusterrole=kdrop-viewer") {
		t.Errorf("kdrop tail by a user without kdrop-viewer: %v\n%s", err, out)
	}
	kubectl(t, "-n", "kdrop", "rollout", "status", "daemonset/kdrop", "--timeout=180s")
	figure("apply -k -> agent Ready: %.1f s", time.Since(applied).Seconds())
	first := tail.waitFor(t, 0, 90*time.Second, "a first drop", func(evs []event) bool {
		for _, e := range evs {
			if e.Type == "drop" {
				return true
			}
		}
		return false
	})
	for _, e := range first {
		if e.Type == "drop" {
			figure("apply -k -> first event at kdrop tail: %.1f s", e.received.Sub(applied).Seconds())
			break
		}
	}
	noise.Process.Kill()
	noise.Wait()
	kubectl(t, "-n", "shop", "exec", "client", "--", "/testapp", "pkill", "probe")

	in := &incident{tail: tail, operator: operator, figure: figure}
	t.Run("images fail to load: listen queue overflow", in.listenOverflow)
	t.Run("no route to host in a rolling update", in.rollingUpdate)
	t.Run("service without endpoints", in.serviceWithoutEndpoints)
	t.Run("the agent restarts mid-incident", in.agentRestart)

	lat := latencies(tail.since(0))
	figure("drop -> kdrop tail line latency over %d lines (--merge-delay 1s, the default): p50 %v, p99 %v",
		len(lat), percentile(lat, 0.5).Round(time.Millisecond), percentile(lat, 0.99).Round(time.Millisecond))
	tail.stop()

	t.Run("installed from the Helm chart", in.helm)
}

// dumpOnFailure prints the cluster's view when a test fails.
func dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, args := range [][]string{
			{"get", "nodes,pods,services,endpointslices", "-A", "-o", "wide"},
			{"get", "events", "-A", "--sort-by=.lastTimestamp"},
			{"-n", "kdrop", "logs", "-l", "app.kubernetes.io/name=kdrop", "--tail=60", "--all-containers", "--prefix"},
			{"-n", "kdrop", "describe", "pods"},
		} {
			out, _ := kubectlErr(args...)
			t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
		}
	})
}

// counters reads the kernel's counters in a pod's network namespace.
// kubectlExec is a kubectl exec running in the background: a load that
// keeps going while the test looks.
type kubectlExec struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func startExec(t *testing.T, args ...string) *kubectlExec {
	t.Helper()
	k := &kubectlExec{cmd: exec.Command(kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...), done: make(chan struct{})}
	k.cmd.Stdout = &k.out
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.err = k.cmd.Wait(); close(k.done) }()
	t.Cleanup(func() {
		k.cmd.Process.Kill()
		<-k.done
	})
	return k
}

// ended says whether it has exited (WhileRunning's done).
func (k *kubectlExec) ended() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// wait waits for it to exit and returns its output; it fails the test if
// it failed.
func (k *kubectlExec) wait(t *testing.T) string {
	t.Helper()
	<-k.done
	if k.err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(k.cmd.Args, " "), k.err, k.out.String())
	}
	return k.out.String()
}

func counters(t *testing.T, pod string) map[string]uint64 {
	t.Helper()
	out := kubectl(t, "-n", "shop", "exec", pod, "--", "/testapp", "counters")
	m := map[string]uint64{}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("counters of %s: %v: %s", pod, err, out)
	}
	return m
}

func podOf(t *testing.T, selector string) (name, ip string) {
	t.Helper()
	out := kubectl(t, "-n", "shop", "get", "pod", "-l", selector, "--field-selector=status.phase=Running",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}`)
	name, ip, _ = strings.Cut(strings.Split(strings.TrimSpace(out), "\n")[0], " ")
	return name, ip
}

// recording is a running kdrop record --from tail.
type recording struct {
	cmd  *exec.Cmd
	file string
	mu   sync.Mutex // guards its stderr
}

func (in *incident) record(t *testing.T, name string) *recording {
	t.Helper()
	dir := t.TempDir()
	r := &recording{file: filepath.Join(dir, name+".jsonl.gz")}
	ready := filepath.Join(dir, "ready")
	r.cmd = exec.Command(kdropBin, "record", "--from", "tail", "--kubeconfig", in.operator,
		"-n", "shop", "-o", r.file, "--ready-file", ready)
	var stderr bytes.Buffer
	r.cmd.Stderr = &lockedWriter{mu: &r.mu, w: &stderr}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Kill()
			r.cmd.Wait()
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			return r
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("kdrop record --from tail not ready in 60s:\n%s", stderr.String())
		}
	}
}

// stop ends the recording as an operator does (Ctrl-C) and reads it back.
func (r *recording) stop(t *testing.T) *report.Incident {
	t.Helper()
	r.cmd.Process.Signal(os.Interrupt)
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("kdrop record: %v", err)
	}
	f, err := os.Open(r.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec, err := report.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// finding returns the report's finding of that kind, failing if none.
func finding(t *testing.T, rec *report.Incident, kind string) report.Finding {
	t.Helper()
	var kinds []string
	for _, f := range rec.Findings() {
		if f.Kind == kind {
			return f
		}
		kinds = append(kinds, f.Kind+": "+f.Title)
	}
	t.Fatalf("the report has no %q finding; it has:\n%s", kind, strings.Join(kinds, "\n"))
	return report.Finding{}
}

func mustContain(t *testing.T, what, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("%s should mention %q:\n%s", what, w, text)
		}
	}
}

// listenOverflow: the image server's accept queue, capped at 128 by the
// pod's somaxconn, overflows under a client faster than it accepts.
func (in *incident) listenOverflow(t *testing.T) {
	dumpOnFailure(t)
	agent := sampleAgent(t)
	defer agent.done("listen overflow")
	server, serverIP := podOf(t, "app=images")
	svcIP := strings.TrimSpace(kubectl(t, "-n", "shop", "get", "service", "images", "-o", "jsonpath={.spec.clusterIP}"))
	before := counters(t, server)["TcpExtListenOverflows"]
	rec := in.record(t, "overflow")
	mark := in.tail.mark()

	// The listener is the server pod's: kdrop names it by the network
	// namespace the overflow happened in (where_k8s). Its address is the
	// pod IP, or 0.0.0.0 where kdrop reads the listener through sock_diag.
	isServer := func(e *event) bool {
		return e.Type == "overflow" && e.Dport == 8080 && e.WhereK8s != nil && e.WhereK8s.Name == server &&
			(e.Dst == serverIP || e.Dst == "0.0.0.0")
	}
	// 300 connections at once, then one every 20 ms for 20 s, all held
	// while the kernel retries their SYNs. While that runs, kdrop's count
	// for the server never exceeds the kernel's counter in the server
	// pod's network namespace, nor trails it by more than a few seconds;
	// once both stop moving, they are equal.
	flood := startExec(t, "-n", "shop", "exec", "client", "--", "/testapp", "flood", "-n", "300", "-for", "20s", "-every", "20ms", svcIP+":80")
	nstest.WhileRunning(t, "kdrop tail's overflows of "+server+" vs its TcpExtListenOverflows", nstest.For(15*time.Second), 2*time.Second, 5*time.Second,
		func() uint64 { return sum(in.tail.since(mark), isServer) },
		func() uint64 { return counters(t, server)["TcpExtListenOverflows"] - before })
	flood.wait(t)

	var kernel, seen uint64
	for deadline, stable := time.Now().Add(90*time.Second), 0; stable < 3; time.Sleep(2 * time.Second) {
		k := counters(t, server)["TcpExtListenOverflows"] - before
		s := sum(in.tail.since(mark), isServer)
		if k == kernel && s == seen && k > 0 && k == s {
			stable++
		} else {
			stable = 0
		}
		kernel, seen = k, s
		if time.Now().After(deadline) {
			t.Fatalf("overflows: kernel (TcpExtListenOverflows in %s) %d, kdrop tail %d; last lines:\n%s", server, k, s, in.tail.tailLog(30))
		}
	}
	in.figure("listen overflow: %d overflows, kdrop tail == TcpExtListenOverflows in the pod's netns", seen)
	waitK8sEvent(t, "Pod", server, "ListenQueueOverflow", seen)

	for _, e := range in.tail.since(mark) {
		if !isServer(&e) {
			continue
		}
		if e.Queue != "accept" || e.QueueMax != 128 || e.Somaxconn != 128 || e.QueueLen != e.QueueMax+1 {
			t.Errorf("overflow should be of the accept queue at its limit 128 (= somaxconn; the kernel calls it full at max+1): %s", e.raw)
		}
		for _, id := range []*ident{e.DstK8s, e.WhereK8s} {
			if id == nil && e.Dst == "0.0.0.0" {
				continue // the listener's wildcard address names no pod
			}
			if id == nil || id.Kind != "pod" || id.Namespace != "shop" || id.Name != server || id.WorkloadKind != "Deployment" || id.WorkloadName != "images" {
				t.Errorf("overflow should name pod shop/%s of Deployment images: %s", server, e.raw)
			}
		}
		if e.Node != node {
			t.Errorf("overflow on node %q, want %q: %s", e.Node, node, e.raw)
		}
	}

	r := rec.stop(t)
	f := finding(t, r, "somaxconn")
	text := f.Title + "\n" + f.Detail + "\n" + f.Fix
	mustContain(t, "the somaxconn hint", text, "128", "net.core.somaxconn", "sysctls", "initContainer", "tuning CNI plugin", "backlog")
	if f.Count != seen {
		t.Errorf("the report counts %d overflows, kdrop tail %d", f.Count, seen)
	}
}

// rollingUpdate: a client keeps dialing the api pods' IPs, as one holding
// stale endpoints does, while kubectl rollout restart replaces the pods
// with no preStop hook.
func (in *incident) rollingUpdate(t *testing.T) {
	dumpOnFailure(t)
	agent := sampleAgent(t)
	defer agent.done("rolling update")
	out := kubectl(t, "-n", "shop", "get", "pod", "-l", "app=api", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}`)
	old := map[string]string{} // IP -> pod
	var targets []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, ip, _ := strings.Cut(l, " ")
		old[ip] = name
		targets = append(targets, ip+":8080")
	}
	before := counters(t, "client")["IcmpOutDestUnreachs"]
	rec := in.record(t, "rollout")
	mark := in.tail.mark()

	// The prober's dial timeout is longer than the kernel's 3 s of ARP, so
	// a dial that ends in "No route to host" is seen as such. It stops with
	// an address after two of those: the client's neighbour entry for an
	// old IP stays REACHABLE for up to ~45 s after its last confirmation,
	// and dials meanwhile time out.
	probe := startExec(t, append([]string{"-n", "shop", "exec", "client", "--",
		"/testapp", "probe", "-every", "300ms", "-timeout", "5s", "-for", "150s", "-until", "EHOSTUNREACH", "-times", "2"}, targets...)...)
	// Every ICMP host-unreachable the client's kernel sends is in kdrop
	// tail: looked at while the prober keeps dialing, through the rollout.
	unreach := func(e *event) bool {
		_, isOld := old[e.Dst]
		return e.Type == "unreach" && e.ICMP == "host-unreachable" && isOld
	}
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		nstest.WhileRunning(t, "kdrop tail's host-unreachables vs IcmpOutDestUnreachs in the client pod", probe.ended, 2*time.Second, 5*time.Second,
			func() uint64 { return sum(in.tail.since(mark), unreach) },
			func() uint64 { return counters(t, "client")["IcmpOutDestUnreachs"] - before })
	}()
	time.Sleep(2 * time.Second)
	kubectl(t, "-n", "shop", "rollout", "restart", "deploy/api")
	kubectl(t, "-n", "shop", "rollout", "status", "deploy/api", "--timeout=120s")
	<-sampled
	probeOut := probe.wait(t)

	// What the client saw, per old IP, in order of first appearance.
	type dial struct{ Addr, Result string }
	seq := map[string][]string{}
	counts := map[string]map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(probeOut), "\n") {
		var d dial
		if json.Unmarshal([]byte(l), &d) != nil {
			continue
		}
		ip := strings.TrimSuffix(d.Addr, ":8080")
		if counts[ip] == nil {
			counts[ip] = map[string]int{}
		}
		counts[ip][d.Result]++
		if s := seq[ip]; len(s) == 0 || s[len(s)-1] != d.Result {
			seq[ip] = append(seq[ip], d.Result)
		}
	}
	for ip, s := range seq {
		in.figure("rolling update: client dialing old IP %s saw %s (%v)", ip, strings.Join(s, " -> "), counts[ip])
		if counts[ip]["EHOSTUNREACH"] == 0 {
			t.Errorf("the client never saw No route to host for old IP %s: %v", ip, s)
		}
	}

	// Once the prober stopped: every one, naming the deleted pod, its
	// Deployment and how long ago it went.
	var kernel, seen uint64
	for deadline, stable := time.Now().Add(60*time.Second), 0; stable < 2; time.Sleep(2 * time.Second) {
		kernel = counters(t, "client")["IcmpOutDestUnreachs"] - before
		seen = sum(in.tail.since(mark), unreach)
		if kernel == seen && kernel > 0 {
			stable++
		} else {
			stable = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("host-unreachable: kernel (IcmpOutDestUnreachs in the client pod) %d, kdrop tail %d; last lines:\n%s", kernel, seen, in.tail.tailLog(30))
		}
	}
	in.figure("rolling update: %d ICMP host-unreachable, kdrop tail == IcmpOutDestUnreachs in the client pod", seen)
	waitK8sEvent(t, "Pod", "client", "SentToDeletedPod", seen)
	var ago []string
	for _, e := range in.tail.since(mark) {
		if !unreach(&e) {
			continue
		}
		id := e.DstK8s
		if id == nil || id.Kind != "pod" || id.Name != old[e.Dst] || id.WorkloadKind != "Deployment" || id.WorkloadName != "api" || id.DeletedAgoMs <= 0 {
			t.Errorf("host-unreachable to %s should name the deleted pod shop/%s of Deployment api, with its age: got %v\n%s", e.Dst, old[e.Dst], id, e.raw)
		} else {
			ago = append(ago, strconv.FormatInt(id.DeletedAgoMs/1000, 10)+"s")
		}
		if e.WhereK8s == nil || e.WhereK8s.Name != "client" {
			t.Errorf("the ICMP should be sent in the client pod's netns: %s", e.raw)
		}
	}
	in.figure("rolling update: deleted ago per unreachable line: %s", strings.Join(ago, " "))

	// The phase in between: the process gone, the netns still there, so
	// the old pod's kernel answers with a reset: a NO_SOCKET drop there.
	for ip, c := range counts {
		if c["ECONNREFUSED"] == 0 {
			continue
		}
		if sum(in.tail.since(mark), func(e *event) bool {
			return e.Type == "drop" && e.Reason == "NO_SOCKET" && e.Dst == ip && e.Dport == 8080
		}) == 0 {
			t.Errorf("the client saw ECONNREFUSED from old IP %s; kdrop tail should show its NO_SOCKET drop", ip)
		}
	}

	// ... and then the neighbour entry fails: the client's kernel drops the
	// SYNs it held for the old IP (NEIGH_FAILED) as it sends the ICMP.
	neigh := sum(in.tail.since(mark), func(e *event) bool {
		_, isOld := old[e.Dst]
		return e.Type == "drop" && e.Reason == "NEIGH_FAILED" && isOld
	})
	if neigh == 0 {
		t.Errorf("kdrop tail shows no NEIGH_FAILED drop for the old IPs")
	}
	in.figure("rolling update: %d NEIGH_FAILED drops for the old IPs", neigh)

	r := rec.stop(t)
	f := finding(t, r, "stale-endpoint")
	mustContain(t, "the stale-endpoint hint", f.Title+"\n"+f.Detail+"\n"+f.Fix, "preStop", "readinessProbe", "api")
}

// serviceWithoutEndpoints: kube-proxy REJECTs connections to a Service
// that no ready pod backs.
func (in *incident) serviceWithoutEndpoints(t *testing.T) {
	dumpOnFailure(t)
	agent := sampleAgent(t)
	defer agent.done("service without endpoints")
	svcIP := strings.TrimSpace(kubectl(t, "-n", "shop", "get", "service", "cart", "-o", "jsonpath={.spec.clusterIP}"))
	rec := in.record(t, "cart")
	mark := in.tail.mark()
	logsFrom := time.Now()

	// kube-proxy's nftables mode (KDROP_PROXY_MODE=nftables) has no rule
	// counters: there the drops are at least the refused connections.
	nftMode := os.Getenv("KDROP_PROXY_MODE") == "nftables"
	rejectsBefore := rejected(t, "shop/cart")
	// kube-proxy's REJECT rule drops each SYN (NETFILTER_DROP) and answers
	// it with port-unreachable, unless the ICMP rate limit holds the answer
	// back (the client's kernel then retransmits the SYN). A SYN a bridge
	// floods to every port (a client whose ARP entry names a MAC the bridge
	// no longer has; deploy/cluster pins its bridge's MAC against that) is
	// rejected once per copy.
	toCart := func(e *event) bool { return e.Dst == svcIP && e.Dport == 80 }
	isCart := func(e *event) bool { return e.Type == "unreach" && e.ICMP == "port-unreachable" && toCart(e) }
	// kube-proxy's rules are in the node's network namespace; other
	// namespaces on this machine may drop packets to the same address.
	isReject := func(e *event) bool {
		return e.Type == "drop" && e.Reason == "NETFILTER_DROP" && toCart(e) && inNodeNetns(e)
	}
	// A client dialing cart every 300 ms for 10 s, the ICMP rate limit at
	// its default: a dial timeout well past the SYN retransmits (1 s, 3 s),
	// so a SYN whose answer the limit held back is refused on its
	// retransmit. While it dials, kdrop tail's drops stay within the REJECT
	// rule's counter and trail it by no more than a few seconds.
	dials := startExec(t, "-n", "shop", "exec", "client", "--", "/testapp", "probe", "-every", "300ms", "-timeout", "8s", "-for", "10s", svcIP+":80")
	if !nftMode {
		nstest.WhileRunning(t, "kdrop tail's NETFILTER_DROP for Service cart vs the REJECT rule's counter", dials.ended, time.Second, 5*time.Second,
			func() uint64 { return sum(in.tail.since(mark), isReject) },
			func() uint64 { return rejected(t, "shop/cart") - rejectsBefore })
	}
	results := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(dials.wait(t)), "\n") {
		var d struct{ Result string }
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatalf("prober line %q: %v", l, err)
		}
		results[d.Result]++
	}
	dialed := results["ECONNREFUSED"]
	if dialed < 5 || len(results) != 1 {
		t.Fatalf("the client should see Connection refused on every dial, at least 5: %v", results)
	}
	rejects := rejected(t, "shop/cart") - rejectsBefore
	if nftMode {
		rejects = uint64(dialed)
	}
	evs := in.tail.waitFor(t, mark, 30*time.Second, fmt.Sprintf("%d NETFILTER_DROP for Service cart (the REJECT rule's counter)", rejects),
		func(evs []event) bool { return sum(evs, isReject) >= rejects })
	time.Sleep(2 * time.Second)
	evs = in.tail.since(mark)
	drops, unreach := sum(evs, isReject), sum(evs, isCart)
	waitK8sEvent(t, "Service", "cart", "NoReadyEndpoints", drops)
	refused := map[int]bool{}
	for _, e := range evs {
		if isCart(&e) {
			refused[e.Sport] = true
		}
	}
	if (drops != rejects && !nftMode) || drops < rejects || len(refused) != dialed || unreach > drops {
		var lines []string
		for _, e := range evs {
			lines = append(lines, e.raw)
		}
		t.Errorf("Service cart: REJECT rule counted %d packets; kdrop tail %d NETFILTER_DROP (want equal), %d port-unreachable (at most that) for %d distinct connections (want the %d refused); lines:\n%s",
			rejects, drops, unreach, len(refused), dialed, strings.Join(lines, "\n"))
	}
	for _, e := range evs {
		if !isCart(&e) && !isReject(&e) {
			continue
		}
		if id := e.DstK8s; id == nil || id.Kind != "service" || id.Namespace != "shop" || id.Name != "cart" || id.ReadyEndpoints == nil || *id.ReadyEndpoints != 0 {
			t.Errorf("should name Service shop/cart with 0 ready endpoints: %s", e.raw)
		}
		if e.SrcK8s == nil || e.SrcK8s.Name != "client" {
			t.Errorf("the source should be the client pod: %s", e.raw)
		}
		// kdrop names kube-proxy's rule and what it means (its port is
		// unnamed, so kube-proxy's comment names the Service alone).
		table, chain := "filter", "KUBE-SERVICES"
		if nftMode {
			table, chain = "kube-proxy", "reject-chain"
		}
		if r := e.Rule; isReject(&e) && (r == nil || r.Table != table || r.Chain != chain || !strings.HasPrefix(r.Verdict, "REJECT") ||
			r.K8s == nil || r.K8s.Kind != netfilter.MeaningNoEndpoints || r.K8s.Engine != "kube-proxy" || r.K8s.Service != "shop/cart" ||
			r.K8s.Text != "Service shop/cart has no endpoints") {
			t.Errorf("the drop should name kube-proxy's REJECT rule in %s/%s, meaning no-endpoints for Service shop/cart: %s", table, chain, e.raw)
		}
	}

	// The same events in the agent's log, for an operator with kubectl only.
	var logged int
	for deadline := time.Now().Add(20 * time.Second); uint64(logged) < unreach && time.Now().Before(deadline); time.Sleep(time.Second) {
		logs := kubectl(t, "-n", "kdrop", "logs", "-l", "app.kubernetes.io/name=kdrop", "--since-time="+logsFrom.UTC().Format(time.RFC3339), "--tail=-1")
		logged = 0
		for _, l := range strings.Split(logs, "\n") {
			if e, err := parseEvent([]byte(l)); err == nil && isCart(&e) && e.DstK8s != nil && e.DstK8s.Name == "cart" {
				logged += int(e.Count)
			}
		}
	}
	if uint64(logged) != unreach {
		t.Errorf("kubectl logs of the agent: %d port-unreachable for Service cart, kdrop tail %d", logged, unreach)
	}
	in.figure("service without endpoints (kube-proxy %s mode): %d refused dials; %s %d, NETFILTER_DROP in kdrop tail %d, each naming kube-proxy's rule (rule.k8s.meaning no-endpoints, service shop/cart); %d port-unreachable in kdrop tail and in kubectl logs, naming svc shop/cart (0 ready endpoints)",
		map[bool]string{false: "iptables", true: "nftables"}[nftMode], dialed, map[bool]string{false: "REJECT counter", true: "at least (no counters)"}[nftMode], rejects, drops, unreach)

	r := rec.stop(t)
	f := finding(t, r, "no-endpoints")
	mustContain(t, "the no-endpoints hint", f.Title+"\n"+f.Detail+"\n"+f.Fix, "cart", "endpoints", "kube-proxy's own rule for this Service")
}

// rejected sums the packet counters of kube-proxy's REJECT rules for a
// Service without endpoints ("ns/name has no endpoints").
func rejected(t *testing.T, svc string) uint64 {
	t.Helper()
	return kubeProxyCounter(t, svc, "has no endpoints", "-j REJECT")
}

// kubeProxyCounter sums the packet counters of kube-proxy's filter rules
// for Service svc whose comment says what and whose target is target.
func kubeProxyCounter(t *testing.T, svc, what, target string) uint64 {
	t.Helper()
	out, err := exec.Command("iptables-save", "-c", "-t", "filter").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	var n uint64
	for _, l := range strings.Split(string(out), "\n") {
		// the comment is "ns/name has no endpoints", or "ns/name:port has ..."
		named := strings.Contains(l, `"`+svc+" ") || strings.Contains(l, `"`+svc+":")
		if !named || !strings.Contains(l, what) || !strings.Contains(l, target) {
			continue
		}
		var pkts, bytes uint64
		if _, err := fmt.Sscanf(l, "[%d:%d]", &pkts, &bytes); err != nil {
			t.Fatalf("iptables-save -c: no counters in %q", l)
		}
		n += pkts
	}
	return n
}

// agentBPF lists the BPF programs and links the agent process holds, by
// ID, from its file descriptors.
func agentBPF(t *testing.T) (progs, links map[int]bool) {
	t.Helper()
	pid := findAgentPID()
	if pid == 0 {
		t.Fatal("no kdrop agent process on the node")
	}
	progs, links = map[int]bool{}, map[int]bool{}
	infos, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	for _, f := range infos {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ":")
			id, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				continue
			}
			switch k {
			case "prog_id":
				progs[id] = true
			case "link_id":
				links[id] = true
			}
		}
	}
	return progs, links
}

// bpftoolIDs is what bpftool shows loaded on the node: programs or links.
func bpftoolIDs(t *testing.T, what string) map[int]bool {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", what, "show").Output()
	if err != nil {
		t.Fatalf("bpftool %s show: %v", what, err)
	}
	var objs []struct {
		ID int `json:"id"`
	}
	if err := json.Unmarshal(out, &objs); err != nil {
		t.Fatalf("bpftool %s show: %v", what, err)
	}
	ids := map[int]bool{}
	for _, o := range objs {
		ids[o.ID] = true
	}
	return ids
}

// agentRestart: kubectl delete pod on the agent mid-incident.
func (in *incident) agentRestart(t *testing.T) {
	dumpOnFailure(t)
	progs, links := agentBPF(t)
	loaded, attached := bpftoolIDs(t, "prog"), bpftoolIDs(t, "link")
	for id := range progs {
		if !loaded[id] {
			t.Fatalf("the agent holds program %d, which bpftool prog show does not list", id)
		}
	}
	if len(progs) == 0 || len(links) == 0 {
		t.Fatalf("the agent holds no programs (%d) or links (%d)", len(progs), len(links))
	}
	for id := range links {
		if !attached[id] {
			t.Fatalf("the agent holds link %d, which bpftool link show does not list", id)
		}
	}
	old := strings.TrimSpace(kubectl(t, "-n", "kdrop", "get", "pod", "-l", "app.kubernetes.io/name=kdrop", "-o", "jsonpath={.items[0].metadata.name}"))
	mark := in.tail.mark()
	kubectl(t, "-n", "kdrop", "delete", "pod", old, "--wait=true")
	kubectl(t, "-n", "kdrop", "rollout", "status", "daemonset/kdrop", "--timeout=120s")
	kubectl(t, "-n", "kdrop", "wait", "pod", "-l", "app.kubernetes.io/name=kdrop", "--for=condition=Ready", "--timeout=120s")

	// tail says what it missed, and goes on.
	gapRe := regexp.MustCompile(`events on node ` + regexp.QuoteMeta(node) + ` between`)
	in.tail.waitFor(t, mark, 60*time.Second, "a notice of the gap", func(evs []event) bool {
		for _, e := range evs {
			if e.Type == "notice" && gapRe.MatchString(e.Message) && e.GapFrom != "" {
				return true
			}
		}
		return false
	})
	svcIP := strings.TrimSpace(kubectl(t, "-n", "shop", "get", "service", "cart", "-o", "jsonpath={.spec.clusterIP}"))
	after := in.tail.mark()
	kubectl(t, "-n", "shop", "exec", "client", "--", "/testapp", "dial", "-n", "2", svcIP+":80")
	in.tail.waitFor(t, after, 30*time.Second, "events from the new agent", func(evs []event) bool {
		return sum(evs, func(e *event) bool { return e.Type == "unreach" && e.Dst == svcIP }) >= 2
	})

	// Nothing of the old agent is left in the kernel.
	loaded, attached = bpftoolIDs(t, "prog"), bpftoolIDs(t, "link")
	for id := range progs {
		if loaded[id] {
			t.Errorf("program %d of the deleted agent is still loaded (bpftool prog show)", id)
		}
	}
	for id := range links {
		if attached[id] {
			t.Errorf("link %d of the deleted agent is still attached (bpftool link show)", id)
		}
	}
	newProgs, newLinks := agentBPF(t)
	if len(newProgs) != len(progs) || len(newLinks) != len(links) {
		t.Errorf("the new agent holds %d programs and %d links, the old one %d and %d", len(newProgs), len(newLinks), len(progs), len(links))
	}
	in.figure("agent restart: %d programs and %d links replaced, none of the old left; tail noticed the gap and went on", len(progs), len(links))
}

// helm: the same agent from the Helm chart, in place of the kustomize one.
func (in *incident) helm(t *testing.T) {
	dumpOnFailure(t)
	kubectl(t, "delete", "-k", "deploy/kustomize", "--wait=true", "--timeout=120s")
	kubectl(t, "wait", "--for=delete", "namespace/kdrop", "--timeout=120s")
	for deadline := time.Now().Add(60 * time.Second); findAgentPID() != 0; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the kustomize agent is still running 60s after kubectl delete -k")
		}
	}
	installed := time.Now()
	// As deploy/README.md says: the chart creates namespace kdrop. This
	// agent posts no Kubernetes Events (extraArgs: --k8s-events=false).
	eventsBefore := kdropK8sEvents(t)
	helm := exec.Command(helmBin, "install", "kdrop", "deploy/helm/kdrop", "--kubeconfig", kubeconfig, "--wait", "--timeout", "3m",
		"--set", "extraArgs={--k8s-events=false}")
	helm.Dir = repo
	if out, err := helm.CombinedOutput(); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		exec.Command(helmBin, "uninstall", "kdrop", "--kubeconfig", kubeconfig, "--wait").Run()
	})
	in.figure("helm install --wait: %.1f s", time.Since(installed).Seconds())
	// The e2e-operator binding names kdrop-viewer, which the chart creates anew.
	tail := startTail(t, in.operator)
	svcIP := strings.TrimSpace(kubectl(t, "-n", "shop", "get", "service", "cart", "-o", "jsonpath={.spec.clusterIP}"))
	tail.waitFor(t, 0, 90*time.Second, "Service cart's port-unreachable through the Helm-installed agent", func(evs []event) bool {
		kubectlErr("-n", "shop", "exec", "client", "--", "/testapp", "dial", "-n", "1", svcIP+":80")
		return sum(evs, func(e *event) bool {
			return e.Type == "unreach" && e.Dst == svcIP && e.DstK8s != nil && e.DstK8s.Name == "cart"
		}) > 0
	})
	time.Sleep(12 * time.Second) // past a series' interval, were the Events on
	if after := kdropK8sEvents(t); after != eventsBefore {
		t.Errorf("with --k8s-events=false, kdrop's Kubernetes Events changed:\nbefore %s\nafter  %s", eventsBefore, after)
	}
}

// kdropK8sEvents is every Event kdrop wrote in namespace shop, with its
// count, as one string.
func kdropK8sEvents(t *testing.T) string {
	t.Helper()
	return kubectl(t, "-n", "shop", "get", "events.events.k8s.io", "-o",
		`jsonpath={range .items[?(@.reportingController=="kdrop.dev/agent")]}{.metadata.name} {.reason} {.series.count}{"\n"}{end}`)
}

// waitK8sEvent waits until kdrop's Kubernetes Events of reason on the
// object (kind, namespace shop, name) count want (series.count, or 1), as
// "kubectl get events" reads them; a series is written at most every 10 s.
func waitK8sEvent(t *testing.T, kind, name, reason string, want uint64) {
	t.Helper()
	waitK8sEventIn(t, "shop", kind, name, reason, want, 45*time.Second)
}

// waitK8sEventIn is waitK8sEvent in namespace ns, for up to timeout.
func waitK8sEventIn(t *testing.T, ns, kind, name, reason string, want uint64, timeout time.Duration) {
	t.Helper()
	var got uint64
	var notes []string
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		out := kubectl(t, "-n", ns, "get", "events.events.k8s.io", "--field-selector", "reason="+reason, "-o", "json")
		var list struct {
			Items []struct {
				Note                string `json:"note"`
				ReportingController string `json:"reportingController"`
				Regarding           struct{ Kind, Name string }
				Series              *struct{ Count uint64 }
			}
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("kubectl get events: %v", err)
		}
		got, notes = 0, nil
		for _, e := range list.Items {
			if e.ReportingController != "kdrop.dev/agent" || e.Regarding.Kind != kind || e.Regarding.Name != name {
				continue
			}
			n := uint64(1)
			if e.Series != nil {
				n = e.Series.Count
			}
			got += n
			notes = append(notes, e.Note)
		}
		if got == want {
			in := fmt.Sprintf("%s Event on %s %s/%s counts %d, as kdrop tail: %s", reason, kind, ns, name, got, strings.Join(notes, " | "))
			fmt.Println("KDROP-E2E " + in)
			return
		}
	}
	t.Errorf("Kubernetes Events %s on %s %s/%s count %d, kdrop tail %d (notes: %q)", reason, kind, ns, name, got, want, notes)
}
