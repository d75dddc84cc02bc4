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
	// NothingListening on api: the count is the drops.
	const udp = 25
	node.SendUDP(t, api, 9, udp)
	// ListenQueueOverflow on images: backlog 1, 8 connections.
	ln := node.ListenNoAccept(t, images, 8080, 1)
	defer ln.Close()
	conns := node.ConnectMany(t, images, 8080, 8)
	time.Sleep(1500 * time.Millisecond) // the SYNs and a first retransmission
	conns.Close()                       // no more SYNs: the kernel's count stays put
	overflows := func() uint64 { return node.Counters(t)["TcpExtListenOverflows"] }
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
	waitEvents("no NothingListening Event counting every drop on api", func(c map[string]int) bool {
		return c["api NothingListening"] == udp
	})
	waitEvents(fmt.Sprintf("no ListenQueueOverflow Event counting the kernel's overflows on images (TcpExtListenOverflows %d)", overflows()), func(c map[string]int) bool {
		return c["images ListenQueueOverflow"] > 0 && uint64(c["images ListenQueueOverflow"]) == overflows()
	})
	out := env.Kubectl(t, "-n", "shop", "describe", "pod", "api")
	if !strings.Contains(out, "NothingListening") || !strings.Contains(out, "x25 over") || !strings.Contains(out, k8sevents.Controller) {
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
	before, start := eventWrites(t, cs), time.Now()
	stop := node.FloodTo(t, storm)
	time.Sleep(10 * time.Second)
	sent := stop()
	budget := float64(perMinute/6) + perMinute*time.Since(start).Minutes() + 1
	if w := eventWrites(t, cs) - before; w > budget {
		t.Errorf("a 10 s storm on 20 pods: %.0f Event writes, budget %.0f", w, budget)
	} else {
		t.Logf("a 10 s storm of %d drops on 20 pods: %.0f Event writes (budget %.0f)", sent, w, budget)
	}
	total := func(c map[string]int) (n uint64) {
		for k, v := range c {
			if strings.HasPrefix(k, "storm-") {
				n += uint64(v)
			}
		}
		return n
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
