package tracer

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// testReasons is a kernel's drop-reason table, value = index.
func testReasons(names ...string) *Reasons {
	r := &Reasons{byName: map[string]uint32{}}
	for i, n := range names {
		r.core = append(r.core, n)
		r.byName[n] = uint32(i)
	}
	return r
}

// kernelPasses is a transcription of what bpf/kdrop.bpf.c does with a
// kernelFilter: skip_reason for drops (kfree_skb), then pass_filters, with
// addr_match looking the address up in the trie's keys.
func kernelPasses(k kernelFilter, r *rawEvent) bool {
	if EventType(r.Type) == Drop {
		switch {
		case r.Reason>>16 != 0:
			if k.skipSubsys != 0 {
				return false
			}
		case r.Reason >= 16*64:
		case (k.reasonSkip[(r.Reason>>6)&15]>>(r.Reason&63))&1 != 0:
			return false
		}
		if r.Reason == k.placeReason {
			for i := uint32(0); i < k.benignN; i++ {
				if r.Location >= k.benignPC[2*i] && r.Location < k.benignPC[2*i+1] {
					return false
				}
			}
			if k.hideMulti != 0 && r.Flags&flagLinkMulti != 0 {
				return false
			}
		}
	}
	if k.netns != 0 && r.Netns != k.netns {
		return false
	}
	if k.proto != 0 && r.Proto != k.proto {
		return false
	}
	if k.port != 0 && r.Sport != k.port && r.Dport != k.port {
		return false
	}
	if k.addrFilter != 0 && !kernelAddrMatch(k, r.Saddr, r.Family) && !kernelAddrMatch(k, r.Daddr, r.Family) {
		return false
	}
	return true
}

func kernelAddrMatch(k kernelFilter, a [16]byte, family uint8) bool {
	var key [16]byte
	switch family {
	case 4:
		key[10], key[11] = 0xff, 0xff
		copy(key[12:], a[:4])
	case 6:
		key = a
	default:
		return false
	}
	for _, p := range k.addrKeys {
		if netip.PrefixFrom(netip.AddrFrom16(p.Addr), int(p.Prefixlen)).Contains(netip.AddrFrom16(key)) {
			return true
		}
	}
	return false
}

func rawAddr(s string) (b [16]byte) {
	a := netip.MustParseAddr(s)
	if a.Is4() {
		v4 := a.As4()
		copy(b[:], v4[:])
		return b
	}
	return a.As16()
}

// TestFilterMatchMirrorsKernel: for every filter and event of a table,
// Match decides as the kernel side configured from the same Filter does
// (needs no root: the kernel side is its configuration, run through a
// transcription of the C).
func TestFilterMatchMirrorsKernel(t *testing.T) {
	r := testReasons("NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED", "NO_SOCKET", "",
		"OTHERHOST", "TCP_CLOSE", "TCP_RESET", "NETFILTER_DROP", "TCP_OLD_DATA", "QUEUE_PURGE")
	// a kallsyms with one benign place between two other functions
	syms := filepath.Join(t.TempDir(), "kallsyms")
	os.WriteFile(syms, []byte("ffffffff81000000 T ip_error\nffffffff81000100 t ip6_mc_input\nffffffff81000200 T ip6_input\n"), 0o644)
	tr := &Tracer{Reasons: r, Symbols: NewSymbolizer(syms)}
	r.subsysOnce.Do(func() {}) // no module BTF: subsystem reasons print as numbers
	prefixes := func(ss ...string) (out []netip.Prefix) {
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	filters := []Filter{
		{},
		{IncludeBenign: true},
		{Reasons: []string{"no_socket", "SKB_DROP_REASON_TCP_RESET"}},
		{Reasons: []string{"OTHERHOST"}, IncludeBenign: true},
		{Types: []EventType{ListenOverflow}},
		{Types: []EventType{Drop, ListenOverflow}, Reasons: []string{"NO_SOCKET"}},
		{Netns: 42},
		{Proto: 17},
		{Port: 53},
		{Port: 1234, Proto: 6},
		{CIDRs: prefixes("10.0.0.0/8")},
		{CIDRs: prefixes("10.1.2.3/32", "2001:db8::2/128")},
		{CIDRs: prefixes("2001:db8::/32")},
		{CIDRs: prefixes("::/0")},
		{CIDRs: prefixes("::ffff:192.168.0.0/112")},
		{CIDRs: prefixes("192.168.1.7/32"), Port: 53, Netns: 42},
	}
	type pkt struct {
		family       uint8
		proto        uint8
		src, dst     string
		sport, dport uint16
	}
	pkts := []pkt{
		{4, 17, "10.1.2.3", "192.168.1.7", 1234, 53},
		{6, 6, "2001:db8::1", "2001:db8::2", 1234, 80},
		{6, 6, "::ffff:10.0.0.5", "::ffff:192.168.9.9", 4000, 53},
		{6, 58, "fe80::1", "ff02::1", 0, 0},
		{0, 0, "", "", 0, 0},
	}
	var raws []rawEvent
	for _, p := range pkts {
		base := rawEvent{Netns: 42, Family: p.family, Proto: p.proto, Sport: p.sport, Dport: p.dport}
		if p.family != 0 {
			base.Saddr, base.Daddr = rawAddr(p.src), rawAddr(p.dst)
		}
		for _, reason := range []uint32{0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 3<<16 | 1} {
			// at a benign place, before, at its end, after
			for _, pc := range []uint64{0xffffffff81000104, 0xffffffff810000f0, 0xffffffff81000200, 0} {
				for _, fl := range []uint8{0, flagLinkMulti} {
					e := base
					e.Type, e.Reason, e.Location, e.Flags = uint8(Drop), reason, pc, fl
					raws = append(raws, e)
				}
			}
		}
		e := base
		e.Type, e.Queue = uint8(ListenOverflow), uint8(QueueSYN)
		raws = append(raws, e)
		e = base
		e.Type, e.IcmpType, e.IcmpCode, e.Netns = uint8(Unreachable), 3, 3, 7
		raws = append(raws, e)
	}
	for i, f := range filters {
		k, err := f.kernel(r)
		if err != nil {
			t.Fatalf("filter %d %+v: %v", i, f, err)
		}
		k.benignPlaces(&f, r, tr.Symbols)
		if f.hidesBenign() != (k.benignN == 1) {
			t.Fatalf("filter %d %+v: %d benign places resolved", i, f, k.benignN)
		}
		tr.opts.Filter = f
		for j := range raws {
			var ev Event
			tr.fill(&raws[j], &ev)
			kernel := tr.wants(ev.Type) && kernelPasses(k, &raws[j])
			if wildcardListener(&ev) {
				// An overflow without addresses comes from sock_diag
				// alone (the kernel side never sees one): it passes a
				// CIDR filter, and the rest of the filter as the kernel's.
				g := f
				g.CIDRs = nil
				kg, _ := g.kernel(r)
				kg.benignPlaces(&g, r, tr.Symbols)
				kernel = tr.wants(ev.Type) && kernelPasses(kg, &raws[j])
			}
			if got := f.Match(&ev); got != kernel {
				t.Errorf("filter %d %+v, event %s %s reason %q %v -> %v: Match %v, kernel side %v",
					i, f, ev.Type, ProtoName(ev.Proto), ev.Reason, ev.Src, ev.Dst, got, kernel)
			}
		}
	}
}

// TestFilterMatch pins the cases where the three filters used to differ.
func TestFilterMatch(t *testing.T) {
	v4 := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	cidr := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, c := range []struct {
		name string
		f    Filter
		ev   Event
		want bool
	}{
		{"benign hidden by default", Filter{}, Event{Type: Drop, Reason: "OTHERHOST"}, false},
		{"benign with IncludeBenign", Filter{IncludeBenign: true}, Event{Type: Drop, Reason: "TCP_RESET"}, true},
		{"benign when named", Filter{Reasons: []string{"tcp_close"}}, Event{Type: Drop, Reason: "TCP_CLOSE"}, true},
		{"reasons restrict drops only", Filter{Reasons: []string{"NO_SOCKET"}}, Event{Type: ListenOverflow}, true},
		{"reasons exclude other drops", Filter{Reasons: []string{"NO_SOCKET"}}, Event{Type: Drop, Reason: "NETFILTER_DROP"}, false},
		{"subsystem reasons only without Reasons", Filter{Reasons: []string{"NO_SOCKET"}}, Event{Type: Drop, ReasonCode: 3<<16 | 1, Reason: "X"}, false},
		{"IPv4 CIDR, IPv4-mapped address", Filter{CIDRs: cidr}, Event{Type: Drop, Reason: "NO_SOCKET", Family: 6, Dst: netip.MustParseAddrPort("[::ffff:10.0.0.1]:80")}, true},
		{"::/0 covers IPv4, as in the trie", Filter{CIDRs: []netip.Prefix{netip.MustParsePrefix("::/0")}}, Event{Type: Drop, Reason: "NO_SOCKET", Family: 4, Src: v4("192.0.2.1:1")}, true},
		{"no address matches no CIDR", Filter{CIDRs: []netip.Prefix{netip.MustParsePrefix("::/0")}}, Event{Type: Drop, Reason: "NO_SOCKET"}, false},
		{"sock_diag remainder has no port", Filter{Port: 80}, Event{Type: ListenOverflow, Proto: 6}, false},
		{"sock_diag remainder is TCP", Filter{Proto: 17}, Event{Type: ListenOverflow, Proto: 6}, false},
		{"NOT_SPECIFIED is shown", Filter{}, Event{Type: Drop, Reason: "NOT_SPECIFIED", Location: "ip_error+0x4c"}, true},
		{"NOT_SPECIFIED at a benign place is not", Filter{}, Event{Type: Drop, Reason: "NOT_SPECIFIED", Location: "ip6_mc_input+0x1c5"}, false},
		{"benign place with IncludeBenign", Filter{IncludeBenign: true}, Event{Type: Drop, Reason: "NOT_SPECIFIED", Location: "ip6_mc_input+0x1c5"}, true},
		{"benign place before 5.17", Filter{}, Event{Type: Drop, Reason: "unknown", Location: "ip6_mc_input+0x1c5"}, false},
		{"another reason at a benign place", Filter{}, Event{Type: Drop, Reason: "NO_SOCKET", Location: "ip6_mc_input+0x1c5"}, true},
		{"NOT_SPECIFIED of a link broadcast", Filter{}, Event{Type: Drop, Reason: "NOT_SPECIFIED", Location: "__udp4_lib_rcv+0xbbf", LinkMulti: true}, false},
		{"another reason of a link broadcast", Filter{}, Event{Type: Drop, Reason: "IP_INHDR", Location: "ip_rcv_finish_core+0x25b", LinkMulti: true}, true},
		{"listener on a mapped address", Filter{CIDRs: cidr, Port: 80}, Event{Type: ListenOverflow, Proto: 6, Dst: netip.MustParseAddrPort("[::ffff:10.1.1.1]:80")}, true},
	} {
		if got := c.f.Match(&c.ev); got != c.want {
			t.Errorf("%s: Match = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestIsBenign(t *testing.T) {
	for n, want := range map[string]bool{
		"TCP_OLD_DATA": true, "skb_drop_reason_tcp_reset": true, " OTHERHOST": true, "TCP_CLOSE": true,
		"NO_SOCKET": false, "NETFILTER_DROP": false, "unknown": false, "NOT_SPECIFIED": false,
	} {
		if got := IsBenign(n); got != want {
			t.Errorf("IsBenign(%q) = %v, want %v", n, got, want)
		}
	}
}
