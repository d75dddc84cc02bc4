package e2e

// kdrop's Kubernetes Events in the real cluster, on the objects kube-proxy's
// rules name: a NodePort Service with externalTrafficPolicy: Local whose
// only endpoint is on another Node (NoLocalEndpoints), and a 10-second storm
// of rejected packets to many Services without endpoints
// (NoReadyEndpoints), which the node writes within its stated budget while
// every series' count still adds up to the stream's.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/k8sevents"
	"github.com/kdrop/kdrop/tracer/nstest"
	"golang.org/x/sys/unix"
)

const (
	evNS        = "events"
	evOtherNode = "kdrop-e2e-elsewhere" // a Node without a kubelet: web's only endpoint is there
	evNodePort  = 30977
	evStormSvcs = 30
	// The sender outside the cluster: a network namespace on a veth
	// whose host end routes to the node.
	evHostAddr, evOutsideAddr = "198.19.250.1", "198.19.250.2"
)

// evObjects: web, its EndpointSlice naming the other Node, and the storm's
// Services (UDP, nothing selected).
func evObjects() string {
	y := `
apiVersion: v1
kind: Namespace
metadata: {name: ` + evNS + `}
---
# No labels (the kdrop DaemonSet selects kubernetes.io/os=linux) and
# unschedulable: nothing runs there; it only owns web's endpoint.
apiVersion: v1
kind: Node
metadata: {name: ` + evOtherNode + `}
spec:
  unschedulable: true
  taints: [{key: kdrop.dev/e2e, effect: NoSchedule}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ` + evNS + `}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  ports: [{name: http, protocol: UDP, port: 80, targetPort: 8080, nodePort: ` + strconv.Itoa(evNodePort) + `}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-elsewhere
  namespace: ` + evNS + `
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.200.5]
  conditions: {ready: true}
  nodeName: ` + evOtherNode + `
ports: [{name: http, protocol: UDP, port: 8080}]
`
	for i := range evStormSvcs {
		y += fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: storm-%d, namespace: %s}
spec:
  selector: {app: nobody}
  ports: [{protocol: UDP, port: 80, targetPort: 8080}]
`, i, evNS)
	}
	return y
}

func TestKubernetesEvents(t *testing.T) {
	t.Cleanup(func() {
		kubectlErr("delete", "namespace", evNS, "--wait=false")
		kubectlErr("delete", "node", evOtherNode, "--ignore-not-found")
		// The next test deploys kdrop anew: this one must be gone.
		kubectlErr("delete", "-k", "deploy/kustomize", "--ignore-not-found", "--wait=true", "--timeout=120s")
		kubectlErr("wait", "--for=delete", "namespace/kdrop", "--timeout=120s")
		for deadline := time.Now().Add(60 * time.Second); findAgentPID() != 0 && time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		}
	})
	dumpOnFailure(t)
	applyYAML(t, evObjects())
	nodeIP := strings.TrimSpace(kubectl(t, "get", "node", node, "-o", `jsonpath={.status.addresses[?(@.type=="InternalIP")].address}`))
	outside := outsideSender(t)

	// Every write of a kdrop Event anywhere in the cluster, as the API
	// server's watch shows it (one ADDED or MODIFIED per create or patch).
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	writes := watchKdropEventWrites(t, kubernetes.NewForConfigOrDie(cfg))

	kubectl(t, "apply", "-k", "deploy/kustomize")
	kubectl(t, "-n", "kdrop", "rollout", "status", "daemonset/kdrop", "--timeout=180s")
	tail := startTail(t, kubeconfig) // the cluster's admin may read the stream
	// Once tail shows a drop it is following the agent: from then on it
	// misses nothing (datagrams to a closed port of the node: NO_SOCKET).
	tail.waitFor(t, 0, 90*time.Second, "a first drop", func(evs []event) bool {
		outside.SendUDP(t, nodeIP, 9, 1)
		return sum(evs, func(e *event) bool { return e.Type == "drop" && e.Dst == nodeIP && e.Dport == 9 }) > 0
	})
	perMinute := agentEventsPerMinute(t)
	burst := k8sevents.Burst(perMinute)
	nftMode := os.Getenv("KDROP_PROXY_MODE") == "nftables"

	t.Run("no local endpoints", func(t *testing.T) {
		dumpOnFailure(t)
		// kube-proxy drops packets from outside the cluster to web's node
		// port: its only endpoint is on the other Node. Until kube-proxy
		// has synced web, they are dropped by no rule of its: send until
		// kdrop names the rule, then a counted batch.
		isWeb := func(e *event) bool {
			r := e.Rule
			return e.Type == "drop" && e.Reason == "NETFILTER_DROP" && e.Dst == nodeIP && e.Dport == evNodePort && inNodeNetns(e) &&
				r != nil && r.K8s != nil && r.K8s.Kind == netfilter.MeaningNoLocalEndpoints && r.K8s.Service == evNS+"/web:http"
		}
		tail.waitFor(t, 0, 90*time.Second, "a drop to web's node port named as kube-proxy's no-local-endpoints rule", func(evs []event) bool {
			outside.SendUDP(t, nodeIP, evNodePort, 1)
			return sum(evs, isWeb) > 0
		})
		// Then a counted run: each datagram one drop in the stream and
		// (iptables mode) one packet on kube-proxy's rule counter, looked
		// at while the datagrams keep coming (one every 50 ms for 6 s),
		// then once the stream settled.
		first := tail.settle(t, isWeb)
		counter := func() uint64 { return kubeProxyCounter(t, evNS+"/web", "has no local endpoints", "-j DROP") }
		before := counter()
		var sending atomic.Uint64
		stop := nstest.Paced(t, 50*time.Millisecond, func() { outside.SendUDP(t, nodeIP, evNodePort, 1); sending.Add(1) })
		if nftMode { // no counters: the datagrams sent so far bound what kdrop may show
			nstest.WhileRunning(t, "kdrop tail's drops to web's node port vs the datagrams sent", nstest.For(6*time.Second), time.Second, 4*time.Second,
				func() uint64 { return sum(tail.since(0), isWeb) - first }, sending.Load)
		} else {
			nstest.WhileRunning(t, "kdrop tail's drops to web's node port vs kube-proxy's no-local-endpoints DROP counter", nstest.For(6*time.Second), time.Second, 4*time.Second,
				func() uint64 { return sum(tail.since(0), isWeb) - first }, func() uint64 { return counter() - before })
		}
		stop()
		sent := sending.Load()
		seen := tail.settle(t, isWeb)
		if seen-first != sent {
			t.Errorf("kdrop tail shows %d drops to web's node port for the %d datagrams sent", seen-first, sent)
		}
		if c := counter() - before; c != sent && !nftMode {
			t.Errorf("kube-proxy's no-local-endpoints DROP rule counted %d of the %d datagrams sent", c, sent)
		}
		for _, e := range tail.since(0) {
			if isWeb(&e) && (e.Rule.K8s.Text != "Service "+evNS+"/web:http has no local endpoints (externalTrafficPolicy: Local)" || e.Node != node) {
				t.Errorf("the drop should say web has no local endpoints, on node %s: %s", node, e.raw)
			}
		}
		waitK8sEventIn(t, evNS, "Service", "web", k8sevents.ReasonNoLocalEndpoints, seen, 45*time.Second)
		out := kubectl(t, "-n", evNS, "describe", "service", "web")
		mustContain(t, "kubectl describe service web", out, "NoLocalEndpoints", k8sevents.Controller,
			"externalTrafficPolicy: Local and no ready endpoint on node "+node, "healthCheckNodePort")
		fmt.Printf("KDROP-E2E no local endpoints: %d drops to web's node port, one NoLocalEndpoints Event on Service %s/web counting %d\n", seen, evNS, seen)
	})

	t.Run("a storm within the node's budget", func(t *testing.T) {
		dumpOnFailure(t)
		ips := map[string]string{} // ClusterIP -> Service
		var dsts []netip.AddrPort
		for i := range evStormSvcs {
			name := fmt.Sprintf("storm-%d", i)
			ip := strings.TrimSpace(kubectl(t, "-n", evNS, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}"))
			ips[ip] = name
			dsts = append(dsts, netip.AddrPortFrom(netip.MustParseAddr(ip), 80))
		}
		isStorm := func(e *event) bool {
			_, ok := ips[e.Dst]
			return ok && e.Type == "drop" && e.Reason == "NETFILTER_DROP" && e.Dport == 80 && inNodeNetns(e)
		}
		// kube-proxy must REJECT every one of them before the storm
		// starts, or some drops are no Service's.
		tail.waitFor(t, 0, 90*time.Second, "each storm Service's drop named as kube-proxy's no-endpoints rule", func(evs []event) bool {
			named := map[string]bool{}
			for _, e := range evs {
				if isStorm(&e) && e.Rule != nil && e.Rule.K8s != nil && e.Rule.K8s.Kind == netfilter.MeaningNoEndpoints {
					named[e.Dst] = true
				}
			}
			for _, d := range dsts {
				if !named[d.Addr().String()] {
					outside.SendUDP(t, d.Addr().String(), 80, 1)
				}
			}
			return len(named) == len(dsts)
		})
		before := tail.settle(t, isStorm)
		time.Sleep(12 * time.Second) // the series of those first drops written
		// The budget, read from the agent's flag and the code: Burst at
		// once, then perMinute a minute; one more for a write the watch
		// shows a little after it happened. Checked every second while the
		// storm runs, then over all of it.
		budgetUntil := func(start, end time.Time) int {
			return burst + int(float64(perMinute)*end.Sub(start).Minutes()) + 1
		}
		start := time.Now()
		flooded := make(chan uint64, 1)
		go func() { flooded <- pacedFlood(t, outside, dsts, 10, 10*time.Second) }() // 10/s to each Service
		var sent uint64
	storming:
		for {
			select {
			case sent = <-flooded:
				break storming
			case <-time.After(time.Second):
				now := time.Now()
				if w, b := len(writes.between(start, now)), budgetUntil(start, now); w > b {
					t.Errorf("t+%v of a storm on %d Services: %d kdrop Event writes, budget so far %d", now.Sub(start).Round(time.Millisecond), evStormSvcs, w, b)
				}
			}
		}
		end := time.Now()
		inStorm := writes.between(start, end.Add(time.Second))
		budget := budgetUntil(start, end.Add(time.Second))
		if len(inStorm) > budget {
			t.Errorf("a 10 s storm on %d Services: %d kdrop Event writes, budget %d (--k8s-events-per-minute %d, burst %d)", evStormSvcs, len(inStorm), budget, perMinute, burst)
		}
		stormObjects := map[string]bool{}
		for _, w := range inStorm {
			stormObjects[w.object] = true
		}
		if after := tail.settle(t, isStorm); after-before != sent {
			t.Errorf("the storm sent %d datagrams; kdrop tail shows %d drops", sent, after-before)
		}

		// Once the storm is over, each Service's Event counts what the
		// stream showed for it: nothing folded away.
		perSvc := func() map[string]uint64 {
			m := map[string]uint64{}
			for _, e := range tail.since(0) {
				if isStorm(&e) {
					m[ips[e.Dst]] += e.Count
				}
			}
			return m
		}
		var stream, events map[string]uint64
		deadline := time.Now().Add(150 * time.Second)
		for ; ; time.Sleep(2 * time.Second) {
			stream, events = perSvc(), kdropEventCounts(t, evNS, k8sevents.ReasonNoEndpoints)
			same := len(stream) == evStormSvcs
			for name, n := range stream {
				same = same && events[name] == n
			}
			if same {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the storm, NoReadyEndpoints Events and kdrop tail differ:\nEvents %v\ntail   %v", events, stream)
			}
		}
		caughtUp := time.Now()
		var total uint64
		for name, n := range stream {
			total += n
			if !nftMode {
				// Since the start of the test: the count before the
				// storm included the first drops, which the stream shows.
				if c := rejected(t, evNS+"/"+name); c != n {
					t.Errorf("Service %s: kube-proxy's REJECT rule counted %d packets, kdrop tail and its Event %d", name, c, n)
				}
			}
		}
		// The budget holds over every window of the whole test: the first
		// drops to the 30 Services, which found the burst unused, the
		// storm and the catching up.
		all := writes.between(time.Time{}, caughtUp)
		maxSecond := 0 // the most writes seen within one second
		for i := range all {
			j := i
			for j < len(all) && all[j].at.Sub(all[i].at) < time.Second {
				j++
			}
			maxSecond = max(maxSecond, j-i)
		}
		for i := range all {
			for j := i + burst; j < len(all); j++ {
				window := all[j].at.Sub(all[i].at)
				if n := j - i + 1; n > burst+int(float64(perMinute)*window.Minutes())+1 {
					t.Errorf("%d kdrop Event writes within %v (from %s to %s): over the budget of %d at once and %d a minute",
						n, window.Round(time.Millisecond), all[i].at.Format("15:04:05.000"), all[j].at.Format("15:04:05.000"), burst, perMinute)
					break
				}
			}
		}
		fmt.Printf("KDROP-E2E storm: %d datagrams in 10 s to %d Services without endpoints; %d drops in kdrop tail; %d kdrop Event writes during it (on %d objects; budget %d: burst %d + %d/min); "+
			"%.0f s later every Service's NoReadyEndpoints Event counted the stream's (%d in all); %d writes in the test, at most %d within a second\n",
			sent, evStormSvcs, total, len(inStorm), len(stormObjects), budget, burst, perMinute, caughtUp.Sub(end).Seconds(), total, len(all), maxSecond)
	})
}

// inNodeNetns says whether e happened in the node's own network namespace,
// where kube-proxy's rules are (the machine's other namespaces may drop
// packets to the same addresses; kdrop's Events count only the node's).
func inNodeNetns(e *event) bool { return e.WhereK8s != nil && e.WhereK8s.Kind == "node" }

// outsideSender is a network namespace outside the cluster: a veth from
// the host, whose end on the host routes to the node address and the
// Service range, as a client on the node's network would.
func outsideSender(t *testing.T) *nstest.NS {
	t.Helper()
	ns := nstest.New(t, "outside")
	host := fmt.Sprintf("kdev%d", os.Getpid()%100000)
	nstest.Run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	nstest.Run(t, "ip", "addr", "add", evHostAddr+"/30", "dev", host)
	nstest.Run(t, "ip", "link", "set", host, "up")
	ns.IP(t, "addr add "+evOutsideAddr+"/30 dev eth0")
	ns.IP(t, "link set eth0 up")
	ns.IP(t, "route add default via "+evHostAddr)
	return ns
}

// pacedFlood sends rate datagrams a second to each of dsts from ns, for d;
// it returns how many were sent.
func pacedFlood(t *testing.T, ns *nstest.NS, dsts []netip.AddrPort, rate int, d time.Duration) uint64 {
	t.Helper()
	var fd int
	ns.In(t, func() {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
	})
	defer unix.Close(fd)
	var sent uint64
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		for _, dst := range dsts {
			if unix.Sendto(fd, []byte("kdrop storm"), 0, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}) == nil {
				sent++
			}
		}
	}
	return sent
}

// agentEventsPerMinute is the deployed agent's --k8s-events-per-minute,
// or the code's default when its arguments do not set it.
func agentEventsPerMinute(t *testing.T) int {
	t.Helper()
	args := kubectl(t, "-n", "kdrop", "get", "daemonset", "kdrop", "-o", "jsonpath={.spec.template.spec.containers[0].args}")
	if m := regexp.MustCompile(`--k8s-events-per-minute[= ]"?(\d+)`).FindStringSubmatch(args); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return k8sevents.DefaultPerMinute
}

// kdropEventCounts is the count (series.count, or 1) of kdrop's Events of
// reason in ns, by the name of the object they regard.
func kdropEventCounts(t *testing.T, ns, reason string) map[string]uint64 {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	list, err := kubernetes.NewForConfigOrDie(cfg).EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "reason=" + reason})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, e := range list.Items {
		if e.ReportingController != k8sevents.Controller {
			continue
		}
		n := uint64(1)
		if e.Series != nil {
			n = uint64(e.Series.Count)
		}
		m[e.Regarding.Name] += n
	}
	return m
}

// eventWrites are the writes of kdrop's Events the API server's watch
// showed, in order.
type eventWrites struct {
	mu     sync.Mutex
	list   []eventWrite
	closed atomic.Bool
}

type eventWrite struct {
	at     time.Time
	object string // namespace/name of the object the Event regards
}

// watchKdropEventWrites watches every Event in the cluster from now on and
// records each create or update by kdrop's agent until the test ends.
func watchKdropEventWrites(t *testing.T, cs kubernetes.Interface) *eventWrites {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	list, err := cs.EventsV1().Events("").List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	timeout := int64(3600)
	w, err := cs.EventsV1().Events("").Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion, TimeoutSeconds: &timeout})
	if err != nil {
		t.Fatal(err)
	}
	ws := &eventWrites{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			e, ok := ev.Object.(*eventsv1.Event)
			if !ok || (ev.Type != watch.Added && ev.Type != watch.Modified) || e.ReportingController != k8sevents.Controller {
				continue
			}
			ws.mu.Lock()
			ws.list = append(ws.list, eventWrite{at: time.Now(), object: e.Regarding.Namespace + "/" + e.Regarding.Name})
			ws.mu.Unlock()
		}
		ws.closed.Store(true)
	}()
	t.Cleanup(func() {
		if ws.closed.Load() {
			t.Errorf("the watch of Events ended before the test did: writes may be missing")
		}
		cancel()
		w.Stop()
		<-done
	})
	return ws
}

// between returns the writes seen from from to to.
func (ws *eventWrites) between(from, to time.Time) []eventWrite {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	var out []eventWrite
	for _, w := range ws.list {
		if !w.at.Before(from) && !w.at.After(to) {
			out = append(out, w)
		}
	}
	return out
}

// settle waits until the count of the stream's events that match stops
// moving for 3 s, and returns it.
func (s *stream) settle(t *testing.T, match func(*event) bool) uint64 {
	t.Helper()
	var n uint64
	for deadline, stable := time.Now().Add(30*time.Second), 0; stable < 3; time.Sleep(time.Second) {
		c := sum(s.since(0), match)
		if c == n {
			stable++
		} else {
			stable = 0
		}
		n = c
		if time.Now().After(deadline) {
			t.Fatalf("kdrop tail's count does not settle: %d", c)
		}
	}
	return n
}
