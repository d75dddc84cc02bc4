package report

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
)

// RuleRef is the netfilter rule a drop's line names (its `rule` object),
// as a report keeps it: every string checked, comparable, the candidates
// bounded. Zero when the line names none.
type RuleRef struct {
	Backend string // netfilter.BackendNftables, BackendLegacy, or both
	Ref            // the rule, when one is named
	How     string // netfilter.HowCounter, HowMatch, HowTrace
	// Candidates are the first maxCandidates rules that may have dropped
	// it, when kdrop could not tell which; NCandidates how many there were.
	Candidates  [maxCandidates]Ref
	NCandidates int
	// Unknown says why no rule is named.
	Unknown string
}

// Ref names one rule (netfilter.Ref without its counter).
type Ref struct {
	Family, Table, Chain string
	Handle               uint64
	Position             int
	Comment, Verdict     string
}

// maxCandidates bounds the candidate rules a report keeps of one drop.
const maxCandidates = 4

var (
	// nft and iptables names of families, tables and chains as kdrop shows
	// them plainly (kube-proxy's firewall-<hash>-ns/svc/proto/port included):
	// no blank, no quote, nothing a shell or Markdown reads, no leading dash.
	ruleNameRE = regexp.MustCompile(`^[A-Za-z0-9_.][A-Za-z0-9_./:@+-]{0,255}$`)
	// nftIdentRE: what nft's command line takes unquoted as a name.
	nftIdentRE = regexp.MustCompile(`^[A-Za-z_.][A-Za-z0-9_./-]{0,255}$`)
	verdictRE  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9 _.@()-]{0,63}$`) // DROP, REJECT icmp-port-unreachable, DROP (policy), vmap @x
	// grepSafeRE: a comment that can go into a single-quoted grep pattern
	// as it is (and means itself there).
	grepSafeRE = regexp.MustCompile(`^[A-Za-z0-9_ ,:/@+=#%-]{1,128}$`)
	familyOK   = map[string]bool{"ip": true, "ip6": true, "inet": true, "arp": true, "bridge": true, "netdev": true}
)

// isComment accepts a rule's comment shown in quotes: valid, printable
// UTF-8 of at most 255 bytes without a quote, backslash, backtick or a
// character HTML or a Markdown table reads (<, >, &, |), and
// without control or format characters (C0, C1, bidirectional overrides,
// line separators) that would reorder or hide what is around it.
func isComment(s string) bool {
	if len(s) > 255 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if strings.ContainsRune("\"'\\`<>&|", r) || r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) ||
			r == 0x2028 || r == 0x2029 {
			return false
		}
	}
	return true
}

// rule is the checked, shared copy of a line's rule object: one value per
// distinct rule, at most maxRules (a rule past them is left out, counted).
func (p *parser) rule(r *netfilter.Rule) *RuleRef {
	c := p.cleanRule(r)
	if k, ok := p.rules[c]; ok {
		return k
	}
	if len(p.rules) >= maxRules {
		p.rec.droppedRules++
		return nil
	}
	p.rules[c] = &c
	return &c
}

// cleanRule checks a line's rule object (see RuleRef); the parser's check
// remembers each string's answer.
func (p *parser) cleanRule(r *netfilter.Rule) RuleRef {
	c := RuleRef{
		Backend: p.check(asBackend, r.Backend),
		Ref:     p.cleanRef(&r.Ref),
		How:     p.check(asWord, r.How),
		Unknown: p.check(asText, r.Unknown),
	}
	c.NCandidates = len(r.Candidates)
	for i := range min(len(r.Candidates), maxCandidates) {
		c.Candidates[i] = p.cleanRef(&r.Candidates[i])
	}
	return c
}

func (p *parser) cleanRef(r *netfilter.Ref) Ref {
	return Ref{
		Family: p.check(asFamily, r.Family), Table: p.check(asRuleName, r.Table), Chain: p.check(asRuleName, r.Chain),
		Handle: r.Handle, Position: max(r.Position, 0),
		Comment: p.check(asComment, r.Comment), Verdict: p.check(asVerdict, r.Verdict),
	}
}

// known says a rule (or candidates) is named.
func (r *RuleRef) known() bool { return r.Table != "" || r.NCandidates > 0 }

// String names a rule as the RULE column does, with its family and
// backend: `ip filter/INPUT#12 DROP "a1 udp drop"`.
func (r Ref) String() string {
	s := r.Table + "/" + r.Chain
	switch {
	case r.Position > 0:
		s += ":" + strconv.Itoa(r.Position)
	case r.Handle > 0:
		s += "#" + strconv.FormatUint(r.Handle, 10)
	}
	if r.Family != "" {
		s = r.Family + " " + s
	}
	if r.Verdict != "" {
		s += " " + r.Verdict
	}
	if r.Comment != "" {
		s += " " + quoteComment(r.Comment)
	}
	return s
}

// quoteComment shows a checked comment: quoted when it passed, as marked
// (already quoted) when it did not.
func quoteComment(c string) string {
	if isMarked(c) {
		return c
	}
	return `"` + c + `"`
}

// where says where a rule sits, in words: "rule handle 12 of chain INPUT
// in table ip filter".
func (r Ref) where() string {
	var s string
	switch {
	case r.Position > 0:
		s = fmt.Sprintf("rule %d of chain %s", r.Position, r.Chain)
	case r.Handle > 0:
		s = fmt.Sprintf("rule handle %d of chain %s", r.Handle, r.Chain)
	default:
		s = "the policy of chain " + r.Chain
	}
	return s + " in table " + strings.TrimSpace(r.Family+" "+r.Table)
}

// verdictWords says what the sender of a packet a verdict dropped sees.
func verdictWords(v string) string {
	switch netfilter.VerdictKind(v) {
	case "reject":
		if strings.HasSuffix(v, "tcp-reset") {
			return "The sender gets a TCP reset (\"Connection refused\")."
		}
		return "The sender gets an ICMP error at once (\"Connection refused\", \"No route to host\" or \"Permission denied\")."
	case "drop", "policy":
		return "The sender gets no answer: its connection attempts time out."
	}
	return ""
}

// showCommand is a command that shows rule r, run in the network
// namespace where it dropped; "" when its names cannot go on a command
// line as they are (they failed a check, or nft would need them quoted).
func (r Ref) showCommand(backend string) string {
	if isMarked(r.Table) || isMarked(r.Chain) || !familyOK[r.Family] {
		return ""
	}
	if r.Position > 0 || backend == netfilter.BackendLegacy {
		tool := "iptables-legacy"
		if r.Family == "ip6" {
			tool = "ip6tables-legacy"
		}
		if r.Position > 0 {
			return fmt.Sprintf("%s -t %s -S %s %d", tool, r.Table, r.Chain, r.Position)
		}
		return fmt.Sprintf("%s -t %s -S %s", tool, r.Table, r.Chain)
	}
	if !nftIdentRE.MatchString(r.Table) || !nftIdentRE.MatchString(r.Chain) {
		return ""
	}
	return fmt.Sprintf("nft -a list chain %s %s %s", r.Family, r.Table, r.Chain)
}

// grepCommand finds an iptables rule by its comment (iptables-nft's, or
// iptables-legacy's, by position), for a rule in an ip or ip6 table of
// iptables with a comment a shell takes as it is; "" otherwise.
func (r Ref) grepCommand(backend string) string {
	if (r.Family != "ip" && r.Family != "ip6") || !iptablesTables[r.Table] ||
		!grepSafeRE.MatchString(r.Comment) || strings.HasPrefix(r.Comment, "-") {
		return ""
	}
	save := "iptables"
	if r.Family == "ip6" {
		save = "ip6tables"
	}
	switch {
	case r.Position > 0:
		save += "-legacy-save"
	case backend == netfilter.BackendNftables:
		save += "-save"
	default:
		return ""
	}
	return fmt.Sprintf("%s -t %s | grep -n -- '%s'", save, r.Table, r.Comment)
}

// iptablesTables are the tables iptables-nft writes (a native nft table
// of another name is none of its).
var iptablesTables = map[string]bool{"filter": true, "nat": true, "mangle": true, "raw": true, "security": true}

// howWords says how kdrop named the rule.
func howWords(how string) string {
	switch how {
	case netfilter.HowCounter:
		return "its counter moved when the packets were dropped"
	case netfilter.HowMatch:
		return "it has no counter, and its expressions match the dropped packets"
	case netfilter.HowTrace:
		return "tracing saw it drop them"
	}
	return "how: " + how
}

// ---------------------------------------------------------------------------
// NETFILTER_DROP by a named rule that means nothing kdrop knows in
// Kubernetes terms: one finding per rule (or set of candidates), with the
// flows it dropped and a command to see it.

func (a *analysis) ruleFindings() {
	var gs groups
	rule := map[*group]RuleRef{}
	flows := map[*group]counter{}
	hows := map[*group]counter{}
	where := map[*group]counter{} // the network namespaces it dropped in
	for _, f := range a.rec.Flows {
		if a.used[f] || f.Type != "drop" || f.NamedRule == nil || !f.NamedRule.known() {
			continue
		}
		key := *f.NamedRule
		key.How = "" // one finding per rule, however it was named
		g := gs.get(fmt.Sprintf("%+v", key))
		g.add(f)
		if _, ok := rule[g]; !ok {
			rule[g], flows[g], hows[g], where[g] = *f.NamedRule, counter{}, counter{}, counter{}
		}
		where[g].add(actor(f), f.Count)
		flows[g].add(flowWords(f), f.Count)
		hows[g].add(howWords(f.NamedRule.How), f.Count)
		a.used[f] = true
	}
	for _, g := range gs.order {
		r := rule[g]
		packets := plural(g.count, "packet", "packets")
		fd := Finding{Severity: SevWarning, Kind: "netfilter-rule", Count: g.count, First: g.first, Last: g.last}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, ", capital(span(g.first, g.last)))
		var refs []Ref
		if r.Table != "" {
			refs = []Ref{r.Ref}
			fd.Title = fmt.Sprintf("Netfilter rule %s dropped %s", r.Ref, packets)
			fmt.Fprintf(&d, "%s (%s; verdict %s", r.where(), r.Backend, r.Verdict)
			if r.Comment != "" {
				fmt.Fprintf(&d, "; comment %s", quoteComment(r.Comment))
			}
			fmt.Fprintf(&d, ") dropped %s, at %s. kdrop named it because %s. %s", packets, where[g].names(3), hows[g].names(3), verdictWords(r.Verdict))
		} else {
			n := min(r.NCandidates, maxCandidates)
			refs = r.Candidates[:n]
			fd.Title = fmt.Sprintf("One of %d netfilter rules dropped %s (ambiguous)", r.NCandidates, packets)
			fmt.Fprintf(&d, "one of %d rules dropped %s, at %s; kdrop could not tell which (%s), so it names them all: ", r.NCandidates, packets, where[g].names(3), hows[g].names(3))
			var cs []string
			for _, c := range refs {
				cs = append(cs, c.String())
			}
			if r.NCandidates > n {
				cs = append(cs, fmt.Sprintf("%d more", r.NCandidates-n))
			}
			d.WriteString(join(cs) + ".")
		}
		d.WriteString(" ")
		fmt.Fprintf(&d, "Flows it dropped: %s.", flows[g].list(3))
		fd.Detail = d.String()

		var fix []string
		for _, ref := range refs {
			cmd := ref.showCommand(r.Backend)
			if cmd == "" {
				fix = append(fix, fmt.Sprintf("See the rule with `nft -a list ruleset` (or `iptables-save`): its names in this recording cannot go on a command line as they are (%s).", ref))
				continue
			}
			line := fmt.Sprintf("See the rule in the network namespace where it dropped (%s): `%s`", where[g].names(1), cmd)
			switch {
			case ref.Position > 0:
				line += "."
			case ref.Handle > 0:
				line += fmt.Sprintf(", the line ending `# handle %d`.", ref.Handle)
			default:
				line += ", the chain's policy."
			}
			if grep := ref.grepCommand(r.Backend); grep != "" && ref.Position > 0 {
				line += fmt.Sprintf(" By its comment: `%s`.", grep)
			} else if grep != "" {
				line += fmt.Sprintf(" Written with iptables-nft: `%s`.", grep)
			}
			fix = append(fix, line)
		}
		if r.Table == "" {
			fix = append(fix, "To tell the candidates apart, add a counter to each (`counter` in nft; iptables rules have one) and look again at which one moves while the traffic is dropped.")
		}
		fix = append(fix,
			"If this rule should not drop this traffic, change it where it is written: a NetworkPolicy (the CNI turns policies into rules), the node's firewall (firewalld, ufw, a script), or the tool that manages the chain; a rule changed by hand comes back when its owner writes the rules again.",
			"If it should, nothing to fix: the rule is working.")
		fd.Fix = strings.Join(fix, "\n")
		a.add(fd)
	}
}

// flowWords names a flow for a rule's top flows: "Deployment web/frontend
// → 10.0.0.9 UDP port 9999".
func flowWords(f *Flow) string {
	src, dst := workload(f.SrcK8s, f.Src), workload(f.DstK8s, f.Dst)
	if !f.Src.IsValid() {
		src = "any source"
	}
	if !f.Dst.IsValid() {
		dst = "many destinations"
	}
	s := src + " → " + dst
	if f.Dport != 0 {
		s += fmt.Sprintf(" %s port %d", strings.ToUpper(f.Proto), f.Dport)
	} else if f.Proto != "" {
		s += " " + strings.ToUpper(f.Proto)
	}
	return s
}
