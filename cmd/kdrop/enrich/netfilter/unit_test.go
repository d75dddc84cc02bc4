package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer"
)

// What nft and iptables-nft emit for addresses, prefixes and ports,
// evaluated against a packet; what kdrop cannot evaluate is "maybe".
func TestMatches(t *testing.T) {
	ev := &tracer.Event{Type: tracer.Drop, Family: 4, Proto: unix.IPPROTO_UDP,
		Src: netip.MustParseAddrPort("10.1.2.3:40000"), Dst: netip.MustParseAddrPort("10.9.0.1:53")}
	l4 := func(p byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}}}
	}
	dport := func(op expr.CmpOp, p uint16) []expr.Any {
		return []expr.Any{&expr.Payload{Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2, DestRegister: 1},
			&expr.Cmp{Op: op, Register: 1, Data: []byte{byte(p >> 8), byte(p)}}}
	}
	saddr8 := func(a string) []expr.Any { // ip saddr a/8
		return []expr.Any{&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4, DestRegister: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: netip.MustParseAddr(a).AsSlice()}}
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return append(out, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	for _, c := range []struct {
		name  string
		fam   nftables.TableFamily
		exprs []expr.Any
		want  matchResult
	}{
		{"udp dport 53", nftables.TableFamilyIPv4, cat(l4(unix.IPPROTO_UDP), dport(expr.CmpOpEq, 53)), matchYes},
		{"udp dport 54", nftables.TableFamilyIPv4, cat(l4(unix.IPPROTO_UDP), dport(expr.CmpOpEq, 54)), matchNo},
		{"tcp", nftables.TableFamilyIPv4, cat(l4(unix.IPPROTO_TCP)), matchNo},
		{"udp dport != 54", nftables.TableFamilyINet, cat(l4(unix.IPPROTO_UDP), dport(expr.CmpOpNeq, 54)), matchYes},
		{"ip saddr 10.0.0.0/8", nftables.TableFamilyIPv4, cat(saddr8("10.0.0.0")), matchYes},
		{"ip saddr 11.0.0.0/8", nftables.TableFamilyIPv4, cat(saddr8("11.0.0.0")), matchNo},
		{"ip6 table", nftables.TableFamilyIPv6, cat(), matchNo},
		{"a set", nftables.TableFamilyIPv4, cat(l4(unix.IPPROTO_UDP), []expr.Any{&expr.Lookup{SetName: "s"}}), matchMaybe},
		{"a set, but tcp", nftables.TableFamilyIPv4, cat([]expr.Any{&expr.Lookup{SetName: "s"}}, l4(unix.IPPROTO_TCP)), matchNo},
		{"xt comment only", nftables.TableFamilyIPv4, cat([]expr.Any{&expr.Match{Name: "comment"}}), matchYes},
		{"xt statistic", nftables.TableFamilyIPv4, cat([]expr.Any{&expr.Match{Name: "statistic"}}), matchMaybe},
	} {
		ri := &ruleInfo{family: byte(c.fam), exprs: c.exprs}
		if got := matches(ri, ev); got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, got, c.want)
		}
	}
}

// Comments from the kernel are bounded and printable, whatever they hold.
func TestComments(t *testing.T) {
	raw := xt.Unknown(append([]byte("drop \x1b[31mred\xff"), make([]byte, 300)...))
	if got := xtComment(&raw); got != "drop ?[31mred\uFFFD" {
		t.Errorf("raw xt comment: %q", got)
	}
	c := xt.Comment("kube-proxy: svc shop/cart has no endpoints")
	if got := xtComment(&c); got != string(c) {
		t.Errorf("xt comment: %q", got)
	}
	long := strings.Repeat("é", 200)
	if got := cleanComment([]byte(long)); len(got) > maxComment+2 {
		t.Errorf("comment of %d bytes kept %d", len(long), len(got))
	}
	for _, c := range []struct {
		exprs []expr.Any
		fam   nftables.TableFamily
		want  string
	}{
		{[]expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}, nftables.TableFamilyIPv4, "DROP"},
		{[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}, nftables.TableFamilyIPv4, ""},
		{[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}}, nftables.TableFamilyINet, "REJECT tcp-reset"},
		{[]expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}}, nftables.TableFamilyINet, "REJECT icmpx-admin-prohibited"},
		{[]expr.Any{&expr.Target{Name: "REJECT", Info: &xt.Unknown{3, 0, 0, 0}}}, nftables.TableFamilyIPv4, "REJECT icmp-port-unreachable"},
		{[]expr.Any{&expr.Target{Name: "REJECT", Info: &xt.Unknown{4, 0, 0, 0}}}, nftables.TableFamilyIPv6, "REJECT icmp6-port-unreachable"},
		{[]expr.Any{&expr.Target{Name: "REJECT", Info: &xt.Unknown{1}}}, nftables.TableFamilyIPv4, "REJECT ?"},
	} {
		if got := fixRejectFamily(verdictOf(c.exprs), c.fam); got != c.want {
			t.Errorf("verdict of %v: %q, want %q", c.exprs, got, c.want)
		}
	}
}

// Netlink errors, which the library wraps with %v, map to short whys.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want error
	}{
		{fmt.Errorf("receiveAckAware: %v", unix.EPERM), errPermission},
		{fmt.Errorf("x: %w", unix.ENOENT), errDeleted},
		{fmt.Errorf("receiveAckAware: %v", unix.EINTR), errChanged},
	} {
		if got := classify(c.err); !errors.Is(got, c.want) {
			t.Errorf("classify(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestWants(t *testing.T) {
	for _, c := range []struct {
		ev   tracer.Event
		want bool
	}{
		{tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x3e8"}, true},
		{tracer.Event{Type: tracer.Drop, Reason: "NETFILTER_DROP", Summary: true}, true},
		{tracer.Event{Type: tracer.Drop, Reason: "unknown", Location: "nf_hook_slow+0x9a"}, true}, // before 5.17
		{tracer.Event{Type: tracer.Drop, Reason: "unknown", Summary: true}, false},                // no location: cannot tell
		{tracer.Event{Type: tracer.Drop, Reason: "NO_SOCKET", Location: "nf_hook_slow+0x9a"}, false},
		{tracer.Event{Type: tracer.Unreachable, Reason: "NETFILTER_DROP"}, false},
	} {
		if got := Wants(&c.ev); got != c.want {
			t.Errorf("Wants(%+v) = %v", c.ev, got)
		}
	}
}

// Interval sets as the kernel dumps them (a single key type: a start
// element and an end flagged at the first key past the range; a
// concatenation: KeyEnd, inclusive), and a lookup of a prefix load.
func TestIntervalSetLookup(t *testing.T) {
	ip := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	mk := func(nftables.SetElement) *element { return &element{} }
	single := intervals([]nftables.SetElement{ // {10.96.0.0/16, 192.0.2.0/24}, dumped high to low
		{Key: ip("192.0.3.0"), IntervalEnd: true}, {Key: ip("192.0.2.0")},
		{Key: ip("10.97.0.0"), IntervalEnd: true}, {Key: ip("10.96.0.0")},
	}, mk)
	concat := intervals([]nftables.SetElement{{Key: ip("10.0.0.0"), KeyEnd: ip("10.0.0.255")}}, mk)
	s := &setInfo{keyLen: 4, ranges: single}
	for addr, want := range map[string]bool{"10.96.0.0": true, "10.96.255.255": true, "10.97.0.0": false, "10.95.255.255": false,
		"192.0.2.77": true, "192.0.3.0": false} {
		if _, got := s.find(ip(addr)); got != want {
			t.Errorf("%s in {10.96.0.0/16, 192.0.2.0/24}: %v, want %v", addr, got, want)
		}
	}
	c := &setInfo{keyLen: 4, ranges: concat}
	if _, ok := c.find(ip("10.0.0.255")); !ok {
		t.Error("10.0.0.255 not in 10.0.0.0-10.0.0.255")
	}
	// ip saddr != @s drop, for a packet from 10.96.1.1 (in: no match) and
	// from 10.1.2.3 (out: match)
	ri := &ruleInfo{family: byte(nftables.TableFamilyIPv4), sets: map[string]*setInfo{"s": s}, exprs: []expr.Any{
		&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4, DestRegister: 1},
		&expr.Lookup{SourceRegister: 1, SetName: "s", Invert: true}, &expr.Verdict{Kind: expr.VerdictDrop}}}
	for src, want := range map[string]matchResult{"10.96.1.1": matchNo, "10.1.2.3": matchYes} {
		ev := &tracer.Event{Family: 4, Proto: unix.IPPROTO_UDP, Src: netip.AddrPortFrom(netip.MustParseAddr(src), 1), Dst: netip.MustParseAddrPort("192.0.2.1:2")}
		if got := matches(ri, ev); got != want {
			t.Errorf("from %s: %v, want %v", src, got, want)
		}
	}
	// ip daddr 10.96.0.0/16 as nft emits it: a 2-byte load
	ri = &ruleInfo{family: byte(nftables.TableFamilyIPv4), exprs: []expr.Any{
		&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 2, DestRegister: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 96}}, &expr.Verdict{Kind: expr.VerdictDrop}}}
	ev := &tracer.Event{Family: 4, Proto: unix.IPPROTO_UDP, Dst: netip.MustParseAddrPort("192.0.2.100:443")}
	if got := matches(ri, ev); got != matchNo {
		t.Errorf("ip daddr 10.96.0.0/16 for 192.0.2.100: %v, want no", got)
	}
}
