package k8sevents

// Against a real API server (k8s/testenv) and a real k8s.Resolver: an
// Event of a drop by kube-proxy's rule lands on the Service the rule
// names, by its UID, with the occurrences as its count.

import (
	"context"
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
