package netfilter

import (
	"strings"

	"github.com/kdrop/kdrop/tracer"
)

// kube-proxy's rules as v1.34 writes them (k8s.io/kubernetes
// pkg/proxy/iptables/proxier.go and pkg/proxy/nftables/proxier.go; kubelet
// writes KUBE-FIREWALL's rule too, pkg/kubelet/kubelet_network_linux.go).
// A Service port is named as kube-proxy's ServicePortName.String():
// "namespace/name:port", or "namespace/name" when the port has no name.
const (
	// iptables mode: the filter table's chains.
	ipmServices         = "KUBE-SERVICES"          // REJECT "<svc> has no endpoints", DROP "<svc> has no local endpoints" (internalTrafficPolicy: Local)
	ipmExternalServices = "KUBE-EXTERNAL-SERVICES" // the same for external IPs, load balancer IPs and node ports (externalTrafficPolicy: Local)
	ipmForward          = "KUBE-FORWARD"           // DROP of ctstate INVALID, no comment
	ipmFirewall         = "KUBE-FIREWALL"          // DROP "block incoming localnet connections" (-d 127.0.0.0/8 ! -s 127.0.0.0/8)
	ipmProxyFirewall    = "KUBE-PROXY-FIREWALL"    // DROP "<svc> traffic not accepted by KUBE-FW-…" (loadBalancerSourceRanges)

	ipmNoEndpoints      = " has no endpoints"
	ipmNoLocalEndpoints = " has no local endpoints"
	ipmMartian          = "block incoming localnet connections"
	ipmNotAccepted      = " traffic not accepted by "

	// nftables mode: table "kube-proxy" (families ip and ip6). Its rules
	// have no counters; the Service is in the comment of the element of
	// @no-endpoint-services (daddr . l4proto . dport) or
	// @no-endpoint-nodeports (l4proto . dport) the packet hits, whose
	// verdict is "goto reject-chain" (no endpoints) or "drop" (no local
	// endpoints); loadBalancerSourceRanges drop in a chain
	// "firewall-<hash>-<ns>/<name>/<proto>/<port>".
	nftTable          = "kube-proxy"
	nftRejectChain    = "reject-chain"
	nftEndpointsCheck = "service-endpoints-check"
	nftNodePortsCheck = "nodeport-endpoints-check"
	nftClusterIPs     = "cluster-ips-check"
	nftFirewallPrefix = "firewall-"
	nftFirewallCheck  = "firewall-check"

	engineKubeProxy = "kube-proxy"
)

// kubeProxyMeaning is what the rule r named for ev means when kube-proxy
// wrote it, else nil. rs is the read r came from (for nftables mode's map
// elements).
func kubeProxyMeaning(r *Rule, ev *tracer.Event, rs *ruleset) *Meaning {
	r.nameRejects(ev.Family == 6) // rule.go: ICMP codes by name, per family
	if r == nil || r.Table == "" {
		return nil
	}
	if r.Table == nftTable {
		return nftMeaning(r, ev, rs)
	}
	if r.Table != "filter" {
		return nil
	}
	c := r.Comment
	m := &Meaning{Engine: engineKubeProxy}
	switch {
	case (r.Chain == ipmServices || r.Chain == ipmExternalServices) && strings.HasSuffix(c, ipmNoEndpoints):
		m.Kind, m.Service = MeaningNoEndpoints, strings.TrimSuffix(c, ipmNoEndpoints)
	case r.Chain == ipmExternalServices && strings.HasSuffix(c, ipmNoLocalEndpoints):
		m.Kind, m.Service = MeaningNoLocalEndpoints, strings.TrimSuffix(c, ipmNoLocalEndpoints)
		m.Text = "Service " + m.Service + " has no local endpoints (externalTrafficPolicy: Local)"
	case r.Chain == ipmServices && strings.HasSuffix(c, ipmNoLocalEndpoints):
		m.Kind, m.Service = MeaningNoLocalEndpoints, strings.TrimSuffix(c, ipmNoLocalEndpoints)
		m.Text = "Service " + m.Service + " has no local endpoints (internalTrafficPolicy: Local)"
	case r.Chain == ipmForward && r.Verdict == "DROP":
		m.Kind = MeaningInvalidConntrack
	case r.Chain == ipmFirewall && c == ipmMartian:
		m.Kind = MeaningMartianLocalhost
	case r.Chain == ipmProxyFirewall && strings.Contains(c, ipmNotAccepted):
		m.Kind, m.Service = MeaningSourceRange, c[:strings.Index(c, ipmNotAccepted)]
	default:
		return nil
	}
	return withText(m)
}

// nftMeaning decodes kube-proxy's nftables mode.
func nftMeaning(r *Rule, ev *tracer.Event, rs *ruleset) *Meaning {
	m := &Meaning{Engine: engineKubeProxy}
	switch {
	case r.Chain == nftRejectChain:
		_, el := kubeProxyVia(rs, r.Family, nftRejectChain, ev)
		if el == nil {
			return nil
		}
		m.Kind, m.Service = MeaningNoEndpoints, el.comment
	case r.Chain == nftEndpointsCheck || r.Chain == nftNodePortsCheck:
		var el *element
		for _, ri := range rs.rules {
			if ri.Family == r.Family && ri.Table == r.Table && ri.Chain == r.Chain && ri.Handle == r.Handle {
				_, el = eval(ri, ev)
			}
		}
		if el == nil || el.verdict != "drop" {
			return nil
		}
		m.Kind, m.Service = MeaningNoLocalEndpoints, el.comment
		m.Text = "Service " + m.Service + " has no local endpoints (externalTrafficPolicy: Local)"
		if r.Chain == nftEndpointsCheck && isClusterIP(rs, r.Family, ev) {
			m.Text = "Service " + m.Service + " has no local endpoints (internalTrafficPolicy: Local)"
		}
	case isFirewallChain(r.Chain) && r.Verdict == "DROP":
		// firewall-<hash>-<namespace>/<name>/<protocol>/<port name>
		_, rest, _ := strings.Cut(strings.TrimPrefix(r.Chain, nftFirewallPrefix), "-")
		p := strings.Split(rest, "/")
		if len(p) != 4 {
			return nil
		}
		m.Kind, m.Service = MeaningSourceRange, p[0]+"/"+p[1]
		if p[3] != "" {
			m.Service += ":" + p[3]
		}
	default:
		return nil
	}
	if m.Service == "" {
		return nil
	}
	return withText(m)
}

// withText sets the sentence of a kube-proxy meaning, unless set.
func withText(m *Meaning) *Meaning {
	if m.Text != "" {
		return m
	}
	switch m.Kind {
	case MeaningNoEndpoints:
		m.Text = "Service " + m.Service + " has no endpoints"
	case MeaningInvalidConntrack:
		m.Text = "invalid conntrack state (kube-proxy drops packets conntrack calls INVALID)"
	case MeaningMartianLocalhost:
		m.Text = "martian source to 127.0.0.0/8 (kube-proxy blocks localnet connections from outside)"
	case MeaningSourceRange:
		m.Text = "Service " + m.Service + ": source not in loadBalancerSourceRanges"
	}
	return m
}

// kubeProxyVia finds the kube-proxy vmap rule of the family and the
// element ev hits that sends it to chain (`goto reject-chain`, `goto
// firewall-…`): kube-proxy reaches reject-chain and its per-Service
// firewall chains only that way.
func kubeProxyVia(rs *ruleset, family, chain string, ev *tracer.Event) (*ruleInfo, *element) {
	for _, ri := range rs.rules {
		if ri.Table != nftTable || ri.Family != family || !strings.HasPrefix(ri.Verdict, "vmap @") {
			continue
		}
		if _, el := eval(ri, ev); el != nil && (el.verdict == "goto "+chain || el.verdict == "jump "+chain) {
			return ri, el
		}
	}
	return nil, nil
}

// isClusterIP says whether ev's destination is in kube-proxy's
// @cluster-ips set (read when its cluster-ips-check rule is).
func isClusterIP(rs *ruleset, family string, ev *tracer.Event) bool {
	for _, ri := range rs.rules {
		if ri.Table == nftTable && ri.Family == family && ri.Chain == nftClusterIPs {
			if s := ri.sets["cluster-ips"]; s != nil && ev.Dst.IsValid() {
				_, ok := s.find(ev.Dst.Addr().AsSlice())
				return ok
			}
		}
	}
	return false
}

// kubeProxyReached says whether an uncounted rule can have dropped ev as
// far as kube-proxy's nftables chains tell: a rule of its reject-chain or
// of a Service's firewall chain only when a vmap element ev hits goes
// there.
func kubeProxyReached(rs *ruleset, ri *ruleInfo, ev *tracer.Event) bool {
	if ri.Table != nftTable || !(ri.Chain == nftRejectChain || isFirewallChain(ri.Chain)) {
		return true
	}
	via, _ := kubeProxyVia(rs, ri.Family, ri.Chain, ev)
	return via != nil
}

func isFirewallChain(c string) bool {
	return strings.HasPrefix(c, nftFirewallPrefix) && c != nftFirewallCheck
}

// kubeProxyFirst keeps, of rules that all match ev, those kube-proxy's
// chains reach first: its base chains jump to the endpoint checks
// (service-endpoints-check, nodeport-endpoints-check, and reject-chain
// from them) before cluster-ips-check (nftablesJumpChains' order), so a
// packet to a ClusterIP without endpoints is rejected by reject-chain, not
// by "Reject traffic to invalid ports of ClusterIPs".
func kubeProxyFirst(refs []Ref) []Ref {
	first := func(r Ref) bool {
		return r.Table == nftTable && (r.Chain == nftRejectChain || r.Chain == nftEndpointsCheck || r.Chain == nftNodePortsCheck)
	}
	out := refs[:0:0]
	for _, r := range refs {
		if r.Table == nftTable && r.Chain == nftClusterIPs {
			earlier := false
			for _, o := range refs {
				earlier = earlier || (first(o) && o.Family == r.Family)
			}
			if earlier {
				continue
			}
		}
		out = append(out, r)
	}
	return out
}
