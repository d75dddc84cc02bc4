package k8sevents

import (
	"net/netip"
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
		{"REJECT of a Service without endpoints", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Proto: 6, Dst: netip.MustParseAddrPort("10.96.0.12:80")}, DstK8s: svc},
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
		{"NETFILTER_DROP to a Service with endpoints", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Dst: dst}, DstK8s: backed}, "", "", "", ""},
		{"NO_SOCKET on a hostNetwork pod (the node's)", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Dst: dst}, DstK8s: hostPod}, "", "", "", ""},
		{"NO_SOCKET to a deleted pod", line.Event{Event: tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Dst: dst}, DstK8s: deleted}, "", "", "", ""},
		{"host-unreachable to a live pod", line.Event{Event: tracer.Event{Type: tracer.Unreachable, Family: 4, ICMPType: 3, ICMPCode: 1}, SrcK8s: pod("client"), DstK8s: pod("api")}, "", "", "", ""},
		{"overflow of an unknown listener", line.Event{Event: tracer.Event{Type: tracer.ListenOverflow}}, "", "", "", ""},
	} {
		ref, reason, detail, ok := classify(&c.ev)
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
