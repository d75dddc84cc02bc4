package line

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

func TestDescribe(t *testing.T) {
	for _, c := range []struct {
		e    k8s.Endpoint
		want string
	}{
		{k8s.Endpoint{Kind: k8s.KindPod, Namespace: "web", Name: "nginx-7d9f"}, "web/nginx-7d9f"},
		{k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "cart", ReadyEndpoints: 2}, "svc shop/cart"},
		{k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "cart"}, "svc shop/cart (no ready endpoints)"},
		{k8s.Endpoint{Kind: k8s.KindNode, Name: "n1"}, "node n1"},
		{k8s.Endpoint{Kind: k8s.KindPod, Namespace: "web", Name: "api-5c8", DeletedAgo: 1234 * time.Millisecond}, "deleted web/api-5c8 1.2s ago"},
		{k8s.Endpoint{Kind: k8s.KindPod, Namespace: "web", Name: "api-new", Previous: []k8s.Endpoint{{Namespace: "web", Name: "api-old", DeletedAgo: 3 * time.Second}}},
			"web/api-new, was web/api-old until 3s ago"},
		{k8s.Endpoint{Unresolved: true}, "?"},
		{k8s.Endpoint{}, ""},
	} {
		if got := Describe(&c.e); got != c.want {
			t.Errorf("Describe(%+v) = %q, want %q", c.e, got, c.want)
		}
	}
	ev := &Event{Event: tracer.Event{Type: tracer.Unreachable, Count: 1, Family: 4, ICMPType: 3, ICMPCode: 1},
		SrcK8s: &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "web", Name: "client"},
		DstK8s: &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "web", Name: "api-5c8", DeletedAgo: 1200 * time.Millisecond}}
	row := ev.TableRow()
	if !strings.Contains(row, "src=web/client dst=deleted web/api-5c8 1.2s ago") || !strings.Contains(row, "host-unreachable") {
		t.Errorf("table row: %s", row)
	}
}

// The RULE column: a named rule, candidates, conntrack's own drop, an
// INVALID packet's rule with conntrack's cause, unknown.
func TestRuleColumn(t *testing.T) {
	for i, want := range []string{`filter/INPUT#3 REJECT tcp-reset "block "web" é"`, "2 rules?",
		"kube-proxy/filter-input#41 DROP: Service shop/web:http has no local endpoints (externalTrafficPolicy: Local)",
		`filter/KUBE-POD-FW-2XVJKPRIPIRU222C#88 REJECT icmp-port-unreachable "rule to REJECT traffic destined…": NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5432 from shop/api-1 (kube-router's rule agrees)`,
		`filter/KUBE-POD-FW-4FKNNDUFH5QLYXG2#91 REJECT icmp-port-unreachable "rule to REJECT traffic destined…": kube-router rejects it: NetworkPolicy shop/db-egress isolates shop/db-0 for egress and does not allow it; kdrop's evaluation of the NetworkPolicies disagrees: NetworkPolicy shop/lockdown isolates shop/db-0 for egress and does not allow TCP 8080 to shop/web-1`,
		"conntrack: insert failed (NAT port clash)",
		"conntrack: invalid state; filter/KUBE-FORWARD#5 DROP: invalid conntrack state (kube-proxy drops packets conntrack calls INVALID)",
		"unknown: network namespace gone"} {
		var withRules []Event
		for _, e := range goldenEvents() {
			if e.Rule != nil || e.Conntrack != nil {
				withRules = append(withRules, e)
			}
		}
		e := withRules[i]
		row := e.TableRow()
		if !strings.HasSuffix(row, " "+want) {
			t.Errorf("row %d: want it to end with %q:\n%s\n%s", i, want, TableHeader, row)
		}
		if got, col := strings.Index(row, want), strings.Index(TableHeader, "RULE"); got != col {
			t.Errorf("row %d: rule at column %d, header's RULE at %d", i, got, col)
		}
	}
}

// A probe connection's rows end with what the kubelet got.
func TestProbeRow(t *testing.T) {
	var probes []Event
	for _, e := range goldenEvents() {
		if e.Probe != nil {
			probes = append(probes, e)
		}
	}
	for i, want := range []string{"probe: liveness and readiness probes of shop/web-7d9f8c-x2x4q on :8080 got NO_SOCKET",
		"probe: startup probe of shop/web-7d9f8c-x2x4q on :9090 got host-unreachable"} {
		for _, row := range []string{probes[i].TableRow(), probes[i].ClusterRow()} {
			if !strings.HasSuffix(row, "  "+want) {
				t.Errorf("probe row %d: want it to end with %q:\n%s", i, want, row)
			}
		}
	}
	// The pod's SYN-ACK on its way back names the pod at its source.
	e := Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, TCPFlags: 0x12,
		Src: netip.MustParseAddrPort("10.244.0.9:8080"), Dst: netip.MustParseAddrPort("10.244.0.1:51234")},
		SrcK8s: &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "api"}, Probe: &k8s.Probe{Port: 8080, Kinds: k8s.ProbeReadiness}}
	if got, want := e.ProbeText(), "readiness probe of shop/api on :8080 got NETFILTER_DROP"; got != want {
		t.Errorf("ProbeText = %q, want %q", got, want)
	}
	if (&Event{}).ProbeText() != "" {
		t.Error("ProbeText of an event without a probe is not empty")
	}
}
