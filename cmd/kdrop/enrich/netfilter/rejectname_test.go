package netfilter

import "testing"

// Native rejects are named as nft names them, per family: the same code
// means host-unreachable in ICMP and admin-prohibited in ICMPv6; an inet
// table's code is read in the packet's family.
func TestRejectNames(t *testing.T) {
	for _, c := range []struct {
		verdict, family string
		v6              bool
		want            string
	}{
		{"REJECT icmp-code-3", "ip", false, "REJECT icmp-port-unreachable"},
		{"REJECT icmp-code-1", "ip", false, "REJECT icmp-host-unreachable"},
		{"REJECT icmp-code-1", "ip6", false, "REJECT icmpv6-admin-prohibited"},
		{"REJECT icmp-code-4", "ip6", false, "REJECT icmpv6-port-unreachable"},
		{"REJECT icmp-code-13", "ip", true, "REJECT icmp-admin-prohibited"},
		{"REJECT icmp-code-3", "inet", false, "REJECT icmp-port-unreachable"},
		{"REJECT icmp-code-3", "inet", true, "REJECT icmpv6-addr-unreachable"},
		{"REJECT icmp-code-2", "ip6", false, "REJECT icmpv6-code-2"},
		{"REJECT icmp-code-7", "ip", false, "REJECT icmp-code-7"},
		{"REJECT icmpx-port-unreachable", "inet", true, "REJECT icmpx-port-unreachable"},
		{"REJECT icmp-code-x", "ip", false, "REJECT icmp-code-x"},
		{"DROP", "ip6", true, "DROP"},
	} {
		if got := rejectName(c.verdict, c.family, c.v6); got != c.want {
			t.Errorf("%s in %s (v6 %v): %q, want %q", c.verdict, c.family, c.v6, got, c.want)
		}
	}
	r := &Rule{Ref: Ref{Family: "ip6", Verdict: "REJECT icmp-code-1"},
		Candidates: []Ref{{Family: "ip", Verdict: "REJECT icmp-code-1"}, {Family: "ip6", Verdict: "REJECT icmp-code-0"}}}
	r.nameRejects(false)
	if r.Verdict != "REJECT icmpv6-admin-prohibited" || r.Candidates[0].Verdict != "REJECT icmp-host-unreachable" || r.Candidates[1].Verdict != "REJECT icmpv6-no-route" {
		t.Errorf("named: %+v", r)
	}
}
