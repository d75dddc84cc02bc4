package k8sevents

// Against a real API server (k8s/testenv) and a real k8s.Resolver: an
// Event of a drop by kube-proxy's rule lands on the Service the rule
// names, by its UID, with the occurrences as its count.

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer"
)

func TestEventOnTheRulesService(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What kube-proxy's rule is for: a NodePort Service with
	// externalTrafficPolicy: Local, and a LoadBalancer with source ranges.
	port := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}
	web, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{port}, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{port}, LoadBalancerSourceRanges: []string{"203.0.113.0/24"}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := k8s.New(k8s.Config{REST: env.Config(), Node: "node-a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	res.Start(rctx)
	if !res.WaitForSync(ctx) {
		t.Fatal("the resolver did not sync")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, a := res.LookupService("shop", "web")
		_, b := res.LookupService("shop", "lb")
		if a && b {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the resolver does not hold Services shop/web and shop/lb")
		}
	}

	rec := New(cs, Config{Node: "node-a", Services: res, MinInterval: time.Millisecond})
	nodePort := netip.AddrPortFrom(netip.MustParseAddr("10.250.0.2"), uint16(web.Spec.Ports[0].NodePort))
	drop := func(kind, service string, dst netip.AddrPort, count uint64) *line.Event {
		return &line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, Count: count,
			Src: netip.MustParseAddrPort("198.51.100.7:40000"), Dst: dst, Time: time.Now()},
			DstK8s: &k8s.Endpoint{Kind: k8s.KindNode, Name: "node-a"}, WhereK8s: &k8s.Endpoint{Kind: k8s.KindNode, Name: "node-a"},
			Rule: &netfilter.Rule{K8s: &netfilter.Meaning{Kind: kind, Engine: "kube-proxy", Service: service, Text: "x"}}}
	}
	// A line, then a summary of 40 more; a rule naming a Service nobody
	// has, whose drops are no finding.
	rec.Observe(drop(netfilter.MeaningNoLocalEndpoints, "shop/web:http", nodePort, 1))
	rec.Observe(drop(netfilter.MeaningNoLocalEndpoints, "shop/web:http", nodePort, 40))
	rec.Observe(drop(netfilter.MeaningSourceRange, "shop/lb:http", netip.MustParseAddrPort("192.0.2.100:80"), 3))
	rec.Observe(drop(netfilter.MeaningNoLocalEndpoints, "shop/gone:http", nodePort, 5))
	rec.Flush(ctx)

	list, err := cs.EventsV1().Events("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		uid    string
		reason string
		count  int32
	}{"web": {string(web.UID), ReasonNoLocalEndpoints, 41}, "lb": {string(lb.UID), ReasonSourceRange, 3}}
	for _, e := range list.Items {
		w, ok := want[e.Regarding.Name]
		if !ok {
			t.Errorf("an Event on %s %s: %s", e.Regarding.Kind, e.Regarding.Name, e.Note)
			continue
		}
		delete(want, e.Regarding.Name)
		if e.Regarding.Kind != "Service" || e.Regarding.APIVersion != "v1" || e.Regarding.Namespace != "shop" || string(e.Regarding.UID) != w.uid ||
			e.Reason != w.reason || e.Series == nil || e.Series.Count != w.count || e.ReportingController != Controller {
			t.Errorf("Event on %s: %+v; want Service shop/%s uid %s, %s x%d", e.Regarding.Name, e, e.Regarding.Name, w.uid, w.reason, w.count)
		}
	}
	for name, w := range want {
		t.Errorf("no %s Event on Service shop/%s", w.reason, name)
	}
	// As an operator reads it.
	out := env.Kubectl(t, "-n", "shop", "describe", "service", "web")
	for _, s := range []string{"NoLocalEndpoints", "x41 over", "externalTrafficPolicy: Local and no ready endpoint on node node-a", "healthCheckNodePort"} {
		if !strings.Contains(out, s) {
			t.Errorf("kubectl describe service web does not show %q:\n%s", s, out)
		}
	}
}

// Writes that fail for good do not use up the node's budget: 30 series on
// pods of namespaces that do not exist are each tried once and dropped
// (their occurrences counted as unrecorded), and a finding on a pod of a
// namespace that exists, coming after them, gets its Event within the
// node's budget. A pod whose name is near the limit gets one too: the
// Event's name is cut to a valid one.
func TestFailedWritesDoNotStarve(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := New(cs, Config{Node: "node-a", MinInterval: 2 * time.Second})
	nothing := func(ns, name string, n uint64) *line.Event {
		return &line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x02, Count: n, Time: time.Now(),
			Src: netip.MustParseAddrPort("10.244.0.5:40000"), Dst: netip.MustParseAddrPort("10.244.0.9:8081")},
			DstK8s: &k8s.Endpoint{Kind: k8s.KindPod, Namespace: ns, Name: name, UID: "uid-" + ns + "-" + name}}
	}
	for i := range 30 {
		rec.Observe(nothing(fmt.Sprintf("gone-%d", i), "api", 2))
	}
	long := strings.Repeat("a", 245) + "-api"
	start := time.Now()
	var real, longDone time.Duration
	for time.Since(start) < 25*time.Second && (real <= 0 || longDone == 0 || rec.Failed.Load() < 30) {
		if time.Since(start) >= 3*time.Second && real == 0 {
			rec.Observe(nothing("shop", "api", 1))
			rec.Observe(nothing("shop", long, 1))
			real = -1
		}
		// The dead series' occurrences keep coming: not written again.
		rec.Observe(nothing("gone-0", "api", 1))
		rec.Flush(ctx)
		if real < 0 || longDone == 0 {
			list, err := cs.EventsV1().Events("shop").List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range list.Items {
				switch e.Regarding.Name {
				case "api":
					if real < 0 {
						real = time.Since(start)
					}
				case long:
					if longDone == 0 {
						longDone = time.Since(start)
						if len(e.Name) > 253 || !strings.HasPrefix(e.Name, strings.Repeat("a", 200)) {
							t.Errorf("Event name %q", e.Name)
						}
					}
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The node's budget: Burst(60) at once, then one a second. The 30
	// dead series are each tried once, the 2 real ones come after 3 s,
	// so both are written by 30+2-Burst seconds at worst (and a second
	// for the Flush and the List).
	budget := time.Duration(30+2-Burst(DefaultPerMinute)+1) * time.Second
	t.Logf("real Event after %v, long-named after %v; writes %d, failed %d, unrecorded %d", real, longDone, rec.Writes.Load(), rec.Failed.Load(), rec.Unrecorded.Load())
	if real <= 0 || real > budget || longDone <= 0 || longDone > budget {
		t.Errorf("the Events on shop/api and shop/%s... not written within the budget (%v): after %v and %v", long[:10], budget, real, longDone)
	}
	for range 15 { // 3 s more: no dead series is tried again
		rec.Observe(nothing("gone-1", "api", 1))
		rec.Flush(ctx)
		time.Sleep(200 * time.Millisecond)
	}
	if f := rec.Failed.Load(); f != 30 {
		t.Errorf("%d failed writes, want 30: each dead series tried once", f)
	}
	// Each dead series' 2 occurrences, and gone-0's later ones.
	if u := rec.Unrecorded.Load(); u < 60+10 { // 200 ms a loop, 14 s at least
		t.Errorf("%d occurrences unrecorded, want at least 70", u)
	}
	rec.mu.Lock()
	n := len(rec.series)
	rec.mu.Unlock()
	if n != 2 {
		t.Errorf("%d series held, want the 2 real ones", n)
	}
}

// A write that fails for a while (the API server down) is retried with a
// backoff, not at every Flush, and lands once the API server is back,
// with every occurrence in its count.
func TestTransientFailureBacksOff(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := t.Context()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec := New(cs, Config{Node: "node-a", MinInterval: 100 * time.Millisecond})
	syn := &line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x02, Count: 3, Time: time.Now(),
		Dst: netip.MustParseAddrPort("10.244.0.9:8081")}, DstK8s: &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "api", UID: "uid-api"}}
	env.StopAPIServer(t)
	rec.Observe(syn)
	// 7 s of a Flush every 100 ms: tries at 0, 2 and 6 s (backoff 2 s, 4 s).
	for start := time.Now(); time.Since(start) < 7*time.Second; time.Sleep(100 * time.Millisecond) {
		rec.Flush(ctx)
	}
	if f := rec.Failed.Load(); f < 2 || f > 4 || rec.Writes.Load() != 0 {
		t.Errorf("API server down for 7 s: %d failed writes, %d written; want 3 tries (backoff), none written", f, rec.Writes.Load())
	}
	env.StartAPIServer(t)
	rec.Observe(syn)
	deadline := time.Now().Add(20 * time.Second) // the next try: 8 s after the last
	for ; rec.Writes.Load() == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		rec.Flush(ctx)
	}
	list, err := cs.EventsV1().Events("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Series == nil || list.Items[0].Series.Count != 6 || rec.Unrecorded.Load() != 0 {
		t.Fatalf("after the API server came back: %d Events (%+v), %d unrecorded; want one NothingListening x6", len(list.Items), list.Items, rec.Unrecorded.Load())
	}
	t.Logf("failed %d, written %d", rec.Failed.Load(), rec.Writes.Load())
}
