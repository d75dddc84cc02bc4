package netfilter

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/kdrop/kdrop/tracer"
)

// kube-router's NetworkPolicy firewall as v2.1 writes it (its
// pkg/controllers/netpol, through iptables-restore: iptables-nft here).
// Every pod of the node gets a chain KUBE-POD-FW-<hash>, reached from
// KUBE-ROUTER-FORWARD, -INPUT and -OUTPUT for packets to the pod (-d
// <pod IP>) and from it (-s <pod IP>). The chain sends the packet through
// a chain per NetworkPolicy selecting the pod (KUBE-NWPLCY-<hash>, comment
// "run through nw policy <name>"; -d <pod IP> for a policy of ingress
// only, -s for egress only, no address for both), or through
// KUBE-NWPLCY-DEFAULT, which allows everything, in a direction no policy
// isolates. A policy chain marks what one of its rules allows (0x10000);
// the pod's chain then REJECTs what none marked, whichever the direction,
// with the comment "rule to REJECT traffic destined for POD name:<pod>
// namespace: <namespace>". Before that it DROPs what conntrack calls
// INVALID ("rule to drop invalid state for pod"). A policy selects pods of
// its own namespace only, so the pod's namespace is the policies'.
const (
	krPodChainPrefix = "KUBE-POD-FW-"
	krReject         = "rule to REJECT traffic destined for POD name:"
	krNamespace      = " namespace: "
	krInvalid        = "rule to drop invalid state for pod"
	krRunPolicy      = "run through nw policy "

	engineKubeRouter = "kube-router"
)

// podChain is what kdrop reads of a kube-router pod chain besides its
// drop rules: the pod's address (every -d/-s test in the chain is of it)
// and the NetworkPolicies the chain runs packets through.
type podChain struct {
	addr     netip.Addr
	policies []policyJump
}

// policyJump is one "run through nw policy" rule.
type policyJump struct {
	name string
	dir  string // "ingress" (-d pod IP), "egress" (-s pod IP), "" both
}

// isPodChain says whether a chain is one of kube-router's pod chains.
func isPodChain(t *nftables.Table, c *nftables.Chain) bool {
	return t.Name == "filter" && strings.HasPrefix(c.Name, krPodChainPrefix)
}

// note reads one rule of a pod chain into pc.
func (pc *podChain) note(nr *nftables.Rule) {
	dir, addr := addrTest(nr.Exprs)
	if addr.IsValid() {
		pc.addr = addr
	}
	for _, e := range nr.Exprs {
		if m, ok := e.(*expr.Match); ok && m.Name == "comment" {
			if name, ok := strings.CutPrefix(xtComment(m.Info), krRunPolicy); ok {
				pc.policies = append(pc.policies, policyJump{name: name, dir: dir})
			}
		}
	}
}

// addrTest finds a rule's test of the packet's source or destination
// address against one address, as iptables-nft writes -s/-d ADDR/32 (a
// payload load of the whole address and an equality): "egress" and the
// address for a source, "ingress" for a destination.
func addrTest(exprs []expr.Any) (dir string, addr netip.Addr) {
	var load *expr.Payload
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Payload:
			load = nil
			if e.OperationType == expr.PayloadLoad && e.Base == expr.PayloadBaseNetworkHeader {
				load = e
			}
		case *expr.Cmp:
			if load == nil || e.Op != expr.CmpOpEq || e.Register != load.DestRegister || len(e.Data) != int(load.Len) {
				continue
			}
			a, ok := netip.AddrFromSlice(e.Data)
			if !ok {
				continue
			}
			switch {
			case load.Len == 4 && load.Offset == 12, load.Len == 16 && load.Offset == 8:
				return "egress", a
			case load.Len == 4 && load.Offset == 16, load.Len == 16 && load.Offset == 24:
				return "ingress", a
			}
		}
	}
	return "", netip.Addr{}
}

// podChainExcludes says whether rule ri, of a kube-router pod chain
// whose pod address is known, cannot have seen ev: kube-router sends only
// packets from or to the pod through its chain. A summary event without
// a source is not excluded.
func podChainExcludes(ri *ruleInfo, ev *tracer.Event) bool {
	if ri.pod == nil || !ri.pod.addr.IsValid() {
		return false
	}
	a, src := ri.pod.addr, ev.Src.Addr().Unmap()
	return ev.Dst.Addr().Unmap() != a && src.IsValid() && src != a
}

// kubeRouterMeaning is what rule r (read as ri) named for ev means when
// kube-router wrote it, else nil: the pod its chain is for, and for its
// REJECT the NetworkPolicies the chain ran the packet through.
func kubeRouterMeaning(r *Rule, ri *ruleInfo, ev *tracer.Event) *Meaning {
	if r == nil || ri == nil || ri.pod == nil || r.Table != "filter" || !strings.HasPrefix(r.Chain, krPodChainPrefix) {
		return nil
	}
	pod := ri.pod
	switch {
	case strings.HasPrefix(r.Comment, krReject) && strings.HasPrefix(r.Verdict, "REJECT"):
		name, ns, ok := strings.Cut(strings.TrimPrefix(r.Comment, krReject), krNamespace)
		if !ok || name == "" || ns == "" {
			return nil
		}
		m := &Meaning{Kind: MeaningNetworkPolicy, Engine: engineKubeRouter, Pod: ns + "/" + name}
		switch {
		case !pod.addr.IsValid():
		case ev.Dst.Addr().Unmap() == pod.addr:
			m.Direction = "ingress"
		case ev.Src.Addr().Unmap() == pod.addr:
			m.Direction = "egress"
		}
		for _, j := range pod.policies {
			if m.Direction == "" || j.dir == "" || j.dir == m.Direction {
				m.NetworkPolicies = append(m.NetworkPolicies, PolicyRef{Namespace: ns, Name: j.name})
			}
		}
		slices.SortFunc(m.NetworkPolicies, func(a, b PolicyRef) int { return strings.Compare(a.Name, b.Name) })
		m.NetworkPolicies = slices.Compact(m.NetworkPolicies)
		m.Text = kubeRouterText(m)
		return m
	case r.Comment == krInvalid && r.Verdict == "DROP":
		return &Meaning{Kind: MeaningInvalidConntrack, Engine: engineKubeRouter,
			Text: "invalid conntrack state (kube-router drops packets conntrack calls INVALID)"}
	}
	return nil
}

// kubeRouterText is the sentence of kube-router's REJECT: "kube-router
// rejects it: NetworkPolicies shop/a, shop/b isolate shop/db-0 for
// ingress and none of them allows it".
func kubeRouterText(m *Meaning) string {
	names := make([]string, len(m.NetworkPolicies))
	for i, p := range m.NetworkPolicies {
		names[i] = p.String()
	}
	dir := ""
	if m.Direction != "" {
		dir = " for " + m.Direction
	}
	switch len(names) {
	case 0:
		return "kube-router rejects it: its firewall chain of " + m.Pod + " runs it through no NetworkPolicy"
	case 1:
		return "kube-router rejects it: NetworkPolicy " + names[0] + " isolates " + m.Pod + dir + " and does not allow it"
	}
	return "kube-router rejects it: NetworkPolicies " + strings.Join(names, ", ") + " isolate " + m.Pod + dir + " and none of them allows it"
}
