package report

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// nfDrop is a NETFILTER_DROP line as kdrop writes it (line.AppendEvent),
// at seconds after t0, from src to dst (udp), by rule r.
func nfDrop(at float64, count uint64, src, dst string, r *netfilter.Rule) string {
	e := line.Event{Event: tracer.Event{Time: t0.Add(time.Duration(at * float64(time.Second))), Type: tracer.Drop, Count: count, Summary: count > 1,
		Source: "tp_btf", Netns: 4026532301, Family: 4, Proto: 17, Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst),
		Reason: "NETFILTER_DROP", ReasonCode: 6, Location: "nft_do_chain+0x46f"}, Node: "n1", Rule: r}
	return string(line.AppendEvent(nil, &e))
}

// One finding per rule the recording names, with its backend, family,
// table, chain, handle or position, comment, verdict, how it was named,
// the flows it dropped and a command to see it; an ambiguous drop lists
// its candidates. Names from the recording reach a command only when
// they pass their check.
func TestRuleFindings(t *testing.T) {
	udpDrop := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
		Ref: netfilter.Ref{Family: "ip", Table: "filter", Chain: "INPUT", Handle: 12, Comment: "a1 udp drop", Verdict: "DROP", Packets: 30}}
	nth := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowMatch,
		Ref: netfilter.Ref{Family: "inet", Table: "fw", Chain: "in", Handle: 7, Comment: "nth drop", Verdict: "REJECT icmpx-admin-prohibited"}}
	legacy := &netfilter.Rule{Backend: netfilter.BackendLegacy, How: netfilter.HowCounter,
		Ref: netfilter.Ref{Family: "ip6", Table: "filter", Chain: "KDROP", Position: 3, Comment: "legacy rule", Verdict: "REJECT icmp6-port-unreachable"}}
	both := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter, Candidates: []netfilter.Ref{
		{Family: "ip", Table: "filter", Chain: "INPUT", Handle: 20, Comment: "first", Verdict: "DROP"},
		{Family: "ip", Table: "filter", Chain: "FORWARD", Handle: 21, Verdict: "DROP"}}}
	// names no check lets through: a C1 control, a bidi override, an ESC
	// in a chain, a quote in a comment
	hostile := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
		Ref: netfilter.Ref{Family: "ip", Table: "filter", Chain: "IN\x1b[2JPUT", Handle: 5, Comment: "evil\u009b\u202e' ; rm -rf / #", Verdict: "DROP"}}
	quote := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
		Ref: netfilter.Ref{Family: "ip", Table: "filter", Chain: "OUTPUT", Handle: 6, Comment: "it's", Verdict: "DROP"}}
	lines := []string{header,
		nfDrop(1, 30, "10.0.0.2:4000", "10.0.0.1:9999", udpDrop),
		nfDrop(2, 10, "10.0.0.3:4000", "10.0.0.1:9999", udpDrop),
		nfDrop(3, 4, "10.0.0.2:4001", "10.0.0.1:7777", nth),
		nfDrop(4, 3, "10.0.0.2:4002", "10.0.0.1:53", legacy),
		nfDrop(5, 2, "10.0.0.2:4003", "10.0.0.1:8080", both),
		nfDrop(6, 1, "10.0.0.2:4004", "10.0.0.1:1", hostile),
		nfDrop(7, 1, "10.0.0.2:4005", "10.0.0.1:2", quote),
		nfDrop(8, 5, "10.0.0.2:4006", "10.0.0.1:3", &netfilter.Rule{Backend: netfilter.BackendNftables, Unknown: "network namespace gone"}),
		trailer(0),
	}
	rec := read(t, lines...)
	fs := rec.Findings()
	rules := findKind(fs, "netfilter-rule")
	if len(rules) != 6 {
		t.Fatalf("want 6 rule findings, got %d:\n%s", len(rules), dumpFindings(fs))
	}
	byTitle := func(sub string) Finding {
		t.Helper()
		for _, f := range rules {
			if strings.Contains(f.Title, sub) {
				return f
			}
		}
		t.Fatalf("no rule finding titled %q:\n%s", sub, dumpFindings(rules))
		return Finding{}
	}
	f := byTitle(`ip filter/INPUT#12 DROP "a1 udp drop"`)
	if f.Count != 40 {
		t.Errorf("a1 udp drop: count %d, want 40", f.Count)
	}
	wantAll(t, "a1 detail", f.Detail, "rule handle 12 of chain INPUT in table ip filter (nftables; verdict DROP; comment \"a1 udp drop\")", "time out",
		"its counter moved", "10.0.0.2 → 10.0.0.1 UDP port 9999 (30)", "10.0.0.3 → 10.0.0.1 UDP port 9999 (10)")
	wantAll(t, "a1 fix", f.Fix, "`nft -a list chain ip filter INPUT`", "`# handle 12`", "`iptables-save -t filter | grep -n -- 'a1 udp drop'`",
		"If this rule should not drop this traffic")

	f = byTitle(`inet fw/in#7 REJECT icmpx-admin-prohibited "nth drop"`)
	wantAll(t, "nth", f.Detail+f.Fix, "no counter, and its expressions match", "`nft -a list chain inet fw in`")
	if strings.Contains(f.Fix, "iptables-save") {
		t.Errorf("an inet table's rule is no iptables-nft rule:\n%s", f.Fix)
	}
	f = byTitle(`ip6 filter/KDROP:3 REJECT icmp6-port-unreachable "legacy rule"`)
	wantAll(t, "legacy", f.Detail+f.Fix, "rule 3 of chain KDROP in table ip6 filter (iptables-legacy; verdict REJECT icmp6-port-unreachable", "ICMP error", "`ip6tables-legacy -t filter -S KDROP 3`",
		"`ip6tables-legacy-save -t filter | grep -n -- 'legacy rule'`")

	f = byTitle("One of 2 netfilter rules")
	wantAll(t, "ambiguous", f.Detail+f.Fix, `ip filter/FORWARD#21 DROP`, `ip filter/INPUT#20 DROP "first"`, "could not tell which",
		"`nft -a list chain ip filter FORWARD`", "`nft -a list chain ip filter INPUT`", "tell the candidates apart")

	f = byTitle(`OUTPUT#6`)
	wantAll(t, "quote", f.Title, `"it's" (invalid in this recording)`)
	if strings.Contains(f.Fix, "grep") {
		t.Errorf("a comment with a quote went into a grep command:\n%s", f.Fix)
	}
	f = byTitle(invalidMark)
	for _, bad := range []string{"\x1b", "\u009b", "\u202e", "rm -rf / #'"} {
		if strings.Contains(f.Title+f.Detail+f.Fix, bad) {
			t.Errorf("the hostile rule's finding carries %q:\n%s", bad, dumpFindings([]Finding{f}))
		}
	}
	wantAll(t, "hostile", f.Fix, "`nft -a list ruleset`", "cannot go on a command line")
	checkCommands(t, fs)

	// the drop without a rule stays a finding of its flow
	if got := findKind(fs, "netfilter"); len(got) != 1 || got[0].Count != 5 || !strings.Contains(got[0].Detail, "could not name the rule: network namespace gone (5)") {
		t.Errorf("want the unnamed drop as one netfilter finding:\n%s", dumpFindings(fs))
	}
	// and every rule shows in both renderings
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rec); err != nil {
		t.Fatal(err)
	}
	page := renderHTML(t, rec)
	for _, c := range []string{"a1 udp drop", "nth drop", "legacy rule", "KDROP"} {
		if !strings.Contains(md.String(), c) || !strings.Contains(page, c) {
			t.Errorf("%q is not in the Markdown and the HTML", c)
		}
	}
	checkMarkdown(t, md.String(), []string{hostile.Chain, hostile.Comment})
	checkHTML(t, page, []string{hostile.Chain, hostile.Comment})
}

// A recording naming more distinct rules than a report keeps: the rules
// past maxRules are left out of their flows, said in a note, counts exact;
// the findings stay a page.
func TestManyRulesBounded(t *testing.T) {
	lines := []string{header}
	const n = maxRules + 10
	for i := range n {
		r := &netfilter.Rule{Backend: netfilter.BackendNftables, How: netfilter.HowCounter,
			Ref: netfilter.Ref{Family: "ip", Table: "filter", Chain: "INPUT", Handle: uint64(i + 1), Verdict: "DROP"}}
		lines = append(lines, nfDrop(float64(i%60), 1, "10.0.0.2:4000", "10.0.0.1:9999", r))
	}
	rec := read(t, lines...)
	if rec.Total() != n {
		t.Errorf("total %d, want %d", rec.Total(), n)
	}
	wantAll(t, "notes", strings.Join(rec.Notes, "\n"), "more than 20000 distinct netfilter rules: 10 events past that are shown without their rule")
	if got := len(findKind(rec.Findings(), "netfilter-rule")); got == 0 || got > MaxFindings {
		t.Errorf("%d rule findings, want 1 to %d", got, MaxFindings)
	}
}
