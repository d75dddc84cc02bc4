package metrics

import (
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

func TestLossMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewAgent(reg, Sources{})
	var st tracer.Stats
	st.LostLines[tracer.Drop], st.Missed, st.Coarsened = 3, 7, 2
	m.AddLoss(st)
	st = tracer.Stats{}
	st.LostLines[tracer.Unreachable] = 1
	m.AddLoss(st)
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	text := rr.Body.String()
	for _, want := range []string{
		"kdrop_lost_lines_total 4", "kdrop_missed_total 7", "kdrop_coarsened_total 2",
		"# TYPE kdrop_lost_lines_total counter", "# TYPE kdrop_missed_total counter", "# TYPE kdrop_coarsened_total counter",
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	help := map[string]string{}
	for _, l := range strings.Split(text, "\n") {
		if f := strings.SplitN(l, " ", 4); len(f) == 4 && f[1] == "HELP" {
			help[f[2]] = f[3]
		}
	}
	if h := help["kdrop_missed_total"]; !strings.Contains(h, "kdrop_events_total is short by up to this much") || strings.Contains(h, "exact") {
		t.Errorf("kdrop_missed_total's help should say counts are short: %q", h)
	}
	for _, name := range []string{"kdrop_lost_lines_total", "kdrop_coarsened_total"} {
		if h := help[name]; !strings.Contains(h, "kdrop_events_total stays exact") {
			t.Errorf("%s's help should say counts stay exact: %q", name, h)
		}
	}
	if strings.Contains(text, "kdrop_lost_events_total") {
		t.Error("the old metric kdrop_lost_events_total is still there")
	}
	lint := exec.Command("promtool", "check", "metrics")
	lint.Stdin = strings.NewReader(text)
	if out, err := lint.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// kdrop_events_total's namespace and workload: the pod where the kernel
// acted, else the destination pod, else the destination Service.
func TestObserveLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewAgent(reg, Sources{})
	node := &k8s.Endpoint{Kind: k8s.KindNode, Name: "node-a"}
	listener := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "api-1", WorkloadKind: "Deployment", WorkloadName: "api"}
	deleted := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "web", Name: "api-5c8-x7k2p", WorkloadKind: "Deployment", WorkloadName: "api", DeletedAgo: time.Second}
	svc := &k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "cart"}
	ev := func(typ tracer.EventType, where, dst *k8s.Endpoint) *line.Event {
		e := &line.Event{WhereK8s: where, DstK8s: dst}
		e.Type, e.Count = typ, 2
		switch typ {
		case tracer.ListenOverflow:
			e.Queue = tracer.QueueAccept
		case tracer.Unreachable:
			e.Family, e.ICMPType, e.ICMPCode = 4, 3, 1
		case tracer.Drop:
			e.Reason = "NETFILTER_DROP"
		}
		return e
	}
	m.Observe(ev(tracer.ListenOverflow, listener, nil))
	m.Observe(ev(tracer.Unreachable, node, deleted))
	m.Observe(ev(tracer.Drop, node, svc))
	m.Observe(ev(tracer.Drop, nil, &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "ns", Name: "bare"}))
	m.Observe(ev(tracer.Drop, node, nil))
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`kdrop_events_total{namespace="shop",reason="accept-queue",type="overflow",workload="Deployment/api"} 2`,
		`kdrop_events_total{namespace="web",reason="host-unreachable",type="unreach",workload="Deployment/api"} 2`,
		`kdrop_events_total{namespace="shop",reason="NETFILTER_DROP",type="drop",workload="Service/cart"} 2`,
		`kdrop_events_total{namespace="ns",reason="NETFILTER_DROP",type="drop",workload=""} 2`,
		`kdrop_events_total{namespace="",reason="NETFILTER_DROP",type="drop",workload=""} 2`,
	} {
		if !strings.Contains(rr.Body.String(), want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, rr.Body.String())
		}
	}
}

// kdrop_netfilter_drops_total: by the rule's Kubernetes meaning ("none"
// without one) and the namespace of its Service or NetworkPolicy, else the
// pod's; never by rule handle or Service port.
func TestNetfilterDrops(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewAgent(reg, Sources{})
	drop := func(r *netfilter.Rule, dst *k8s.Endpoint, n uint64) {
		e := &line.Event{DstK8s: dst, Rule: r}
		e.Type, e.Reason, e.Count = tracer.Drop, "NETFILTER_DROP", n
		m.Observe(e)
	}
	pod := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "db", Name: "pg-0"}
	noEP := func(svc string) *netfilter.Rule {
		return &netfilter.Rule{Ref: netfilter.Ref{Table: "filter", Chain: "KUBE-SERVICES", Handle: 7},
			K8s: &netfilter.Meaning{Kind: netfilter.MeaningNoEndpoints, Service: svc}}
	}
	drop(noEP("shop/cart:http"), nil, 3)
	drop(noEP("shop/web:8080"), nil, 2)
	drop(&netfilter.Rule{K8s: &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy,
		NetworkPolicies: []netfilter.PolicyRef{{Namespace: "db", Name: "deny"}}}}, nil, 1)
	drop(&netfilter.Rule{Ref: netfilter.Ref{Table: "filter", Chain: "INPUT", Handle: 3}}, pod, 4)
	drop(nil, pod, 5) // not attributed (--rules=false): not counted here
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	text := rr.Body.String()
	for _, want := range []string{
		`kdrop_netfilter_drops_total{meaning="no-endpoints",namespace="shop"} 5`,
		`kdrop_netfilter_drops_total{meaning="network-policy",namespace="db"} 1`,
		`kdrop_netfilter_drops_total{meaning="none",namespace="db"} 4`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, text)
		}
	}
	if n := strings.Count(text, "kdrop_netfilter_drops_total{"); n != 3 {
		t.Errorf("%d series of kdrop_netfilter_drops_total, want 3", n)
	}
}

// Naming netfilter rules shows its failures: a real Attributor asked about
// a namespace that does not exist reads, fails, and gives the drop out
// unknown; the three counters say so.
func TestNetfilterRuleReadMetrics(t *testing.T) {
	emitted := make(chan *netfilter.Rule, 1)
	a := netfilter.New(netfilter.Config{Interval: 10 * time.Millisecond, Baseline: -1,
		NetnsPaths: func() map[uint32]string { return map[uint32]string{} }},
		func(_ *tracer.Event, r *netfilter.Rule) { emitted <- r })
	defer a.Close()
	reg := prometheus.NewRegistry()
	NewAgent(reg, Sources{Rules: a.Stats})
	ev := tracer.Event{Time: time.Now(), Type: tracer.Drop, Count: 1, Netns: 4026599999, Reason: "NETFILTER_DROP"}
	if r := a.Submit(&ev, ev); r != nil {
		t.Fatalf("not held: %+v", r)
	}
	select {
	case r := <-emitted:
		if r.Known() {
			t.Fatalf("a namespace that does not exist: %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the drop did not come out within 5 s")
	}
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	text := rr.Body.String()
	st := a.Stats()
	if st.Reads == 0 || st.ReadErrors == 0 || st.Unknown != 1 {
		t.Errorf("stats: %+v", st)
	}
	for _, want := range []string{
		"kdrop_netfilter_rule_reads_total " + strconv.FormatUint(st.Reads, 10),
		"kdrop_netfilter_rule_read_errors_total " + strconv.FormatUint(st.ReadErrors, 10),
		"kdrop_netfilter_rule_unknown_total 1",
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
}
