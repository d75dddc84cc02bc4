package line

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/route"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.jsonl from the encoder")

var t0 = time.Date(2026, 11, 30, 18, 4, 5, 123456789, time.UTC)

// goldenEvents covers every field the encoder writes.
func goldenEvents() []Event {
	pod := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "web-7d9f8c-x2x4q", WorkloadKind: "Deployment", WorkloadName: "web",
		Node: "node-a", Services: []string{"shop/web"}, Ready: true}
	deleted := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "shop", Name: "cart-new", Node: "node-b", Terminating: true, DeletedAgo: 1500 * time.Millisecond,
		Previous: []k8s.Endpoint{{Kind: k8s.KindPod, Namespace: "shop", Name: "cart-old", DeletedAgo: 3 * time.Second}}}
	svc := &k8s.Endpoint{Kind: k8s.KindService, Namespace: "shop", Name: "cart"}
	node := &k8s.Endpoint{Kind: k8s.KindNode, Name: "node-a", HostNetwork: true}
	unresolved := &k8s.Endpoint{Unresolved: true}
	odd := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "x", Name: "quote\" back\\ tab\t ctl\x01 é \xff", Ready: false}
	ap := netip.MustParseAddrPort
	return []Event{
		{Event: tracer.Event{Time: t0, Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026531840, Ifindex: 2, Family: 4, Proto: 6,
			Src: ap("10.244.0.7:40000"), Dst: ap("10.244.1.9:80"), TCPFlags: 2, Reason: "NO_SOCKET", ReasonCode: 3, Location: "tcp_v4_rcv+0x1a4"},
			Node: "node-a", SrcK8s: pod, DstK8s: deleted, WhereK8s: node},
		{Event: tracer.Event{Time: t0.Add(time.Second), Type: tracer.Drop, Count: 4812, Summary: true, Source: "fentry", Coarse: tracer.CoarseNetns,
			Netns: 4026532000, Family: 6, Proto: 17, Reason: "NETFILTER_DROP", ReasonCode: 6, Location: "nf_hook_slow+0x9c"}},
		{Event: tracer.Event{Time: t0.Add(2 * time.Second), Type: tracer.ListenOverflow, Count: 1, Source: "sock_diag", Netns: 4026532100, Family: 4, Proto: 6,
			Dst: ap("0.0.0.0:8080"), Queue: tracer.QueueAccept, QueueLen: 129, QueueMax: 128, SynQueueLen: 3, Somaxconn: 128},
			Node: "node-b", WhereK8s: pod},
		{Event: tracer.Event{Time: t0.Add(3 * time.Second), Type: tracer.ListenOverflow, Count: 1, Source: "kprobe", Netns: 4026532100, Family: 6, Proto: 6,
			Src: ap("[fd00::1]:51000"), Dst: ap("[fd00::2]:443"), TCPFlags: 2, Queue: tracer.QueueSYN, QueueLen: 256, QueueMax: 256, SynQueueLen: 256, Syncookie: true}},
		{Event: tracer.Event{Time: t0.Add(4 * time.Second), Type: tracer.Unreachable, Count: 1, Source: "raw_tp", Netns: 4026531840, Family: 4, Proto: 17,
			Src: ap("10.96.0.10:53"), Dst: ap("10.244.0.7:33000"), ICMPType: 3, ICMPCode: 3},
			Node: "node-a", SrcK8s: svc, DstK8s: unresolved, WhereK8s: odd},
		{Event: tracer.Event{Time: t0.Add(5 * time.Second), Type: tracer.Unreachable, Count: 2, Summary: true, Netns: 1, Family: 6, Proto: 58,
			Dst: ap("[2001:db8::1]:0"), ICMPType: 1, ICMPCode: 4}},
		// the MTU of a frag-needed and of a packet-too-big, a pointer
		{Event: tracer.Event{Time: t0.Add(5100 * time.Millisecond), Type: tracer.Unreachable, Count: 1, Netns: 1, Family: 4, Proto: 17,
			Src: ap("198.18.1.2:40000"), Dst: ap("198.18.2.2:9"), ICMPType: 3, ICMPCode: 4, ICMPInfo: 1280}},
		{Event: tracer.Event{Time: t0.Add(5200 * time.Millisecond), Type: tracer.Unreachable, Count: 1, Netns: 1, Family: 6, Proto: 17,
			Src: ap("[fd00:18:1::2]:40000"), Dst: ap("[fd00:18:2::2]:9"), ICMPType: 2, ICMPInfo: 1280}},
		{Event: tracer.Event{Time: t0.Add(5300 * time.Millisecond), Type: tracer.Unreachable, Count: 1, Netns: 1, Family: 4, Proto: 6,
			Src: ap("198.18.1.2:40000"), Dst: ap("198.18.2.2:80"), ICMPType: 12, ICMPInfo: 20 << 24}},
		// a redirect's gateway (10.77.0.9)
		{Event: tracer.Event{Time: t0.Add(5400 * time.Millisecond), Type: tracer.Unreachable, Count: 1, Netns: 1, Family: 4, Proto: 17,
			Src: ap("10.77.0.1:40000"), Dst: ap("10.77.5.5:9"), ICMPType: 5, ICMPCode: 1, ICMPInfo: 10<<24 | 77<<16 | 9}},
		// a frag-needed dropped on its way (a path MTU black hole): the MTU it carried
		{Event: tracer.Event{Time: t0.Add(5500 * time.Millisecond), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 1, Family: 4, Proto: 1,
			Src: ap("198.18.1.1:0"), Dst: ap("198.18.1.2:0"), Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x9a", ICMPType: 3, ICMPCode: 4, ICMPInfo: 1280}},
		{Event: tracer.Event{Time: t0.Add(6 * time.Second), Type: tracer.Drop, Count: 1, Netns: 7, Proto: 0, Reason: "unknown", Location: "0xffffffff81000000"}},
		// netfilter rules: one named by its counter, candidates, a rule
		// without a counter named by match, unknown
		{Event: tracer.Event{Time: t0.Add(7 * time.Second), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532301, Family: 4, Proto: 6,
			Src: ap("198.18.1.2:40322"), Dst: ap("198.18.2.2:81"), TCPFlags: 2, Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x9a"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter, Ref: netfilter.Ref{Family: "ip", Table: "filter",
				Chain: "INPUT", Handle: 3, Comment: "block \"web\" é", Verdict: "REJECT tcp-reset", Packets: 12}}},
		{Event: tracer.Event{Time: t0.Add(8 * time.Second), Type: tracer.Drop, Count: 40, Summary: true, Source: "tp_btf", Netns: 4026532301, Family: 6, Proto: 17,
			Dst: ap("[fd00:18:2::2]:9005"), Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x9a"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter, Candidates: []netfilter.Ref{
				{Family: "ip6", Table: "filter", Chain: "INPUT", Handle: 5, Comment: "every 2nd", Verdict: "DROP", Packets: 20},
				{Family: "ip6", Table: "filter", Chain: "INPUT", Handle: 6, Verdict: "REJECT icmp6-port-unreachable", Packets: 20}}}},
		{Event: tracer.Event{Time: t0.Add(9 * time.Second), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532301, Family: 4, Proto: 6,
			Src: ap("198.18.1.2:40324"), Dst: ap("198.18.2.2:9103"), TCPFlags: 2, Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nft_do_chain+0x46f"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowMatch, Ref: netfilter.Ref{Family: "inet", Table: "kube-proxy",
				Chain: "filter-input", Handle: 41, Verdict: "DROP"}, K8s: &netfilter.Meaning{Kind: netfilter.MeaningNoLocalEndpoints,
				Engine: "kube-proxy", Service: "shop/web:http", Text: "Service shop/web:http has no local endpoints (externalTrafficPolicy: Local)"}}},
		{Event: tracer.Event{Time: t0.Add(9500 * time.Millisecond), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532303, Family: 4, Proto: 6,
			Src: ap("10.244.0.7:40100"), Dst: ap("10.244.0.9:5432"), TCPFlags: 2, Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x9a"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter, Ref: netfilter.Ref{Family: "ip", Table: "filter",
				Chain: "KUBE-POD-FW-2XVJKPRIPIRU222C", Handle: 88, Comment: "rule to REJECT traffic destined for POD name:db-0 namespace: shop", Verdict: "REJECT icmp-port-unreachable", Packets: 1},
				K8s: &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy, Engine: "kube-router", Direction: "ingress", Pod: "shop/db-0",
					NetworkPolicies: []netfilter.PolicyRef{{Namespace: "shop", Name: "db-ingress"}, {Namespace: "shop", Name: "default-deny"}},
					Evaluation:      netfilter.EvaluationAgrees,
					Text:            "NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5432 from shop/api-1 (kube-router's rule agrees)"}}},
		// an engine's rule kdrop's own evaluation disagrees with
		{Event: tracer.Event{Time: t0.Add(9600 * time.Millisecond), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532303, Family: 4, Proto: 6,
			Src: ap("10.244.0.9:40200"), Dst: ap("10.244.0.7:8080"), TCPFlags: 2, Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x9a"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter, Ref: netfilter.Ref{Family: "ip", Table: "filter",
				Chain: "KUBE-POD-FW-4FKNNDUFH5QLYXG2", Handle: 91, Comment: "rule to REJECT traffic destined for POD name:db-0 namespace: shop", Verdict: "REJECT icmp-port-unreachable", Packets: 1},
				K8s: &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy, Engine: "kube-router", Direction: "egress", Pod: "shop/db-0",
					NetworkPolicies: []netfilter.PolicyRef{{Namespace: "shop", Name: "db-egress"}},
					Evaluation:      netfilter.EvaluationDisagrees,
					Evaluated: &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy, Direction: "egress", Pod: "shop/db-0",
						NetworkPolicies: []netfilter.PolicyRef{{Namespace: "shop", Name: "lockdown"}},
						Text:            "NetworkPolicy shop/lockdown isolates shop/db-0 for egress and does not allow TCP 8080 to shop/web-1"},
					Text: "kube-router rejects it: NetworkPolicy shop/db-egress isolates shop/db-0 for egress and does not allow it; kdrop's evaluation of the NetworkPolicies disagrees: NetworkPolicy shop/lockdown isolates shop/db-0 for egress and does not allow TCP 8080 to shop/web-1"}}},
		// a route drop, named by its route
		{Event: tracer.Event{Time: t0.Add(9700 * time.Millisecond), Type: tracer.Drop, Count: 3, Source: "tp_btf", Netns: 4026532301, Family: 4, Proto: 17,
			Src: ap("198.18.1.2:40000"), Dst: ap("198.19.131.5:9"), Reason: "NOT_SPECIFIED", ReasonCode: 2, Location: "ip_error+0x4c"},
			Route: &route.Route{Type: "blackhole", Dst: netip.MustParsePrefix("198.19.131.0/24"), Table: 254}},
		// conntrack's own drop (no rule), and an INVALID packet a rule dropped
		{Event: tracer.Event{Time: t0.Add(9800 * time.Millisecond), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532305, Family: 4, Proto: 6,
			Src: ap("198.18.1.2:51234"), Dst: ap("198.18.2.2:80"), TCPFlags: 2, Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x7d"},
			Conntrack: &conntrack.Drop{Cause: conntrack.CauseInsertFailed, Count: 2, Max: 262144}},
		{Event: tracer.Event{Time: t0.Add(9900 * time.Millisecond), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532305, Family: 4, Proto: 6,
			Src: ap("198.18.1.2:51235"), Dst: ap("198.18.2.2:80"), TCPFlags: 3, Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nft_do_chain+0x3e8"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter, Ref: netfilter.Ref{Family: "ip", Table: "filter",
				Chain: "KUBE-FORWARD", Handle: 5, Verdict: "DROP", Packets: 1}, K8s: &netfilter.Meaning{Kind: netfilter.MeaningInvalidConntrack,
				Engine: "kube-proxy", Text: "invalid conntrack state (kube-proxy drops packets conntrack calls INVALID)"}},
			Conntrack: &conntrack.Drop{Cause: conntrack.CauseInvalid, Count: 7, Max: 262144}},
		{Event: tracer.Event{Time: t0.Add(10 * time.Second), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532302, Family: 4, Proto: 17,
			Dst: ap("198.18.2.3:53"), Reason: "NETFILTER_DROP", ReasonCode: 12, Location: "nf_hook_slow+0x9a"},
			Rule: &netfilter.Rule{Backend: netfilter.BackendNftables, Unknown: "network namespace gone"}},
		// kubelet probes: a reset on a liveness and readiness port, an
		// unreachable on a startup one
		{Event: tracer.Event{Time: t0.Add(11 * time.Second), Type: tracer.Drop, Count: 1, Source: "tp_btf", Netns: 4026532310, Family: 4, Proto: 6,
			Src: ap("10.244.0.1:51234"), Dst: ap("10.244.0.9:8080"), TCPFlags: 2, Reason: "NO_SOCKET", ReasonCode: 3, Location: "tcp_v4_rcv+0x1a4"},
			Node: "node-a", DstK8s: pod, WhereK8s: pod,
			Probe: &k8s.Probe{Port: 8080, Kinds: k8s.ProbeLiveness | k8s.ProbeReadiness, Handler: k8s.ProbeHTTP, Container: "api", HTTPS: true}},
		{Event: tracer.Event{Time: t0.Add(12 * time.Second), Type: tracer.Unreachable, Count: 1, Source: "tp_btf", Netns: 4026531840, Family: 4, Proto: 6,
			Src: ap("10.244.0.1:51240"), Dst: ap("10.244.0.9:9090"), ICMPType: 3, ICMPCode: 1},
			Node: "node-a", DstK8s: pod, WhereK8s: node,
			Probe: &k8s.Probe{Port: 9090, Kinds: k8s.ProbeStartup, Handler: k8s.ProbeGRPC, Container: "api"}},
	}
}

func goldenNotices() []Notice {
	return []Notice{
		{Time: t0, Type: NoticeHello, Node: "node-a"},
		{Time: t0, Type: NoticeHeartbeat, Node: "node-a"},
		{Time: t0, Type: NoticeLost, Node: "node-a", Lost: 17},
		{Time: t0, Type: NoticeMissed, Node: "node-a", Missed: 3, Cause: MissedByKernel},
		{Time: t0, Type: NoticeMissed, Node: "node-b", Missed: 9, Cause: MissedByStream},
		{Time: t0, Type: NoticeMessage, Node: "", Message: `cannot list the agents: "forbidden" ` + "\x00\n"},
		{Time: t0, Type: NoticeMessage, Node: "node-b", Message: "connected to agent kdrop-x: events were not seen", GapFrom: t0.Add(-time.Minute), GapTo: t0},
	}
}

func goldenHeader() Header {
	return Header{Started: t0, Version: "v0.1.0", From: "tail", Cluster: "kind", Nodes: []Node{{Name: "node-a", Kernel: "6.12.0-1-amd64"}},
		Filters:   Filters{Types: []string{"drop"}, Reasons: []string{"NO_SOCKET"}, CIDRs: []string{"10.0.0.0/8"}, Port: 80, Netns: 4026531840, Namespace: "shop", Pod: "web", Selector: "app=web"},
		RateLimit: 100}
}

func goldenTrailer() Trailer {
	return Trailer{Ended: t0.Add(time.Minute), Events: 7, Lost: 17, Missed: 12, Error: "writing x: no space left on device"}
}

func encodeGolden() []byte {
	var b []byte
	b = append(AppendHeader(b, goldenHeader()), '\n')
	for _, e := range goldenEvents() {
		b = append(AppendEvent(b, &e), '\n')
	}
	for _, n := range goldenNotices() {
		b = append(AppendNotice(b, &n), '\n')
	}
	return append(AppendTrailer(b, goldenTrailer()), '\n')
}

// The bytes kdrop writes are pinned: a change to them is a change of the
// format, to be made on purpose (go test ./cmd/kdrop/line -update) and
// read by every reader of FormatVersion.
func TestGolden(t *testing.T) {
	got := encodeGolden()
	const path = "testdata/golden.jsonl"
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("line %d differs from %s:\n got %s\nwant %s", i+1, path, gl[i], wl[i])
			}
		}
		t.Fatalf("%s: %d lines, encoder writes %d", path, len(wl), len(gl))
	}
}

// Every golden line decodes to what was encoded, and encodes back to the
// same bytes.
func TestRoundTrip(t *testing.T) {
	var d Decoder
	var l Line
	lines := strings.Split(strings.TrimSpace(string(encodeGolden())), "\n")
	events, notices := goldenEvents(), goldenNotices()
	for i, s := range lines {
		if err := d.Decode([]byte(s), &l); err != nil {
			t.Fatalf("line %d: %v\n%s", i+1, err, s)
		}
		var again []byte
		switch l.Kind {
		case KindHeader:
			want := goldenHeader()
			want.Format = FormatVersion
			if !reflect.DeepEqual(l.Header, want) {
				t.Errorf("header: got %+v, want %+v", l.Header, want)
			}
			again = AppendHeader(nil, l.Header)
		case KindTrailer:
			want := goldenTrailer()
			want.Format = FormatVersion
			if l.Trailer != want {
				t.Errorf("trailer: got %+v, want %+v", l.Trailer, want)
			}
			again = AppendTrailer(nil, l.Trailer)
		case KindEvent:
			e := &events[i-1]
			if l.Event.Type != e.Type || l.Event.Count != e.Count || l.Event.Src != e.Src || l.Event.Dst != e.Dst || l.Event.Node != e.Node || !l.Time.Equal(e.Time) ||
				!reflect.DeepEqual(l.Event.Rule, e.Rule) {
				t.Errorf("line %d: decoded %+v, want %+v", i+1, l.Event, e)
			}
			again = AppendEvent(nil, &l.Event)
		case KindNotice:
			n := notices[i-1-len(events)]
			n.Message = strings.ToValidUTF8(n.Message, "\ufffd")
			if !reflect.DeepEqual(l.Notice, n) {
				t.Errorf("line %d: decoded %+v, want %+v", i+1, l.Notice, n)
			}
			again = AppendNotice(nil, &l.Notice)
		default:
			t.Fatalf("line %d: kind %d", i+1, l.Kind)
		}
		if string(again) != s {
			t.Errorf("line %d re-encoded differs:\n got %s\nwant %s", i+1, again, s)
		}
	}
}

func TestEncodeAllocatesNothing(t *testing.T) {
	evs := goldenEvents()
	// protocols and ICMP errors without a name are written as numbers
	evs = append(evs,
		Event{Event: tracer.Event{Time: t0, Type: tracer.Drop, Count: 1, Proto: 47, Reason: "NO_SOCKET"}},
		Event{Event: tracer.Event{Time: t0, Type: tracer.Unreachable, Count: 1, Family: 4, Proto: 1, ICMPType: 200, ICMPCode: 200}},
		Event{Event: tracer.Event{Time: t0, Type: tracer.Unreachable, Count: 1, Family: 6, Proto: 58, ICMPType: 1, ICMPCode: 99}},
		Event{Event: tracer.Event{Time: t0, Type: tracer.Unreachable, Count: 1, Family: 6, Proto: 58, ICMPType: 130, ICMPCode: 0}})
	buf := make([]byte, 0, 4096)
	for i := range evs {
		if n := testing.AllocsPerRun(100, func() { buf = AppendEvent(buf[:0], &evs[i]) }); n != 0 {
			t.Errorf("event %d: %v allocations per AppendEvent", i, n)
		}
		if e := &evs[i]; e.Type == tracer.Unreachable {
			if name := tracer.ICMPName(e.Family == 6, e.ICMPType, e.ICMPCode); !strings.Contains(string(buf), `"icmp":"`+name+`"`) {
				t.Errorf("event %d: icmp is not %q: %s", i, name, buf)
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	var d Decoder
	var l Line
	for _, c := range []struct{ line, want string }{
		{`{"time":"2026-01-01T00:00:00Z","type":"drop"}`, `drop event without "count"`},
		{`{"type":"drop","count":1}`, `drop event: no "time" time`},
		{`{"time":"yesterday","type":"drop","count":1}`, `"time" is not an RFC 3339 time`},
		{`{"time":"2026-01-01T00:00:00Z","type":"drop","count":-1}`, `field "count": a JSON number -1 where a whole number, 0 or more is expected`},
		{`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"src":"10.0.0.300"}`, `not an IP address`},
		{`{"time":"2026-01-01T00:00:00Z","type":"notice","gap_from":"2026-01-01T00:00:09Z","gap_to":"2026-01-01T00:00:00Z"}`, `gap_to 2026-01-01T00:00:00Z is before gap_from`},
		{`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":3}}`, `dst_k8s: field "kind": a JSON number where a string is expected`},
		{`{"time":"2026-01-01T00:00:00Z","type":"lost"}`, `loss notice without "lost"`},
		{`{"time":"2026-01-01T00:00:00Z","type":"missed"}`, `missed notice without "missed"`},
		{`{"time":"2026-01-01T00:00:00Z","type":"notice","gap_from":"2026-01-01T00:00:00Z"}`, `gap notice: no "gap_to" time`},
		{`{"count":1}`, `no "type" field`},
		{`[1,2]`, `the line is a JSON array, not an object`},
		{`{"time":`, `cut off?`},
		{`{"kdrop_record":2,"started":"2026-01-01T00:00:00Z"}`, `recording format 2 is newer than this kdrop reads (1)`},
		{`{"kdrop_record":1}`, `header: no "started" time`},
		{`{"kdrop_record_end":7,"ended":"2026-01-01T00:00:00Z"}`, `end-of-recording line of unknown format 7`},
	} {
		err := d.Decode([]byte(c.line), &l)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one saying %q", c.line, err, c.want)
		}
	}
	// a protocol name from a newer kdrop reads as unknown
	if err := d.Decode([]byte(`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"proto":"gre"}`), &l); err != nil || l.Event.Proto != 0 {
		t.Errorf("unknown protocol name: %v, proto %d", err, l.Event.Proto)
	}
	// a deleted_ago_ms past what a Duration holds is clamped, still "deleted"
	if err := d.Decode([]byte(`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","deleted_ago_ms":9223372036854775807}}`), &l); err != nil || l.Event.DstK8s.DeletedAgo <= 0 {
		t.Errorf("huge deleted_ago_ms: %v, %v", err, l.Event.DstK8s)
	}
	// a line that fails still says its time and type, for readers that pass it on
	if err := d.Decode([]byte(`{"time":"2026-01-01T00:00:00Z","type":"drop"}`), &l); err == nil || l.Kind != KindEvent || l.Time.IsZero() {
		t.Errorf("a bad event: %v, kind %d, time %v", err, l.Kind, l.Time)
	}
	// a type from a newer kdrop is not an error
	if err := d.Decode([]byte(`{"time":"2026-01-01T00:00:00Z","type":"verdict","x":1}`), &l); err != nil || l.Kind != KindOther || l.Type != "verdict" {
		t.Errorf("unknown type: %v, %+v", err, l)
	}
}

// Identities too long to be real are not kept.
func TestDecoderKeepsBoundedIdentities(t *testing.T) {
	var d Decoder
	var l Line
	big := `{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","name":"` + strings.Repeat("x", maxEndpointLen) + `"}}`
	for range 3 {
		if err := d.Decode([]byte(big), &l); err != nil {
			t.Fatal(err)
		}
	}
	if len(d.endpoints) != 0 || d.kept != 0 {
		t.Errorf("kept %d identities, %d bytes", len(d.endpoints), d.kept)
	}
}

// Equal identities decode to one *k8s.Endpoint.
func TestDecoderSharesIdentities(t *testing.T) {
	var d Decoder
	var a, b Line
	s := []byte(`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","namespace":"a","name":"b","ready":true}}`)
	if err := d.Decode(s, &a); err != nil {
		t.Fatal(err)
	}
	if err := d.Decode(s, &b); err != nil {
		t.Fatal(err)
	}
	if a.Event.DstK8s == nil || a.Event.DstK8s != b.Event.DstK8s || a.Event.DstK8s.Name != "b" || !a.Event.DstK8s.Ready {
		t.Errorf("identities: %+v %+v", a.Event.DstK8s, b.Event.DstK8s)
	}
}

// FuzzDecode: no input panics the decoder; the fast path and encoding/json
// decode it alike (same line, same error); and an event it accepts encodes
// to a line it decodes again to the same event.
func FuzzDecode(f *testing.F) {
	for _, s := range strings.Split(string(encodeGolden()), "\n") {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"time":"2026-01-01T00:00:00Z","type":"overflow","count":1,"queue":"syn","tcp_flags":"SYN|ACK|XYZ"}`))
	for _, s := range fastCases {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Decoder
		var l Line
		err := d.Decode(b, &l)
		sameAsSlow(t, b, &l, err)
		if err != nil || l.Kind != KindEvent {
			return
		}
		out := AppendEvent(nil, &l.Event)
		var l2 Line
		if err := d.Decode(out, &l2); err != nil {
			t.Fatalf("re-decoding %s: %v", out, err)
		}
		if again := AppendEvent(nil, &l2.Event); !bytes.Equal(again, out) {
			t.Fatalf("not stable:\n%s\n%s", out, again)
		}
	})
}

// schema.json, the format written down for users, accepts every line the
// encoder writes and declares every field it writes: a field added to the
// encoder without the schema fails here.
func TestSchema(t *testing.T) {
	c := jsonschema.NewCompiler()
	sch, err := c.Compile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Defs map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	declared := func(def string, obj map[string]any) {
		for k := range obj {
			if _, ok := doc.Defs[def].Properties[k]; !ok {
				t.Errorf("schema.json: %s field %q is written but not declared", def, k)
			}
		}
	}
	for i, s := range strings.Split(strings.TrimSpace(string(encodeGolden())), "\n") {
		v, err := jsonschema.UnmarshalJSON(strings.NewReader(s))
		if err != nil {
			t.Fatalf("line %d is not JSON: %v", i+1, err)
		}
		if err := sch.Validate(v); err != nil {
			t.Errorf("line %d does not match schema.json: %v\n%s", i+1, err, s)
		}
		obj := v.(map[string]any)
		switch {
		case obj["kdrop_record"] != nil:
			declared("header", obj)
		case obj["kdrop_record_end"] != nil:
			declared("trailer", obj)
		case obj["count"] != nil:
			declared("event", obj)
			for _, k := range []string{"src_k8s", "dst_k8s", "where_k8s"} {
				if e, ok := obj[k].(map[string]any); ok {
					declared("endpoint", e)
				}
			}
			if r, ok := obj["rule"].(map[string]any); ok {
				declared("rule", r)
				cs, _ := r["candidates"].([]any)
				for _, c := range cs {
					declared("rule_candidate", c.(map[string]any))
				}
			}
		default:
			declared("notice", obj)
		}
	}
}

// sameAsSlow fails unless encoding/json decodes b to l and err too.
func sameAsSlow(t *testing.T, b []byte, l *Line, err error) {
	t.Helper()
	slow := Decoder{slowOnly: true}
	var sl Line
	serr := slow.Decode(b, &sl)
	if fmt.Sprint(err) != fmt.Sprint(serr) {
		t.Fatalf("%s\nfast path: error %v\nencoding/json: error %v", b, err, serr)
	}
	if !reflect.DeepEqual(*l, sl) {
		t.Fatalf("%s\nfast path:     %+v\nencoding/json: %+v", b, *l, sl)
	}
}

// Lines at the edges of what the fast path reads: each decodes as
// encoding/json decodes it.
var fastCases = []string{
	// the conntrack object: out of range, null, unknown members, not an object
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"reason":"NETFILTER_DROP","conntrack":{"cause":"table-full","count":4294967296,"max":1}}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"reason":"NETFILTER_DROP","conntrack":null}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"conntrack":{"cause":"insert-failed","later":[1,{"a":2}]},"reason":"NETFILTER_DROP"}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"reason":"NETFILTER_DROP","conntrack":"insert-failed"}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1}`,
	` { "time" : "2026-01-01T00:00:00Z" , "type" : "drop" , "count" : 18446744073709551615 } `,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":18446744073709551616}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":01}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1.0}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1e2}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":-1}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dport":65536}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"icmp_type":256}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"Count":2}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"count":2}`,
	`{"time":"2026-01-01T00:00:00Z","type":"DROP","count":1}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"node":"n\u00e9"}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"node":"né"}`,
	"{\"time\":\"2026-01-01T00:00:00Z\",\"type\":\"drop\",\"count\":1,\"node\":\"n\xff\"}",
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"node":null}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"src":""}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"src":"fe80::1%eth0","sport":1}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"src":"1.2.3"}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"summary":true,"syncookie":false}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"summary":1}`,
	`{"time":"2026-01-01T00:00:00Z","type":"unreach","count":1,"icmp":"port-unreachable","x":12,"y":"z"}`,
	`{"time":"2026-01-01T00:00:00Z","type":"unreach","count":1,"x":[1]}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","name":"a\"}{"}}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","name":"a"} }`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","name":"a",}}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod","previous":[{"kind":"pod"}]}}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":{"kind":"pod"]}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"dst_k8s":[]}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1}x`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop"}`,
	`{"time":"yesterday","type":"drop","count":1}`,
	`{"time":"2026-01-01T00:00:00Z","type":"lost","lost":3,"node":"n"}`,
	`{}`,
	`{"type":"0","dst_k8s":{""}}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","dst_k8s":{""}}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"proto":"TCP","tcp_flags":"SYN|ACK"}`,
	`{"time":"2026-01-01T00:00:00Z","type":"drop","count":1,"proto":"47"}`,
}

// The fast path reads every event line kdrop writes (the golden file has
// every event field), and reads them as encoding/json does.
func TestFastPath(t *testing.T) {
	for _, name := range eventNames {
		if !strings.Contains(string(encodeGolden()), `"`+name+`":`) {
			t.Errorf("no golden line has %q: the fast path's reading of it is not checked", name)
		}
	}
	var d Decoder
	for _, s := range append(strings.Split(strings.TrimSpace(string(encodeGolden())), "\n"), fastCases...) {
		var l Line
		err := d.Decode([]byte(s), &l)
		sameAsSlow(t, []byte(s), &l, err)
		if l.Kind == KindEvent && err == nil {
			var w wire
			var r fastReader
			if !d.fastWire([]byte(s), &w, &r) && strings.Contains(string(encodeGolden()), s) {
				t.Errorf("the fast path does not read a line kdrop writes: %s", s)
			}
		}
	}
}
