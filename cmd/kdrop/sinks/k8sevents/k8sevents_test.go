package k8sevents

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"k8s.io/apimachinery/pkg/util/validation"
	"maps"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// Which events are findings, about which object, and what their notes say.
func TestClassify(t *testing.T) {
	pod := func(name string) *k8s.Endpoint {
		return &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: name, UID: "uid-" + name}
	}
	deleted := pod("api-old")
	deleted.DeletedAgo = 36 * time.Second
	svc := &k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "cart", UID: "uid-cart", ReadyEndpoints: 0}
	backed := &k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "web", UID: "uid-web", ReadyEndpoints: 2}
	lb := &k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "lb", UID: "uid-lb", ReadyEndpoints: 1}
	// Drops by kube-proxy's rules, which name the Service: to the node's
	// address, or a load balancer's.
	nodeIP := netip.MustParseAddrPort("10.250.0.2:30080")
	node := &k8s.Endpoint{Kind: k8s.KindNode, Name: "node-a", Node: "node-a"}
	kp := func(kind, service, text string, proto uint8, dst netip.AddrPort, dstK8s *k8s.Endpoint) line.Event {
		return line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: proto, Src: netip.MustParseAddrPort("198.51.100.7:40000"), Dst: dst},
			Node: "node-b", DstK8s: dstK8s, WhereK8s: node, Rule: &netfilter.Rule{K8s: &netfilter.Meaning{Kind: kind, Engine: "kube-proxy", Service: service, Text: text}}}
	}
	// The same drops in another network namespace than the node's: a
	// pod's (a cluster nested in it), or one identity does not know.
	elsewhere := func(ev line.Event, where *k8s.Endpoint) line.Event { ev.WhereK8s = where; return ev }
	terminating := pod("api")
	terminating.Terminating = true // deleted, within its grace period
	hostPod := pod("node-exporter")
	hostPod.HostNetwork = true
	dst := netip.MustParseAddrPort("10.244.0.9:8080")
	for _, c := range []struct {
		name         string
		ev           line.Event
		object, kind string
		reason, note string
	}{
		{"overflow in the listener's netns", line.Event{Event: tracer.Event{Type: tracer.ListenOverflow, Queue: tracer.QueueAccept, Dst: dst, QueueLen: 129, QueueMax: 128, Somaxconn: 128}, WhereK8s: pod("images")},
			"images", "Pod", ReasonListenOverflow, "connections refused: accept queue of :8080 full (129/128, net.core.somaxconn=128) (seen by kdrop)"},
		{"overflow named by its address", line.Event{Event: tracer.Event{Type: tracer.ListenOverflow, Queue: tracer.QueueAccept, Dst: dst, QueueLen: 2, QueueMax: 1}, DstK8s: pod("images")},
			"images", "Pod", ReasonListenOverflow, "connections refused: accept queue of :8080 full (2/1) (seen by kdrop)"},
		{"host-unreachable to a deleted pod", line.Event{Event: tracer.Event{Type: tracer.Unreachable, Family: 4, ICMPType: 3, ICMPCode: 1, Dst: dst}, SrcK8s: pod("client"), DstK8s: deleted},
			"client", "Pod", ReasonDeletedPod, "packets to a deleted pod: to 10.244.0.9:8080, which was pod shop/api-old, deleted 36s before; the kernel answered host-unreachable (seen by kdrop)"},
		{"REJECT of a Service without endpoints", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, Dst: netip.MustParseAddrPort("10.96.0.12:80")}, DstK8s: svc, WhereK8s: node},
			"cart", "Service", ReasonNoEndpoints, "connections rejected: to tcp 10.96.0.12:80, dropped by a firewall rule while the Service has no ready endpoints (kube-proxy rejects them) (seen by kdrop)"},
		{"NO_SOCKET on a pod", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 17, Dst: dst}, DstK8s: pod("api")},
			"api", "Pod", ReasonNothingListening, "packets dropped: nothing listens on udp port 8080 of 10.244.0.9 (NO_SOCKET) (seen by kdrop)"},
		{"a NetworkPolicy isolates the destination", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, Dst: dst},
			SrcK8s: pod("client"), DstK8s: pod("db"), Rule: &netfilter.Rule{Unknown: "no drop rule's counter moved and none matches", K8s: &netfilter.Meaning{
				Kind: netfilter.MeaningNetworkPolicy, Direction: "ingress", NetworkPolicies: []netfilter.PolicyRef{{Namespace: "shop", Name: "db-ingress"}},
				Text: "NetworkPolicy shop/db-ingress isolates shop/db for ingress; none allows TCP 8080 from shop/client"}}},
			"db", "Pod", ReasonPolicyDenied, "packets denied by NetworkPolicy: NetworkPolicy shop/db-ingress isolates shop/db for ingress; none allows TCP 8080 from shop/client (seen by kdrop)"},
		{"a NetworkPolicy isolates the source", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, Dst: dst},
			SrcK8s: pod("client"), DstK8s: pod("db"), Rule: &netfilter.Rule{K8s: &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy, Direction: "egress", Text: "x"}}},
			"client", "Pod", ReasonPolicyDenied, "packets denied by NetworkPolicy: x (seen by kdrop)"},
		{"a liveness probe on a port nothing listens on", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6,
			Src: netip.MustParseAddrPort("10.244.0.1:40000"), Dst: dst}, DstK8s: pod("api"), Probe: &k8s.Probe{Port: 8080, Kinds: k8s.ProbeLiveness, Handler: k8s.ProbeTCP}},
			"api", "Pod", ReasonProbeDropped, "probe packets lost: liveness probe of shop/api on :8080 got NO_SOCKET (seen by kdrop)"},
		{"a readiness probe's SYN-ACK dropped on the node", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, TCPFlags: 0x12,
			Src: dst, Dst: netip.MustParseAddrPort("10.244.0.1:40000")}, SrcK8s: pod("api"), Probe: &k8s.Probe{Port: 8080, Kinds: k8s.ProbeReadiness, Handler: k8s.ProbeHTTP}},
			"api", "Pod", ReasonProbeDropped, "probe packets lost: readiness probe of shop/api on :8080 got NETFILTER_DROP (seen by kdrop)"},
		{"a probe of a deleted pod", line.Event{Event: tracer.Event{Type: tracer.Unreachable, Family: 4, ICMPType: 3, ICMPCode: 1, Dst: dst}, DstK8s: deleted,
			Probe: &k8s.Probe{Port: 8080, Kinds: k8s.ProbeLiveness}}, "", "", "", ""},
		{"kube-proxy: no local endpoints (externalTrafficPolicy: Local)", kp(netfilter.MeaningNoLocalEndpoints, "shop/web:http",
			"Service shop/web:http has no local endpoints (externalTrafficPolicy: Local)", 6, nodeIP, node),
			"web", "Service", ReasonNoLocalEndpoints, "packets dropped: to tcp 10.250.0.2:30080: Service shop/web:http has externalTrafficPolicy: Local and no ready endpoint on node node-b; " +
				"use externalTrafficPolicy: Cluster, or make the load balancer health-check the node (the Service's healthCheckNodePort) so that it sends only to nodes with an endpoint (seen by kdrop)"},
		{"kube-proxy: no local endpoints (internalTrafficPolicy: Local)", kp(netfilter.MeaningNoLocalEndpoints, "shop/web",
			"Service shop/web has no local endpoints (internalTrafficPolicy: Local)", 17, netip.MustParseAddrPort("10.96.0.13:53"), backed),
			"web", "Service", ReasonNoLocalEndpoints, "packets dropped: to udp 10.96.0.13:53: Service shop/web has internalTrafficPolicy: Local and no ready endpoint on node node-b; " +
				"use internalTrafficPolicy: Cluster, or run an endpoint on every node whose pods call it (a DaemonSet) (seen by kdrop)"},
		{"kube-proxy: source outside loadBalancerSourceRanges", kp(netfilter.MeaningSourceRange, "shop/lb:https",
			"Service shop/lb:https: source not in loadBalancerSourceRanges", 6, netip.MustParseAddrPort("192.0.2.100:443"), lb),
			"lb", "Service", ReasonSourceRange, "packets dropped: from 198.51.100.7 to tcp 192.0.2.100:443: Service shop/lb:https admits only its loadBalancerSourceRanges, which do not include the source; " +
				"add the client's range to spec.loadBalancerSourceRanges if it should reach the Service (seen by kdrop)"},
		{"kube-proxy: no endpoints, to a node port", kp(netfilter.MeaningNoEndpoints, "shop/cart",
			"Service shop/cart has no endpoints", 6, nodeIP, node),
			"cart", "Service", ReasonNoEndpoints, "connections rejected: to tcp 10.250.0.2:30080, rejected by kube-proxy: Service shop/cart has no ready endpoints (seen by kdrop)"},
		{"kube-proxy's rule names a Service the resolver does not hold", kp(netfilter.MeaningNoLocalEndpoints, "shop/gone:http", "x", 6, nodeIP, node), "", "", "", ""},
		{"kube-proxy's words in a pod's rules", elsewhere(kp(netfilter.MeaningNoLocalEndpoints, "shop/web:http", "x", 6, nodeIP, node), pod("kind-control-plane")), "", "", "", ""},
		{"kube-proxy's words in a namespace identity does not know", elsewhere(kp(netfilter.MeaningNoEndpoints, "shop/cart", "x", 6, nodeIP, node), &k8s.Endpoint{Unresolved: true}), "", "", "", ""},
		{"a REJECT in a pod's namespace to a Service without endpoints", elsewhere(kp(netfilter.MeaningNoEndpoints, "shop/cart", "x", 6, netip.MustParseAddrPort("10.96.0.12:80"), svc), pod("client")), "", "", "", ""},
		{"a REJECT in no known namespace", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, Dst: netip.MustParseAddrPort("10.96.0.12:80")}, DstK8s: svc}, "", "", "", ""},
		{"kube-proxy: a conntrack INVALID drop names no Service", kp(netfilter.MeaningInvalidConntrack, "", "x", 6, nodeIP, node), "", "", "", ""},
		{"NETFILTER_DROP to a Service with endpoints", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Dst: dst}, DstK8s: backed}, "", "", "", ""},
		{"a SYN to a closed port of a pod", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x02, Dst: netip.MustParseAddrPort("10.244.0.9:8081")}, DstK8s: pod("api")},
			"api", "Pod", ReasonNothingListening, "packets dropped: nothing listens on tcp port 8081 of 10.244.0.9 (NO_SOCKET) (seen by kdrop)"},
		{"a late FIN|ACK to an ephemeral port", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x11, Dst: netip.MustParseAddrPort("10.244.0.9:43512")}, DstK8s: pod("api")}, "", "", "", ""},
		{"a late RST", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x04, Dst: dst}, DstK8s: pod("api")}, "", "", "", ""},
		{"a late ACK", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x10, Dst: dst}, DstK8s: pod("api")}, "", "", "", ""},
		{"a SYN-ACK to a closed port", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x12, Dst: dst}, DstK8s: pod("api")}, "", "", "", ""},
		{"a SYN to a Terminating pod", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: 0x02, Dst: dst}, DstK8s: terminating}, "", "", "", ""},
		{"NO_SOCKET on a hostNetwork pod (the node's)", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Dst: dst}, DstK8s: hostPod}, "", "", "", ""},
		{"NO_SOCKET to a deleted pod", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Dst: dst}, DstK8s: deleted}, "", "", "", ""},
		{"host-unreachable to a live pod", line.Event{Event: tracer.Event{Type: tracer.Unreachable, Family: 4, ICMPType: 3, ICMPCode: 1}, SrcK8s: pod("client"), DstK8s: pod("api")}, "", "", "", ""},
		{"overflow of an unknown listener", line.Event{Event: tracer.Event{Type: tracer.ListenOverflow}}, "", "", "", ""},
	} {
		ref, reason, detail, ok := classify(&c.ev, services{svc, backed, lb}, "node-a")
		if !ok {
			if c.reason != "" {
				t.Errorf("%s: not a finding, want %s on %s", c.name, c.reason, c.object)
			}
			continue
		}
		s := series{reason: reason, detail: detail}
		if ref.Name != c.object || ref.Kind != c.kind || ref.Namespace != "shop" || string(ref.UID) != "uid-"+c.object || reason != c.reason || s.note() != c.note {
			t.Errorf("%s: %s %s/%s (%s) %s %q\nwant %s %s %q", c.name, ref.Kind, ref.Namespace, ref.Name, ref.UID, reason, s.note(), c.kind, c.object, c.note)
		}
	}
}

// services is a ServiceLookup over a few Services.
type services []*k8s.Endpoint

func (s services) LookupService(ns, name string) (k8s.Endpoint, bool) {
	for _, e := range s {
		if e.Namespace == ns && e.Name == name {
			return *e, true
		}
	}
	return k8s.Endpoint{}, false
}

// A note never carries a control character or a bidirectional override
// to kubectl describe, whatever the detail holds (a rule's meaning comes
// from a comment in the kernel).
func TestNotePrintable(t *testing.T) {
	s := &series{reason: ReasonPolicyDenied, detail: "NetworkPolicies shop/a\x1b[2J\u009b31m\u202eevil isolate shop/db-0"}
	n := s.note()
	for _, bad := range []string{"\x1b", "\u009b", "\u202e"} {
		if strings.Contains(n, bad) {
			t.Errorf("the note carries %q: %q", bad, n)
		}
	}
	if want := `shop/a\x1b[2J\x9b31m\u202eevil isolate`; !strings.Contains(n, want) {
		t.Errorf("note %q lacks %q", n, want)
	}
}

// NothingListening counts connection attempts, one series per port: a
// late FIN|ACK to an ephemeral port, then 500 SYNs to 8081, is one Event
// of 500 naming 8081.
func TestNothingListeningPerPort(t *testing.T) {
	r := New(nil, Config{Node: "node-a"})
	api := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "api", UID: "uid-api"}
	ev := func(port uint16, flags uint8, n uint64) *line.Event {
		return &line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Proto: 6, TCPFlags: flags, Count: n,
			Dst: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port)}, DstK8s: api}
	}
	r.Observe(ev(43512, 0x11, 1))
	r.Observe(ev(8081, 0x02, 1))
	r.Observe(ev(8081, 0x02, 499))
	r.Observe(ev(9090, 0x02, 3))
	got := map[uint16]string{}
	for k, s := range r.series {
		if k.reason != ReasonNothingListening || k.uid != "uid-api" {
			t.Errorf("series %+v", k)
		}
		got[k.port] = fmt.Sprintf("x%d %s", s.count, s.note())
	}
	want := map[uint16]string{
		8081: "x500 packets dropped: nothing listens on tcp port 8081 of 10.0.0.2 (NO_SOCKET) (seen by kdrop)",
		9090: "x3 packets dropped: nothing listens on tcp port 9090 of 10.0.0.2 (NO_SOCKET) (seen by kdrop)",
	}
	if !maps.Equal(got, want) {
		t.Errorf("series %v\nwant %v", got, want)
	}
}

// An Event's name is valid whatever the object's name: cut to 253
// characters with the 16 hex digits kept, no dot or dash at the cut.
func TestEventName(t *testing.T) {
	for _, obj := range []string{"api", strings.Repeat("a", 236), strings.Repeat("a", 237), strings.Repeat("b", 253), strings.Repeat("c", 235) + "-.d" + strings.Repeat("e", 20)} {
		n := eventName(obj, 0x187a_0000_0000_0001)
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 || !strings.HasSuffix(n, ".187a000000000001") || !strings.HasPrefix(n, obj[:min(len(obj), 230)]) {
			t.Errorf("eventName(%d chars) = %q (%d): %v", len(obj), n, len(n), errs)
		}
	}
	if n := eventName("api", 0x187a_0000_0000_0001); n != "api.187a000000000001" {
		t.Errorf("eventName(api) = %q", n)
	}
}

// Retries of a failing series back off exponentially, capped.
func TestBackoff(t *testing.T) {
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	for i, w := range want {
		if b := backoff(i + 1); b != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, b, w)
		}
	}
	if b := backoff(100); b != retryMax {
		t.Errorf("backoff(100) = %v, want %v", b, retryMax)
	}
}

// Every Reason constant of this package is in Reasons (what help lists)
// and has a note's words, read from the source: none is left out by hand.
func TestReasonsListed(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "k8sevents.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var consts []string
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			for i, name := range vs.Names {
				if strings.HasPrefix(name.Name, "Reason") && i < len(vs.Values) {
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, _ := strconv.Unquote(lit.Value)
						consts = append(consts, v)
					}
				}
			}
		}
		return true
	})
	if len(consts) < 8 {
		t.Fatalf("found %d Reason constants in k8sevents.go: %q", len(consts), consts)
	}
	help := ReasonsHelp(2, 78)
	listed := map[string]bool{}
	for _, r := range Reasons {
		listed[r.Reason] = true
	}
	for _, c := range consts {
		if !listed[c] || what[c] == "" || !strings.Contains(help, "  "+c+" ") {
			t.Errorf("reason %s: listed %v, note words %q, in help %v", c, listed[c], what[c], strings.Contains(help, c))
		}
	}
	if len(Reasons) != len(consts) {
		t.Errorf("Reasons lists %d, the source has %d constants", len(Reasons), len(consts))
	}
	for _, l := range strings.Split(help, "\n") {
		if len(l) > 78 {
			t.Errorf("help line over 78 columns: %q", l)
		}
	}
	t.Logf("\n%s", help)
}
