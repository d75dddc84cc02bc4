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

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
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

// kdrop_netfilter_drops_total: by the kind of rule (backend, verdict), its
// Kubernetes meaning ("none" without one) and the namespace of its Service
// or NetworkPolicy, else the pod's; never by rule handle, comment or
// Service port.
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
		return &netfilter.Rule{Backend: netfilter.BackendNftables, Ref: netfilter.Ref{Table: "filter", Chain: "KUBE-SERVICES", Handle: 7, Verdict: "REJECT icmp-port-unreachable"},
			K8s: &netfilter.Meaning{Kind: netfilter.MeaningNoEndpoints, Service: svc}}
	}
	drop(noEP("shop/cart:http"), nil, 3)
	drop(noEP("shop/web:8080"), nil, 2)
	drop(&netfilter.Rule{Backend: netfilter.BackendNftables, Unknown: "no drop rule's counter moved", K8s: &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy,
		NetworkPolicies: []netfilter.PolicyRef{{Namespace: "db", Name: "deny"}}}}, nil, 1)
	drop(&netfilter.Rule{Backend: netfilter.BackendNftables, Ref: netfilter.Ref{Table: "filter", Chain: "INPUT", Handle: 3, Comment: "a1 udp drop", Verdict: "DROP"}}, pod, 4)
	drop(&netfilter.Rule{Backend: netfilter.BackendNftables, Ref: netfilter.Ref{Table: "filter", Chain: "INPUT", Handle: 9, Comment: "nth drop", Verdict: "DROP"}}, pod, 2)
	drop(&netfilter.Rule{Backend: netfilter.BackendLegacy, Ref: netfilter.Ref{Table: "filter", Chain: "INPUT", Position: 2, Verdict: "REJECT tcp-reset"}}, pod, 6)
	drop(&netfilter.Rule{Backend: netfilter.BackendNftables + "," + netfilter.BackendLegacy, Candidates: []netfilter.Ref{
		{Table: "filter", Chain: "INPUT", Handle: 1, Verdict: "DROP"}, {Table: "filter", Chain: "INPUT", Position: 1, Verdict: "DROP (policy)"}}}, pod, 7)
	drop(nil, pod, 5) // not attributed (--rules=false): not counted here
	wantSeries(t, reg, "kdrop_netfilter_drops_total",
		`kdrop_netfilter_drops_total{backend="nftables",meaning="no-endpoints",namespace="shop",verdict="reject"} 5`,
		`kdrop_netfilter_drops_total{backend="unknown",meaning="network-policy",namespace="db",verdict="unknown"} 1`,
		`kdrop_netfilter_drops_total{backend="nftables",meaning="none",namespace="db",verdict="drop"} 6`, // two rules, one series
		`kdrop_netfilter_drops_total{backend="iptables-legacy",meaning="none",namespace="db",verdict="reject"} 6`,
		`kdrop_netfilter_drops_total{backend="mixed",meaning="none",namespace="db",verdict="mixed"} 7`)
	// never by rule: no label value names a chain, handle, comment or port
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kdrop_netfilter_drops_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				for _, never := range []string{"a1 udp drop", "nth drop", "INPUT", "KUBE-SERVICES", "http"} {
					if strings.Contains(l.GetValue(), never) {
						t.Errorf("a rule's %q is a label: %s=%q", never, l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
}

// wantSeries scrapes reg and checks that metric has exactly the series
// want (other metrics' lines in want must be there too).
func wantSeries(t *testing.T, reg *prometheus.Registry, metric string, want ...string) {
	t.Helper()
	rr := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rr, httptest.NewRequest("GET", "/metrics", nil))
	text := rr.Body.String()
	n := 0
	for _, w := range want {
		if !strings.Contains(text, w+"\n") {
			t.Errorf("metrics lack %s:\n%s", w, text)
		}
		if strings.HasPrefix(w, metric+"{") {
			n++
		}
	}
	if got := strings.Count(text, metric+"{"); got != n {
		t.Errorf("%d series of %s, want %d", got, metric, n)
	}
}

// kdrop_conntrack_drops_total: by conntrack's cause and the pod's
// namespace; an INVALID packet's drop counts here and, by its rule, in
// kdrop_netfilter_drops_total.
func TestConntrackDrops(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewAgent(reg, Sources{})
	pod := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "dns", Name: "coredns-1"}
	drop := func(c *conntrack.Drop, r *netfilter.Rule, n uint64) {
		e := &line.Event{DstK8s: pod, Rule: r, Conntrack: c}
		e.Type, e.Reason, e.Count = tracer.Drop, "NETFILTER_DROP", n
		m.Observe(e)
	}
	drop(&conntrack.Drop{Cause: conntrack.CauseInsertFailed, Count: 2, Max: 262144}, nil, 3)
	drop(&conntrack.Drop{Cause: conntrack.CauseInsertFailed}, nil, 1)
	drop(&conntrack.Drop{Cause: conntrack.CauseTableFull, Count: 64, Max: 64}, nil, 7)
	drop(&conntrack.Drop{Cause: conntrack.CauseInvalid}, &netfilter.Rule{Ref: netfilter.Ref{Table: "filter", Chain: "KUBE-FORWARD", Handle: 5},
		K8s: &netfilter.Meaning{Kind: netfilter.MeaningInvalidConntrack}}, 2)
	drop(nil, &netfilter.Rule{Ref: netfilter.Ref{Table: "filter", Chain: "INPUT", Handle: 3}}, 4) // a rule's alone
	wantSeries(t, reg, "kdrop_conntrack_drops_total",
		`kdrop_conntrack_drops_total{cause="insert-failed",namespace="dns"} 4`,
		`kdrop_conntrack_drops_total{cause="table-full",namespace="dns"} 7`,
		`kdrop_conntrack_drops_total{cause="invalid",namespace="dns"} 2`,
		`kdrop_netfilter_drops_total{backend="unknown",meaning="invalid-conntrack",namespace="dns",verdict="unknown"} 2`)
}

// Naming netfilter rules shows its failures: a real Attributor asked about
// a namespace that does not exist reads, fails, and gives the drop out
// unknown; the three counters say so.
func TestNetfilterRuleReadMetrics(t *testing.T) {
	emitted := make(chan *netfilter.Rule, 1)
	a := netfilter.New(netfilter.Config{Interval: 10 * time.Millisecond, Baseline: -1,
		NetnsPaths: func() map[uint32]string { return map[uint32]string{} }},
		func(_ *tracer.Event, r *netfilter.Rule, _ *conntrack.Drop) { emitted <- r })
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
