package main

// Kubernetes Events from a real agent into a real API server: their counts
// are the occurrences the stream showed, a storm writes no more than the
// node's budget, kubectl describe shows them, and --k8s-events=false writes
// none.

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/sinks/k8sevents"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// kdropEvents lists the Events kdrop wrote in ns, by regarding object name
// and reason, with their counts.
func kdropEvents(t *testing.T, cs kubernetes.Interface, ns string) (map[string]int, int) {
	t.Helper()
	list, err := cs.EventsV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	counts, objects := map[string]int{}, 0
	for _, e := range list.Items {
		if e.ReportingController != k8sevents.Controller {
			continue
		}
		objects++
		n := 1
		if e.Series != nil {
			n = int(e.Series.Count)
		}
		counts[e.Regarding.Name+" "+e.Reason] += n
	}
	return counts, objects
}

// apiserverRequests sums the API server's apiserver_request_total over the
// series whose labels include every one of labels (e.g. `verb="POST"`).
func apiserverRequests(t *testing.T, cs kubernetes.Interface, labels ...string) float64 {
	t.Helper()
	b, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0.0
lines:
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "apiserver_request_total{") {
			continue
		}
		for _, want := range labels {
			if !strings.Contains(l, want) {
				continue lines
			}
		}
		v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		n += v
	}
	return n
}

// eventWrites is how many Events the API server has created and patched.
func eventWrites(t *testing.T, cs kubernetes.Interface) float64 {
	return apiserverRequests(t, cs, `group="events.k8s.io"`, `verb="POST"`) + apiserverRequests(t, cs, `group="events.k8s.io"`, `verb="PATCH"`)
}

func TestAgentKubernetesEvents(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	for _, ns := range []string{"kdrop", "shop"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Pods whose IPs are addresses of one network namespace: "api" with
	// nothing listening, "images" with a listener whose accept queue fills,
	// and 20 "storm" pods.
	node := nstest.New(t, "pods")
	const api, images = "198.18.60.1", "198.18.60.2"
	createPod(t, cs, "shop", "api", api, nil)
	createPod(t, cs, "shop", "images", images, nil)
	var storm []netip.AddrPort
	for i := range 20 {
		ip := fmt.Sprintf("198.18.61.%d", i+1)
		createPod(t, cs, "shop", fmt.Sprintf("storm-%d", i), ip, nil)
		storm = append(storm, netip.AddrPortFrom(netip.MustParseAddr(ip), 7))
		node.IP(t, "addr add "+ip+"/32 dev lo")
	}
	node.IP(t, "addr add "+api+"/32 dev lo")
	node.IP(t, "addr add "+images+"/32 dev lo")

	// --k8s-events=false: drops, and no Event.
	off := startAgent(t, env.Kubeconfig(), "test-node", freeAddr(t), freeAddr(t), node.Name, "--k8s-events=false")
	node.SendUDP(t, api, 9, 5)
	time.Sleep(3 * time.Second) // three of the recorder's flushes, were it on
	if counts, n := kdropEvents(t, cs, "shop"); n != 0 {
		t.Errorf("--k8s-events=false wrote %d Events: %v", n, counts)
	}
	off.stop()

	const perMinute = 60
	startAgent(t, env.Kubeconfig(), "test-node", freeAddr(t), freeAddr(t), node.Name, "--type", "overflow", "--k8s-events-per-minute", strconv.Itoa(perMinute))
	// While the load runs (a datagram to api's closed port every 100 ms, a
	// connect every 250 ms to images, whose listener has backlog 1 and
	// never accepts): each Event's count stays within the kernel's counter
	// and trails it by no more than a series write (10 s) and a second.
	// Then, the load stopped, each equals it.
	base := node.Counters(t)
	kernel := func(name string) func() uint64 {
		return func() uint64 { return node.Counters(t)[name] - base[name] }
	}
	event := func(key string) func() uint64 {
		return func() uint64 { c, _ := kdropEvents(t, cs, "shop"); return uint64(c[key]) }
	}
	ln := node.ListenNoAccept(t, images, 8080, 1)
	defer ln.Close()
	var held []*nstest.Sockets // pending connects keep retransmitting their SYNs
	var heldMu sync.Mutex
	closeHeld := func() {
		heldMu.Lock()
		defer heldMu.Unlock()
		for _, s := range held {
			s.Close()
		}
		held = nil
	}
	defer closeHeld()
	stopUDP := nstest.Paced(t, 100*time.Millisecond, func() { node.SendUDP(t, api, 9, 1) })
	stopSYN := nstest.Paced(t, 250*time.Millisecond, func() {
		s := node.ConnectMany(t, images, 8080, 1)
		heldMu.Lock()
		held = append(held, s)
		heldMu.Unlock()
	})
	const eventLag = 11 * time.Second // one series write interval, and the flush
	var wg sync.WaitGroup
	for _, c := range []struct{ event, counter string }{{"api NothingListening", "UdpNoPorts"}, {"images ListenQueueOverflow", "TcpExtListenOverflows"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nstest.WhileRunning(t, c.event+" Event vs "+c.counter, nstest.For(16*time.Second), time.Second, eventLag, event(c.event), kernel(c.counter))
		}()
	}
	wg.Wait()
	stopUDP()
	stopSYN()
	closeHeld() // no more SYNs: the kernel's count stays put
	waitEvents := func(what string, ok func(map[string]int) bool) map[string]int {
		t.Helper()
		var counts map[string]int
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if counts, _ = kdropEvents(t, cs, "shop"); ok(counts) {
				return counts
			}
		}
		t.Fatalf("%s; kdrop's Events: %v", what, counts)
		return nil
	}
	noPorts, overflows := kernel("UdpNoPorts"), kernel("TcpExtListenOverflows")
	waitEvents(fmt.Sprintf("no NothingListening Event counting every drop on api (UdpNoPorts +%d)", noPorts()), func(c map[string]int) bool {
		return c["api NothingListening"] > 0 && uint64(c["api NothingListening"]) == noPorts()
	})
	waitEvents(fmt.Sprintf("no ListenQueueOverflow Event counting the kernel's overflows on images (TcpExtListenOverflows +%d)", overflows()), func(c map[string]int) bool {
		return c["images ListenQueueOverflow"] > 0 && uint64(c["images ListenQueueOverflow"]) == overflows()
	})
	t.Logf("after the load: NothingListening %d = UdpNoPorts +%d, ListenQueueOverflow %d = TcpExtListenOverflows +%d",
		event("api NothingListening")(), noPorts(), event("images ListenQueueOverflow")(), overflows())
	out := env.Kubectl(t, "-n", "shop", "describe", "pod", "api")
	if !strings.Contains(out, "NothingListening") || !strings.Contains(out, fmt.Sprintf("x%d over", noPorts())) || !strings.Contains(out, k8sevents.Controller) {
		t.Errorf("kubectl describe pod api does not show kdrop's Event:\n%s", out)
	}
	if out := env.Kubectl(t, "-n", "shop", "events", "--for", "pod/images"); !strings.Contains(out, "ListenQueueOverflow") || !strings.Contains(out, "accept queue of :8080 full") {
		t.Errorf("kubectl events --for pod/images does not show kdrop's Event:\n%s", out)
	}
	if out := env.Kubectl(t, "-n", "shop", "get", "events", "--field-selector", "reason=ListenQueueOverflow", "-o", "name"); strings.Count(out, "\n") != 1 {
		t.Errorf("kubectl get events --field-selector reason=ListenQueueOverflow: want one Event series, got:\n%s", out)
	}

	// A 10 s storm on 20 pods: the node writes no more than its budget
	// (burst perMinute/6, then perMinute a minute), and once the storm is
	// over every series catches up with the drops it folded.
	total := func(c map[string]int) (n uint64) {
		for k, v := range c {
			if strings.HasPrefix(k, "storm-") {
				n += uint64(v)
			}
		}
		return n
	}
	// While it runs, every second: the writes within the budget so far, and
	// the storm pods' Events within the kernel's count of their drops.
	before, start := eventWrites(t, cs), time.Now()
	stormBase := node.Counters(t)["UdpNoPorts"]
	budget := func() float64 { return float64(perMinute/6) + perMinute*time.Since(start).Minutes() + 1 }
	stop := node.FloodTo(t, storm)
	for time.Since(start) < 10*time.Second {
		time.Sleep(time.Second)
		c, _ := kdropEvents(t, cs, "shop")
		w := eventWrites(t, cs) - before
		if b := budget(); w > b {
			t.Errorf("t+%v of a storm on 20 pods: %.0f Event writes, budget so far %.0f", time.Since(start).Round(time.Millisecond), w, b)
		}
		if k := node.Counters(t)["UdpNoPorts"] - stormBase; total(c) > k {
			t.Errorf("t+%v of a storm on 20 pods: their Events count %d, the kernel's UdpNoPorts +%d", time.Since(start).Round(time.Millisecond), total(c), k)
		}
	}
	sent := stop()
	if w := eventWrites(t, cs) - before; w > budget() {
		t.Errorf("a 10 s storm on 20 pods: %.0f Event writes, budget %.0f", w, budget())
	} else {
		t.Logf("a 10 s storm of %d drops on 20 pods: %.0f Event writes (budget %.0f)", sent, w, budget())
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		c, objects := kdropEvents(t, cs, "shop")
		if total(c) == sent && objects == 22 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the storm, the storm pods' Events count %d of %d drops in %d Events (want 20 + api + images)", total(c), sent, objects)
		}
	}
}
