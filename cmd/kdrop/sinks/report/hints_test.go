package report

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/route"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// encoded writes events as kdrop writes them (the line encoder): at is
// seconds after t0.
func encoded(at float64, evs ...line.Event) []string {
	var out []string
	for i := range evs {
		e := &evs[i]
		e.Time = t0.Add(time.Duration(at * float64(time.Second)))
		if e.Count == 0 {
			e.Count = 1
		}
		out = append(out, string(line.AppendEvent(nil, e)))
	}
	return out
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func dropEv(netns uint32, reason, loc string, proto uint8, src, dst string) line.Event {
	e := line.Event{Event: tracer.Event{Type: tracer.Drop, Netns: netns, Proto: proto, Reason: reason, Location: loc, Source: "tp_btf"}}
	if src != "" {
		e.Src = ap(src)
	}
	e.Dst = ap(dst)
	e.Family = 4
	if e.Dst.Addr().Is6() {
		e.Family = 6
	}
	return e
}

// The findings whose fix lies in the node's setup, from lines the encoder
// wrote: a path MTU black hole (the router's frag-needed and the drop of
// that error by a rule at the sender, in event and summary lines; an
// ICMPv6 packet-too-big dropped with no router in the recording), route
// drops with and without the route, strict rp_filter, PAWS in TIME_WAIT,
// a receive buffer overflow. Strings from the file that are not what kdrop
// writes are marked, in findings and Markdown.
func TestHintFindings(t *testing.T) {
	const router, client, client6, node, far6 = 4026532001, 4026532002, 4026532003, 4026532004, 4026532005
	tooBig := line.Event{Event: tracer.Event{Type: tracer.Unreachable, Netns: router, Family: 4, Proto: 17, Source: "tp_btf",
		Src: ap("198.18.1.2:40000"), Dst: ap("198.18.2.2:9"), ICMPType: 3, ICMPCode: 4, ICMPInfo: 1280}}
	noICMP := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
		Ref: netfilter.Ref{Family: "ip", Table: "filter", Chain: "INPUT", Handle: 3, Verdict: "DROP", Comment: "no icmp"}}
	fragDrop := dropEv(client, "NETFILTER_DROP", "nf_hook_slow+0x9e", 1, "198.18.1.1:0", "198.18.1.2:0")
	fragDrop.ICMPType, fragDrop.ICMPCode, fragDrop.Rule = 3, 4, noICMP
	fragSummary := fragDrop
	fragSummary.Summary, fragSummary.Count, fragSummary.Src = true, 40, netip.AddrPort{}
	echoDrop := dropEv(client, "NETFILTER_DROP", "nf_hook_slow+0x9e", 1, "198.18.1.1:0", "198.18.1.9:0") // echo reply: not PMTU
	echoDrop.Rule = noICMP
	pkt6 := dropEv(client6, "NETFILTER_DROP", "nf_hook_slow+0x9e", 58, "[fd00:18:1::1]:0", "[fd00:18:1::2]:0")
	pkt6.ICMPType, pkt6.Count, pkt6.Rule = 2, 3, &netfilter.Rule{Backend: netfilter.BackendNftables, Unknown: "network namespace gone"}

	blackhole := dropEv(node, "NOT_SPECIFIED", "ip_error+0x5a", 17, "198.18.1.2:5000", "198.19.131.5:9")
	blackhole.Count, blackhole.Route = 10, &route.Route{Type: "blackhole", Dst: netip.MustParsePrefix("198.19.131.0/24"), Table: 254}
	noRoute := dropEv(node, "NOT_SPECIFIED", "ip_error+0x5a", 17, "198.18.1.2:5000", "198.19.200.5:9")
	evil := dropEv(node, "NOT_SPECIFIED", "ip_error+0x5a", 17, "198.18.1.2:5000", "198.19.140.5:9")
	evil.Route = &route.Route{Type: "evil`type|x", Dst: netip.MustParsePrefix("198.19.140.0/24"), Table: 7}
	evilRule := dropEv(node, "NETFILTER_DROP", "nf_hook_slow+0x9e", 1, "198.18.7.1:0", "198.18.7.2:0")
	evilRule.ICMPType, evilRule.ICMPCode = 3, 4
	evilRule.Rule = &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
		Ref: netfilter.Ref{Table: "filter", Chain: "IN`PUT", Handle: 9, Verdict: "DROP", Comment: "a | <b>"}}

	rp := dropEv(node, "IP_RPFILTER", "ip_rcv_finish_core+0x1d0", 17, "198.18.40.2:4000", "198.18.31.1:9")
	rp.Count = 7
	paws := dropEv(node, "TCP_RFC7323_TW_PAWS", "tcp_v4_rcv+0x87", 6, "198.18.61.1:40000", "198.18.61.2:80")
	paws.TCPFlags, paws.Count = 2, 5
	rcvbuf := dropEv(node, "SOCKET_RCVBUFF", "__udp_queue_rcv_skb+0x1e4", 17, "198.18.60.1:5000", "198.18.60.2:5300")
	rcvbuf.Count = 9

	lines := []string{header}
	// a router beyond the recording: the dropped error says the MTU
	far := dropEv(far6, "NETFILTER_DROP", "nf_hook_slow+0x9e", 58, "[fd00:18:3::1]:0", "[fd00:18:3::2]:0")
	far.ICMPType, far.ICMPInfo, far.Count, far.Rule = 2, 1400, 2, noICMP
	lines = append(lines, encoded(1, tooBig, tooBig, fragDrop, fragDrop, fragSummary, echoDrop, pkt6, far)...)
	lines = append(lines, encoded(2, blackhole, noRoute, evil, evilRule, rp, paws, rcvbuf)...)
	lines = append(lines, trailer(0))
	if !strings.Contains(strings.Join(lines, "\n"), `"icmp":"frag-needed","icmp_type":3,"icmp_code":4`) {
		t.Fatalf("the encoder does not write the ICMP type of a dropped ICMP error:\n%s", strings.Join(lines, "\n"))
	}
	rec := read(t, lines...)
	fs := rec.Findings()
	all := dumpFindings(fs)
	byTitle := func(kind, sub string) Finding {
		t.Helper()
		for _, f := range findKind(fs, kind) {
			if strings.Contains(f.Title, sub) {
				return f
			}
		}
		t.Fatalf("no %s finding titled %q:\n%s", kind, sub, all)
		return Finding{}
	}

	if n := len(findKind(fs, "pmtu-black-hole")); n != 4 {
		t.Errorf("want 4 PMTU black holes (IPv4 with its router, IPv6 alone, IPv6 with the MTU it carried, the one with bad names), got %d:\n%s", n, all)
	}
	f := byTitle("pmtu-black-hole", "198.18.1.2")
	if f.Count != 42 || f.Severity != SevCritical {
		t.Errorf("IPv4 black hole: count %d severity %s, want 42 critical (2 events and a summary of 40)", f.Count, f.Severity)
	}
	wantAll(t, "black hole title", f.Title, "network namespace 4026532001 told 198.18.1.2 the path MTU is 1280",
		"network namespace 4026532002 dropped the ICMP error by rule filter/INPUT#3 DROP \"no icmp\"", "42 errors lost")
	wantAll(t, "black hole detail", f.Detail, "40 of them come from summary lines", "sent 2 such errors", "hang")
	wantAll(t, "black hole fix", f.Fix, "before rule filter/INPUT#3 DROP", "--icmp-type fragmentation-needed", "packet-too-big", "clamp-mss-to-pmtu", "tcp_mtu_probing")
	f = byTitle("pmtu-black-hole", "fd00:18:1::2")
	wantAll(t, "IPv6 black hole", f.Title, "3 ICMP too-big errors to fd00:18:1::2 dropped at network namespace 4026532003 (NETFILTER_DROP)")
	f = byTitle("pmtu-black-hole", "fd00:18:3::2")
	wantAll(t, "IPv6 black hole, router beyond", f.Title, "fd00:18:3::1 told fd00:18:3::2 the path MTU is 1400, but network namespace 4026532005 dropped the ICMP error by rule filter/INPUT#3", "2 errors lost")
	wantAll(t, "IPv6 black hole, router beyond", f.Detail, "and say the path MTU is 1400")
	if icmp := findKind(fs, "icmp"); len(icmp) != 0 {
		t.Errorf("the router's errors are told in the black hole, not again:\n%s", all)
	}
	if nf := findKind(fs, "netfilter-rule"); len(nf) != 1 || nf[0].Count != 1 || !strings.Contains(nf[0].Detail, "198.18.1.9") {
		t.Errorf("the dropped echo reply is a plain finding of its rule, not a black hole:\n%s", all)
	}

	f = byTitle("route", "blackhole 198.19.131.0/24")
	wantAll(t, "route", f.Title, "Route blackhole 198.19.131.0/24 on network namespace 4026532004 dropped 10 packets")
	wantAll(t, "route detail", f.Detail, "198.19.131.5:9", "deleted pod", "drops silently")
	wantAll(t, "route fix", f.Fix, "`ip route del blackhole 198.19.131.0/24`", "ip route get 198.19.131.5", "podCIDR")
	wantAll(t, "no route", byTitle("route", "No usable route").Fix, "ip route get DST", "table all")
	f = byTitle("route", "198.19.140.0/24")
	wantAll(t, "bad route type", f.Title, `"evil\x60type\x7cx" (invalid in this recording)`)
	wantAll(t, "bad route type fix", f.Fix, "ip route del TYPE PREFIX table 7")

	f = byTitle("rp-filter", "Strict reverse-path filter")
	wantAll(t, "rp_filter", f.Title, "dropped 7 packets from 198.18.40.2 (IP_RPFILTER)")
	wantAll(t, "rp_filter detail", f.Detail, "multi-homed", "IPReversePathFilter")
	wantAll(t, "rp_filter fix", f.Fix+f.Example, "ip route get SOURCE", "rp_filter=2", "rp_filter = 2")

	f = byTitle("paws", "PAWS")
	wantAll(t, "paws", f.Title, "5 segments to 198.18.61.2:80 rejected")
	wantAll(t, "paws detail", f.Detail, "TIME_WAIT", "PAWSTimewait", "behind a NAT", "different clocks")
	wantAll(t, "paws fix", f.Fix, "NAT", "tcp_tw_recycle", "4.12", "--random-fully")

	f = byTitle("receive-buffer", "UDP port 5300")
	wantAll(t, "receive buffer", f.Title, "9 datagrams dropped (SOCKET_RCVBUFF)")
	wantAll(t, "receive buffer detail", f.Detail, "UdpRcvbufErrors")
	wantAll(t, "receive buffer fix", f.Fix, "too slow", "SO_RCVBUF", "net.core.rmem_max", "read faster")

	f = byTitle("pmtu-black-hole", "198.18.7.2")
	wantAll(t, "bad rule names", f.Title, `filter/"IN\x60PUT" (invalid in this recording)#9 DROP "a \x7c \x3cb\x3e" (invalid in this recording)`)

	if n := len(findKind(fs, "drop-reason")); n != 0 {
		t.Errorf("drops left to the generic finding:\n%s", all)
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rec); err != nil {
		t.Fatal(err)
	}
	wantAll(t, "Markdown", md.String(), "Path MTU black hole", "Strict reverse-path filter", "TCP timestamps went backwards", "Receive buffer full", "Route blackhole 198.19.131.0/24")
	for _, bad := range []string{"evil`", "IN`PUT", "<b>"} {
		if strings.Contains(md.String(), bad) {
			t.Errorf("Markdown holds the file's %q unmarked", bad)
		}
	}
}

// The PMTU fix for a native nftables rule is an accept before it in its own
// chain: iptables' ACCEPT does not override a drop in another nftables
// table (adversary #14). Rules in iptables-nft's tables keep the iptables
// fix; names a shell would not take as they are get no command.
func TestNftAllowTooBig(t *testing.T) {
	rule := func(family, table, chain string, handle uint64) *RuleRef {
		return &RuleRef{Backend: netfilter.BackendNftables, Ref: Ref{Family: family, Table: table, Chain: chain, Handle: handle, Verdict: "DROP"}}
	}
	for _, c := range []struct {
		r    *RuleRef
		want string
	}{
		{rule("ip", "fw", "input", 7), "nft insert rule ip fw input position 7 icmp type destination-unreachable icmp code frag-needed accept"},
		{rule("ip6", "fw", "input", 7), "nft insert rule ip6 fw input position 7 icmpv6 type packet-too-big accept"},
		{rule("inet", "fw", "in", 3), "nft insert rule inet fw in position 3 icmp type destination-unreachable icmp code frag-needed accept; nft insert rule inet fw in position 3 icmpv6 type packet-too-big accept"},
		{rule("ip", "filter", "INPUT", 3), ""}, // iptables-nft's: the iptables fix
		{rule("inet", "fw;rm", "in", 3), ""},   // not a name a shell takes
		{rule("inet", "fw", "in", 0), ""},      // no handle
		{&RuleRef{Backend: netfilter.BackendLegacy, Ref: Ref{Family: "ip", Table: "filter", Chain: "INPUT", Position: 2}}, ""},
		{nil, ""},
	} {
		if got := nftAllowTooBig(c.r); got != c.want {
			t.Errorf("%+v: got %q, want %q", c.r, got, c.want)
		}
	}
}
