package report

import (
	"strings"
	"testing"
)

// rule is a line's rule object with its Kubernetes meaning, as kdrop
// writes it.
func rule(chain, verdict string, k8s map[string]any) map[string]any {
	return map[string]any{"backend": "nftables", "family": "ip", "table": "filter", "chain": chain, "handle": 12,
		"verdict": verdict, "how": "counter", "k8s": k8s}
}

// One finding per meaning and Service or policy, with the fix, from the
// rule.k8s fields alone; a kube-proxy no-endpoints rule joins the Service's
// no-endpoints finding instead of making a second one.
func TestMeaningFindings(t *testing.T) {
	nodeWhere := map[string]any{"kind": "node", "name": "n1"}
	lines := []string{header,
		ev(10, "drop", 40, map[string]any{"src": "10.244.1.3", "dst": "10.96.0.20", "dport": 80, "reason": "NETFILTER_DROP", "proto": "udp",
			"src_k8s": frontendPod, "where_k8s": nodeWhere,
			"rule": rule("KUBE-SERVICES", "REJECT icmp-port-unreachable", map[string]any{"meaning": "no-endpoints", "engine": "kube-proxy",
				"service": "shop/cart:http", "text": "Service shop/cart:http has no endpoints"})}),
		ev(11, "drop", 9, map[string]any{"src": "203.0.113.7", "dst": "192.0.2.2", "dport": 30080, "reason": "NETFILTER_DROP", "where_k8s": nodeWhere,
			"rule": rule("KUBE-EXTERNAL-SERVICES", "DROP", map[string]any{"meaning": "no-local-endpoints", "engine": "kube-proxy",
				"service": "shop/web:http", "text": "Service shop/web:http has no local endpoints (externalTrafficPolicy: Local)"})}),
		ev(12, "drop", 3, map[string]any{"src": "10.244.1.3", "dst": "10.244.0.9", "dport": 5432, "reason": "NETFILTER_DROP",
			"src_k8s": frontendPod, "dst_k8s": apiPod,
			"rule": map[string]any{"backend": "nftables", "unknown": "no drop rule's counter moved and none matches",
				"k8s": map[string]any{"meaning": "network-policy", "direction": "ingress",
					"network_policy": []map[string]any{{"namespace": "web", "name": "db-ingress"}}}}}),
		ev(13, "drop", 2, map[string]any{"src": "10.244.1.3", "dst": "10.244.0.9", "dport": 443, "reason": "NETFILTER_DROP",
			"rule": rule("KUBE-FORWARD", "DROP", map[string]any{"meaning": "invalid-conntrack", "engine": "kube-proxy"})}),
		ev(14, "drop", 1, map[string]any{"src": "10.0.0.1", "dst": "127.0.0.1", "dport": 30080, "reason": "NETFILTER_DROP",
			"rule": rule("KUBE-FIREWALL", "DROP", map[string]any{"meaning": "martian-localhost", "engine": "kube-proxy"})}),
		ev(15, "drop", 4, map[string]any{"src": "198.51.100.9", "dst": "192.0.2.50", "dport": 443, "reason": "NETFILTER_DROP",
			"rule": rule("KUBE-PROXY-FIREWALL", "DROP", map[string]any{"meaning": "source-range", "engine": "kube-proxy", "service": "shop/lb:https"})}),
		// a meaning this kdrop does not know, and names that are not names
		ev(16, "drop", 5, map[string]any{"src": "10.0.0.2", "dst": "10.0.0.3", "dport": 1, "reason": "NETFILTER_DROP",
			"rule": rule("X", "DROP", map[string]any{"meaning": "future-kind", "service": "a/b:c"})}),
		ev(17, "drop", 6, map[string]any{"src": "10.0.0.2", "dst": "10.0.0.4", "dport": 2, "reason": "NETFILTER_DROP",
			"rule": rule("KUBE-PROXY-FIREWALL", "DROP", map[string]any{"meaning": "source-range", "service": "Bad NS/`x`:|p"})}),
		trailer(0),
	}
	fs := read(t, lines...).Findings()
	one := func(kind string) Finding { t.Helper(); return oneFinding(t, fs, kind) }
	f := one("no-endpoints")
	if f.Count != 40 || f.Severity != SevCritical {
		t.Errorf("no-endpoints: count %d severity %s", f.Count, f.Severity)
	}
	wantAll(t, "no-endpoints title", f.Title, "Service shop/cart has no ready endpoints")
	wantAll(t, "no-endpoints detail", f.Detail, "kube-proxy's own rule for this Service", "Rule: ip filter/KUBE-SERVICES#12 REJECT icmp-port-unreachable.")
	wantAll(t, "no-endpoints fix", f.Fix, "readinessProbe", "scaled above 0")

	f = one("no-local-endpoints")
	wantAll(t, "no-local-endpoints title", f.Title, "externalTrafficPolicy: Local on Service shop/web and no endpoint on node n1", "9 packets dropped")
	wantAll(t, "no-local-endpoints detail", f.Detail, "Rule: ip filter/KUBE-EXTERNAL-SERVICES#12 DROP.")
	wantAll(t, "no-local-endpoints fix", f.Fix, "externalTrafficPolicy: Cluster", "healthCheckNodePort")

	f = one("network-policy")
	wantAll(t, "network-policy title", f.Title, "NetworkPolicy web/db-ingress blocks ingress from Deployment web/frontend to Deployment web/api")
	wantAll(t, "network-policy fix", f.Fix, "add an allow rule to NetworkPolicy web/db-ingress for Deployment web/frontend on TCP 5432")

	wantAll(t, "invalid-conntrack", one("invalid-conntrack").Fix, "nf_conntrack_tcp_be_liberal")
	wantAll(t, "martian-localhost", one("martian-localhost").Title, "127.0.0.0/8")
	srcRange := findKind(fs, "source-range")
	if len(srcRange) != 2 {
		t.Fatalf("want two source-range findings (two Services), got:\n%s", dumpFindings(fs))
	}
	all := dumpFindings(srcRange)
	wantAll(t, "source-range", all, "Service shop/lb refused sources outside its loadBalancerSourceRanges", "spec.loadBalancerSourceRanges",
		`"Bad NS/\x60x\x60" (invalid in this recording)`)
	if strings.Contains(dumpFindings(fs), "`x`") {
		t.Errorf("an invalid name reached the findings unmarked:\n%s", dumpFindings(fs))
	}
	// the unknown meaning is a plain drop by its rule
	if got := findKind(fs, "netfilter-rule"); len(got) != 1 || got[0].Count != 5 || !strings.Contains(got[0].Title, "ip filter/X#12 DROP") {
		t.Errorf("want the unknown meaning's 5 drops as one finding of their rule:\n%s", dumpFindings(fs))
	}
}

// Drops conntrack caused (the line's conntrack object): a finding per
// cause with the fixes (NodeLocal DNSCache, single-request-reopen,
// nf_conntrack_max); an INVALID packet kube-proxy's rule dropped stays the
// invalid-conntrack finding; an unknown cause is a plain netfilter drop.
func TestConntrackFindings(t *testing.T) {
	lines := []string{header,
		ev(10, "drop", 6, map[string]any{"src": "10.244.1.3", "dst": "10.96.0.10", "dport": 53, "proto": "udp", "reason": "NETFILTER_DROP",
			"src_k8s": frontendPod, "location": "nf_hook_slow+0x7d", "conntrack": map[string]any{"cause": "insert-failed", "count": 812, "max": 262144}}),
		ev(11, "drop", 4, map[string]any{"src": "10.244.1.3", "dst": "10.244.0.9", "dport": 5432, "reason": "NETFILTER_DROP",
			"conntrack": map[string]any{"cause": "table-full", "count": 65536, "max": 65536}}),
		ev(12, "drop", 2, map[string]any{"src": "10.244.1.3", "dst": "10.244.0.9", "dport": 443, "reason": "NETFILTER_DROP",
			"rule":      rule("KUBE-FORWARD", "DROP", map[string]any{"meaning": "invalid-conntrack", "engine": "kube-proxy"}),
			"conntrack": map[string]any{"cause": "invalid", "count": 7, "max": 65536}}),
		ev(13, "drop", 3, map[string]any{"src": "10.0.0.2", "dst": "10.0.0.3", "dport": 1, "reason": "NETFILTER_DROP",
			"conntrack": map[string]any{"cause": "<script>", "count": 1, "max": 1}}),
		trailer(0),
	}
	fs := read(t, lines...).Findings()
	one := func(kind string) Finding { t.Helper(); return oneFinding(t, fs, kind) }
	f := one("conntrack-insert-failed")
	if f.Count != 6 || f.Severity != SevCritical {
		t.Errorf("insert-failed: count %d severity %s", f.Count, f.Severity)
	}
	wantAll(t, "insert-failed", f.Title+f.Detail+f.Fix, "NAT port clash", "6 packets", "1 s connect delays", "5 s DNS delays",
		"NodeLocal DNSCache", "single-request-reopen", "--random-fully")
	f = one("conntrack-table-full")
	wantAll(t, "table-full", f.Title+f.Detail+f.Fix, "nf_conntrack_max 65536", "4 packets", "table full, dropping packet", "nf_conntrack_count")
	wantAll(t, "invalid-conntrack", one("invalid-conntrack").Title, "2 packets")
	if got := findKind(fs, "conntrack-invalid"); len(got) != 0 {
		t.Errorf("kube-proxy's INVALID drop counted twice:\n%s", dumpFindings(fs))
	}
	if got := findKind(fs, "netfilter"); len(got) != 1 || got[0].Count != 3 {
		t.Errorf("want the unknown cause's 3 drops as one netfilter finding:\n%s", dumpFindings(fs))
	}
	if strings.Contains(dumpFindings(fs), "<script>") {
		t.Errorf("an unknown cause reached the findings:\n%s", dumpFindings(fs))
	}
}

// oneFinding is the one finding of kind in fs; the test fails unless
// there is exactly one.
func oneFinding(t *testing.T, fs []Finding, kind string) Finding {
	t.Helper()
	got := findKind(fs, kind)
	if len(got) != 1 {
		t.Fatalf("want one %s finding, got %d:\n%s", kind, len(got), dumpFindings(fs))
	}
	return got[0]
}
