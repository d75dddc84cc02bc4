package report

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/route"
)

// A recording is a file from someone else: every string in it is
// untrusted. Before a string reaches a table, a YAML snippet or a kubectl
// command line, it must look like what kdrop writes there: Kubernetes
// names pass Kubernetes' own validation, kernel names their own shape.
// Anything else is shown quoted (Go syntax, ASCII only, no backtick) and
// marked, so it can neither break out of Markdown nor pass for a name.

// invalidMark follows a value that failed its check.
const invalidMark = " (invalid in this recording)"

// marked quotes s so it cannot carry structure, in Markdown, code spans
// or HTML: no newline, no control byte, no backtick, no angle bracket or
// pipe, ASCII only.
func marked(s string) string {
	return structural.Replace(strconv.QuoteToASCII(s)) + invalidMark
}

var structural = strings.NewReplacer("`", `\x60`, "<", `\x3c`, ">", `\x3e`, "|", `\x7c`, "&", `\x26`)

// checked returns s if ok says it is valid (or it is empty), else marked(s).
func checked(s string, ok func(string) bool) string {
	if s == "" || ok(s) {
		return s
	}
	return marked(s)
}

var (
	reasonRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,128}$`)                   // NO_SOCKET, unknown
	symbolRE = regexp.MustCompile(`^[A-Za-z0-9_.$]{1,256}(\+0x[0-9a-f]+)?$`) // tcp_v4_rcv+0x1a4, 0xffffffff81000000
	wordRE   = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)                    // tp_btf, Deployment
	// kernel releases, kdrop versions, kubeconfig cluster names
	tokenRE = regexp.MustCompile(`^[A-Za-z0-9._:/@+~-]{1,256}$`)
)

func isDNSLabel(s string) bool     { return len(validation.IsDNS1123Label(s)) == 0 }
func isDNSSubdomain(s string) bool { return len(validation.IsDNS1123Subdomain(s)) == 0 }

// isObjectName accepts the names of pods, workloads, Services and nodes:
// DNS subdomains, and for nodes and a few workloads, what Kubernetes'
// path-segment rule allows for any object name.
func isObjectName(s string) bool {
	return isDNSSubdomain(s) || (len(s) <= 253 && len(validation.IsValidLabelValue(s)) == 0 && !strings.ContainsAny(s, "/%"))
}

// isNsName is "namespace/name", as Services are listed.
func isNsName(s string) bool {
	ns, name, ok := strings.Cut(s, "/")
	return ok && isDNSLabel(ns) && isObjectName(name)
}

// text is free text (a notice's message): kept as it is when it is one
// line of printable text without backticks or format characters
// (bidirectional overrides that reorder what follows), else marked.
func text(s string) string {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '`' || r == 0xfffd || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029 || unicode.Is(unicode.Cf, r) {
			return marked(s)
		}
	}
	return s
}

// sentence is a note kdrop wrote that may quote a file's strings (a line
// that could not be read, a type this kdrop does not know): Go quoting
// leaves backticks, angle brackets, pipes and ampersands as they are, so
// they are escaped the same way, as are control bytes.
func sentence(s string) string {
	s = structural.Replace(s)
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0 {
		return s
	}
	q := strconv.QuoteToASCII(s)
	return q[1 : len(q)-1]
}

// cleanK8s returns the identity with every field checked.
func cleanK8s(k *K8s) *K8s {
	c := *k
	c.Kind = checked(k.Kind, wordRE.MatchString)
	c.Namespace = checked(k.Namespace, isDNSLabel)
	c.Name = checked(k.Name, isObjectName)
	c.WorkloadKind = checked(k.WorkloadKind, wordRE.MatchString)
	c.WorkloadName = checked(k.WorkloadName, isObjectName)
	c.Node = checked(k.Node, isObjectName)
	c.Services = nil
	for _, s := range k.Services {
		c.Services = append(c.Services, checked(s, isNsName))
	}
	c.Previous = nil
	for i := range k.Previous {
		c.Previous = append(c.Previous, *cleanK8s(&k.Previous[i]))
	}
	return &c
}

// maxPolicies bounds the NetworkPolicies a report keeps of one drop.
const maxPolicies = 5

// cleanMeaning checks a rule's Kubernetes meaning: an unknown kind is no
// meaning (a later kdrop's kind reads as a plain netfilter drop); names
// that are not Kubernetes names are marked.
func cleanMeaning(m *netfilter.Meaning) Meaning {
	if m == nil {
		return Meaning{}
	}
	switch m.Kind {
	case netfilter.MeaningNoEndpoints, netfilter.MeaningNoLocalEndpoints, netfilter.MeaningInvalidConntrack,
		netfilter.MeaningMartianLocalhost, netfilter.MeaningSourceRange, netfilter.MeaningNetworkPolicy:
	default:
		return Meaning{}
	}
	c := Meaning{Kind: m.Kind, Internal: strings.Contains(m.Text, "internalTrafficPolicy")}
	svc, port, _ := strings.Cut(m.Service, ":")
	c.Service = checked(svc, isNsName)
	c.Port = checked(port, func(s string) bool {
		_, err := strconv.ParseUint(s, 10, 16)
		return err == nil || len(validation.IsValidPortName(s)) == 0
	})
	var ps []string
	for i, p := range m.NetworkPolicies {
		if i == maxPolicies {
			ps = append(ps, fmt.Sprintf("and %d more", len(m.NetworkPolicies)-maxPolicies))
			break
		}
		ps = append(ps, checked(p.String(), isNsName))
	}
	c.Policies = strings.Join(ps, ", ")
	c.Direction = checked(m.Direction, func(s string) bool { return s == "ingress" || s == "egress" })
	c.Engine = "kube-proxy"
	if m.Engine == "kube-router" {
		c.Engine = m.Engine
	}
	return c
}

var (
	nfNameRE    = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)     // table and chain names
	nfVerdictRE = regexp.MustCompile(`^[A-Za-z0-9 ()_-]{1,64}$`)    // DROP, REJECT icmp-port-unreachable, DROP (policy)
	commentRE   = regexp.MustCompile(`^[ !#-%'-;=?-_a-{}~]{1,64}$`) // printable ASCII but quotes, backticks, & < > |
)

// ruleLabel names the rule of a NETFILTER_DROP as the RULE column does
// ("filter/INPUT#3 DROP \"comment\""), each part checked; the candidates
// when two or more may have dropped it; "" when none is named.
func ruleLabel(r *netfilter.Rule) string {
	if r == nil || r.Unknown != "" {
		return ""
	}
	if r.Table == "" {
		var cs []string
		for i := range r.Candidates {
			if i == 3 {
				cs = append(cs, fmt.Sprintf("%d more", len(r.Candidates)-3))
				break
			}
			cs = append(cs, refLabel(&r.Candidates[i]))
		}
		if len(cs) == 0 {
			return ""
		}
		return "one of " + strings.Join(cs, ", ")
	}
	return refLabel(&r.Ref)
}

func refLabel(r *netfilter.Ref) string {
	s := checked(r.Table, nfNameRE.MatchString) + "/" + checked(r.Chain, nfNameRE.MatchString)
	if r.Position > 0 {
		s += ":" + strconv.Itoa(r.Position)
	} else if r.Handle > 0 {
		s += "#" + strconv.FormatUint(r.Handle, 10)
	}
	if r.Verdict != "" {
		s += " " + checked(r.Verdict, nfVerdictRE.MatchString)
	}
	if r.Comment != "" {
		if commentRE.MatchString(r.Comment) {
			s += ` "` + r.Comment + `"`
		} else {
			s += " " + marked(r.Comment)
		}
	}
	return s
}

// routeLabel names a route drop's route ("blackhole 10.0.0.0/24", "table
// N" outside main); its type must be one the kernel has.
func routeLabel(r *route.Route) string {
	if r == nil {
		return ""
	}
	c := *r
	c.Type = checked(r.Type, func(s string) bool {
		return s == "blackhole" || s == "unreachable" || s == "prohibit" || s == "throw"
	})
	return c.String()
}

// cleanHeader checks the header's strings.
func cleanHeader(h Header) Header {
	h.Version = checked(h.Version, tokenRE.MatchString)
	h.Cluster = checked(h.Cluster, tokenRE.MatchString)
	h.From = checked(h.From, wordRE.MatchString)
	nodes := make([]Node, len(h.Nodes))
	for i, n := range h.Nodes {
		nodes[i] = Node{Name: checked(n.Name, isObjectName), Kernel: checked(n.Kernel, tokenRE.MatchString)}
	}
	h.Nodes = nodes
	f := h.Filters
	f.Types, f.Reasons, f.CIDRs = cleanList(f.Types, wordRE.MatchString), cleanList(f.Reasons, reasonRE.MatchString), cleanList(f.CIDRs, tokenRE.MatchString)
	f.Namespace = checked(f.Namespace, isDNSLabel)
	f.Pod = checked(f.Pod, func(s string) bool { return isObjectName(s) || isNsName(s) })
	f.Selector = checked(f.Selector, func(s string) bool { return !strings.ContainsAny(s, "`\n\r|<>") && len(s) < 1024 })
	h.Filters = f
	return h
}

func cleanList(l []string, ok func(string) bool) []string {
	var out []string
	for _, s := range l {
		out = append(out, checked(s, ok))
	}
	return out
}

// isMarked says s failed its check (checked marked it).
func isMarked(s string) bool { return strings.HasSuffix(s, invalidMark) }

// cmdArg is s as an argument of a command line kdrop writes, or
// placeholder when s is empty or failed its check: a marked name is
// quoted for reading, never pasted into a command.
func cmdArg(s, placeholder string) string {
	if s == "" || isMarked(s) {
		return placeholder
	}
	return s
}

// splitService splits a Service as a finding names it ("ns/name", or a
// bare name in namespace default) for command lines; ok is false when it
// is not a valid name, and ns and name are then the placeholders
// NAMESPACE and NAME.
func splitService(svc string) (ns, name string, ok bool) {
	if isNsName(svc) {
		ns, name, _ = strings.Cut(svc, "/")
		return ns, name, true
	}
	if svc != "" && !strings.Contains(svc, "/") && isObjectName(svc) {
		return "default", svc, true
	}
	return "NAMESPACE", "NAME", false
}
