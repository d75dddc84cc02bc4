// Package netfilter names the netfilter rule behind a NETFILTER_DROP event
// without function tracing: it reads the rules of the event's network
// namespace over netlink (nftables, which iptables-nft also uses: tables,
// chains, rules, their counters and comments) when such events arrive, and
// attributes each event to the rules whose counters moved around its time
// in that namespace. A rule without a counter is attributed by what its
// expressions match against the event's packet.
//
// Attribution is asynchronous and bounded (Attributor): an event is held
// until a read of its namespace taken after it, at most Config.MaxWait,
// and then always goes out, with Rule.Unknown saying why when no rule can
// be named.
//
// iptables-legacy (ip_tables, ip6_tables) is read too where the kernel has
// it, with getsockopt(IPT_SO_GET_ENTRIES) inside the namespace: its rules
// are named by position, and a built-in chain's policy has a counter.
package netfilter

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/kdrop/kdrop/tracer"
)

// Backends a rule is read from.
const (
	// BackendNftables: nf_tables, read over NETLINK_NETFILTER. Covers
	// native nft tables and iptables-nft (whose tables are nf_tables
	// tables with xt compat expressions).
	BackendNftables = "nftables"
	// BackendLegacy: ip_tables/ip6_tables (iptables-legacy), read with
	// getsockopt. Candidates from both backends: "nftables,iptables-legacy".
	BackendLegacy = "iptables-legacy"
)

// How a rule was attributed (Rule.How).
const (
	// HowCounter: the rule's counter moved in the namespace over the
	// interval(s) covering the event.
	HowCounter = "counter"
	// HowMatch: the rule has no counter; its expressions match the
	// event's packet (protocol, addresses, ports) and no counted rule
	// moved that matches it.
	HowMatch = "match"
	// HowLifetime: no earlier read of the namespace to compare with (its
	// first drop ever, before kdrop took a baseline): the rules named are
	// those whose counters are not zero since they were made, not
	// necessarily moved now; Packets is the lifetime count.
	HowLifetime = "lifetime"
	// HowTrace: per-packet tracing named the rule (not done yet: it needs
	// function tracing or nftrace).
	HowTrace = "trace"
)

// Rule is the netfilter rule kdrop names for one drop: the `rule` object
// of a JSON line. When Unknown is set, nothing else but Backend may be.
// When Candidates is set the attribution is ambiguous: the top-level rule
// fields (Ref) are then empty and every candidate is listed.
// K8s, when set, is what the drop means in Kubernetes terms.
type Rule struct {
	Backend string // BackendNftables, BackendLegacy, or both comma-separated
	Ref            // the rule, when one is named
	How     string // HowCounter, HowMatch, HowTrace ("" when Unknown)
	// Candidates: every rule that may have dropped the packet, when more
	// than one may have (ambiguity shown, not hidden); nil otherwise.
	Candidates []Ref
	// Unknown says why no rule is named ("" when one is), in a few words:
	// "network namespace gone", "rules changed while reading", …
	Unknown string
	// K8s is the drop's Kubernetes meaning (the `k8s` object): the
	// Service a kube-proxy rule is for, or the NetworkPolicies that
	// isolate a pod; nil when kdrop knows none. It may be set even when
	// Unknown is (a NetworkPolicy is evaluated from the API server).
	K8s *Meaning
}

// Kinds of Kubernetes meaning (Meaning.Kind).
const (
	// MeaningNoEndpoints: kube-proxy REJECTs traffic to a Service with no
	// ready endpoints.
	MeaningNoEndpoints = "no-endpoints"
	// MeaningNoLocalEndpoints: kube-proxy DROPs NodePort/LoadBalancer
	// traffic of a Service with externalTrafficPolicy: Local on a node
	// without a ready endpoint of it.
	MeaningNoLocalEndpoints = "no-local-endpoints"
	// MeaningInvalidConntrack: kube-proxy DROPs packets conntrack calls
	// INVALID (KUBE-FORWARD, KUBE-FIREWALL; nftables mode's filter chains).
	MeaningInvalidConntrack = "invalid-conntrack"
	// MeaningMartianLocalhost: kube-proxy DROPs packets from outside to a
	// 127.0.0.0/8 NodePort (route_localnet's martians).
	MeaningMartianLocalhost = "martian-localhost"
	// MeaningSourceRange: kube-proxy DROPs LoadBalancer traffic from a
	// source outside loadBalancerSourceRanges.
	MeaningSourceRange = "source-range"
	// MeaningNetworkPolicy: NetworkPolicies isolate the destination
	// (ingress) or the source (egress) and none of their rules allows
	// the connection.
	MeaningNetworkPolicy = "network-policy"
)

// Meaning is a drop's Kubernetes meaning.
type Meaning struct {
	Kind string // one of the Meaning* constants
	// Engine is who enforces the rule: "kube-proxy", "kube-router", …;
	// "" when kdrop evaluated NetworkPolicies itself without an engine's
	// rule naming them.
	Engine string
	// Service is the Service port kube-proxy's rule is for, as kube-proxy
	// names it (ServicePortName.String()): "namespace/name:port" with the
	// port's name, or "namespace/name" when the port has no name.
	Service string
	// NetworkPolicies are the policies that isolate the pod in Direction
	// and allow nothing matching the packet, sorted.
	NetworkPolicies []PolicyRef
	// Direction is "ingress" (the destination is isolated) or "egress"
	// (the source is); "" for kube-proxy's meanings.
	Direction string
	// Pod is the pod the NetworkPolicies isolate, "namespace/name"; for
	// an engine's rule, the pod its rule is for.
	Pod string
	// Evaluation compares an engine's NetworkPolicy rule (Engine set,
	// Kind MeaningNetworkPolicy) with kdrop's own evaluation of the
	// cluster's NetworkPolicies: EvaluationAgrees or EvaluationDisagrees;
	// "" when they were not compared (no pod identity, policies not
	// listed yet).
	Evaluation string
	// Evaluated is kdrop's own evaluation when it disagrees with the
	// engine's rule: the policies that deny the packet as kdrop reads
	// them (Engine ""); nil when they allow it.
	Evaluated *Meaning
	// Text says it in one sentence: "Service shop/cart:http has no
	// endpoints".
	Text string
}

// Meaning.Evaluation.
const (
	// EvaluationAgrees: kdrop's evaluation names the same pod, direction
	// and policies as the engine's rule.
	EvaluationAgrees = "agrees"
	// EvaluationDisagrees: it does not (Meaning.Evaluated says what it
	// found); the text says so.
	EvaluationDisagrees = "disagrees"
)

// PolicyRef names a NetworkPolicy.
type PolicyRef struct{ Namespace, Name string }

func (p PolicyRef) String() string { return p.Namespace + "/" + p.Name }

// Ref names one rule.
type Ref struct {
	// Family is the nftables table family: "ip", "ip6", "inet", "arp",
	// "bridge", "netdev"; for iptables-legacy "ip" (ip_tables) or "ip6".
	Family string
	Table  string
	Chain  string
	// Handle is the nftables rule handle (`nft -a list ruleset`); 0 for
	// a chain's policy.
	Handle uint64
	// Position is an iptables-legacy rule's 1-based position in its chain
	// (0 for nftables).
	Position int
	// Comment is the rule's comment: nftables' userdata comment or
	// iptables-nft's `-m comment` (xt comment match), at most 255 bytes,
	// made valid UTF-8.
	Comment string
	// Verdict is "DROP", "REJECT <with>" (e.g. "REJECT tcp-reset",
	// "REJECT icmp-port-unreachable"; a native nft reject's code as nft
	// names it in the family: "REJECT icmpv6-admin-prohibited") or
	// "DROP (policy)".
	Verdict string
	// Packets is how many packets the rule's counter moved by over the
	// interval(s) the event covers: packets, 0 without a counter.
	Packets uint64
}

// VerdictKind is what a verdict (Ref.Verdict) does, in one word: "drop",
// "reject", "policy" (a chain's drop policy), or "unknown".
func VerdictKind(v string) string {
	switch {
	case strings.HasSuffix(v, "(policy)"):
		return "policy"
	case strings.HasPrefix(v, "REJECT"):
		return "reject"
	case strings.HasPrefix(v, "DROP"):
		return "drop"
	}
	return "unknown"
}

// Known says whether r names a rule (or candidates).
func (r *Rule) Known() bool { return r != nil && r.Unknown == "" }

// Short is the table column: "filter/INPUT#3 DROP", "2 rules?",
// "unknown: why", followed by the Kubernetes meaning's sentence when
// there is one ("…: Service shop/cart:http has no endpoints").
func (r *Rule) Short() string {
	switch {
	case r == nil:
		return ""
	case r.Unknown != "":
		return "unknown: " + r.Unknown + r.K8s.suffix()
	case r.Table == "" && len(r.Candidates) > 0:
		return strconv.Itoa(len(r.Candidates)) + " rules?" + r.K8s.suffix()
	}
	s := r.Table + "/" + r.Chain
	if r.Position > 0 {
		s += ":" + strconv.Itoa(r.Position)
	} else if r.Handle > 0 {
		s += "#" + strconv.FormatUint(r.Handle, 10)
	}
	s += " " + r.Verdict
	if r.Comment != "" {
		s += " " + quoteShort(r.Comment)
	}
	return s + r.K8s.suffix()
}

func (m *Meaning) suffix() string {
	if m == nil || m.Text == "" {
		return ""
	}
	return ": " + m.Text
}

// quoteShort quotes a comment for the table, at most 32 runes.
func quoteShort(s string) string {
	if utf8.RuneCountInString(s) > 32 {
		r := []rune(s)
		s = string(r[:31]) + "…"
	}
	return `"` + s + `"`
}

// Wants says whether kdrop attributes ev to a netfilter rule: a drop whose
// reason is NETFILTER_DROP (a REJECT is such a drop plus an ICMP error or
// a TCP reset: an ICMP error is kdrop's unreach event, a reset is no
// event), or, on kernels without
// drop reasons (before 5.17), a drop freed by netfilter (netfilterFrees).
// There a summary
// event (keyed by flow, without a location) cannot be told to be
// netfilter's: only events of their own are attributed.
func Wants(ev *tracer.Event) bool {
	if ev.Type != tracer.Drop {
		return false
	}
	if ev.Reason == "NETFILTER_DROP" {
		return true
	}
	if ev.Reason != "" && ev.Reason != "unknown" && ev.Reason != "NOT_SPECIFIED" {
		return false
	}
	for _, f := range netfilterFrees {
		if strings.HasPrefix(ev.Location, f) {
			return true
		}
	}
	return false
}

// netfilterFrees are the functions that free a packet a netfilter verdict
// dropped (kfree_skb's caller, the event's location).
var netfilterFrees = []string{"nf_hook_slow+", "nft_do_chain+", "ipt_do_table+", "ip6t_do_table+"}

// cleanComment makes a comment read from the kernel printable: at most
// maxComment bytes up to the first NUL, invalid UTF-8 and control
// characters replaced.
func cleanComment(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	if len(b) > maxComment {
		b = b[:maxComment]
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		switch {
		case r == utf8.RuneError && n <= 1:
			sb.WriteRune('\uFFFD')
		case r < 0x20 || r == 0x7f:
			sb.WriteByte('?')
		default:
			sb.WriteRune(r)
		}
	}
	return sb.String()
}

// maxComment bounds a comment: xt_comment's is char[256] with its NUL,
// nftables' userdata comment is at most 128 bytes by nft's own rule.
const maxComment = 255

// nameRejects names the ICMP code of r's native nftables rejects ("REJECT
// icmp-code-3", as the reader decodes `reject with icmp ...`) as nft does
// (`nft describe icmp_code`, `icmpv6_code`): the code means something else
// in each family (1 is host-unreachable for ICMP, admin-prohibited for
// ICMPv6). In an inet, bridge or netdev table the code is read in the
// dropped packet's family (v6), as the kernel sends it. Codes nft has no
// name for keep their number ("icmpv6-code-2").
func (r *Rule) nameRejects(v6 bool) {
	if r == nil {
		return
	}
	r.Verdict = rejectName(r.Verdict, r.Family, v6)
	for i := range r.Candidates {
		c := &r.Candidates[i]
		c.Verdict = rejectName(c.Verdict, c.Family, v6)
	}
}

// nft's names of ICMP and ICMPv6 codes, by code.
var (
	icmpCodeNames   = map[uint64]string{0: "net-unreachable", 1: "host-unreachable", 2: "prot-unreachable", 3: "port-unreachable", 4: "frag-needed", 9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited"}
	icmpv6CodeNames = map[uint64]string{0: "no-route", 1: "admin-prohibited", 3: "addr-unreachable", 4: "port-unreachable", 5: "policy-fail", 6: "reject-route"}
)

// rejectName turns "REJECT icmp-code-N" into "REJECT icmp-<name>" (family
// ip) or "REJECT icmpv6-<name>" (ip6); any other verdict is returned as
// it is.
func rejectName(verdict, family string, v6 bool) string {
	n, ok := strings.CutPrefix(verdict, "REJECT icmp-code-")
	if !ok {
		return verdict
	}
	code, err := strconv.ParseUint(n, 10, 8)
	if err != nil {
		return verdict
	}
	switch family {
	case "ip":
		v6 = false
	case "ip6":
		v6 = true
	}
	if v6 {
		if name, ok := icmpv6CodeNames[code]; ok {
			return "REJECT icmpv6-" + name
		}
		return "REJECT icmpv6-code-" + n
	}
	if name, ok := icmpCodeNames[code]; ok {
		return "REJECT icmp-" + name
	}
	return verdict
}
