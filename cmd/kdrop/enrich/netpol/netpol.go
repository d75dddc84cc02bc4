// Package netpol says which NetworkPolicies a dropped packet ran into,
// whatever enforces them (CNI-neutral): it evaluates the cluster's
// NetworkPolicies, as the API server holds them (package k8s's informers),
// for the drop's protocol, ends and port, and names the policies that
// isolate the destination pod for ingress, or the source pod for egress,
// when no rule of any policy selecting that pod allows the connection.
//
// The semantics are those of networking.k8s.io/v1 NetworkPolicy, evaluated
// by cyclonus's matcher (github.com/mattfenwick/cyclonus/pkg/matcher, the
// engine behind its conformance tool):
//   - a pod is isolated for a direction when a policy of its namespace
//     selects it (podSelector) and lists that direction in policyTypes; a
//     pod no policy selects is not isolated, and its traffic is allowed;
//   - an isolated pod's connection is allowed when a rule of any policy
//     selecting it allows it: peers by podSelector and namespaceSelector
//     (labels of pods and namespaces), ipBlock (cidr minus except), ports by
//     number, name (the destination pod's named container port), range
//     (endPort) and protocol (TCP, UDP, SCTP); a rule without peers allows
//     every peer, one without ports every port;
//   - policies add up: allowed by one is allowed.
//
// What is not a pod — a node, something outside the cluster, a hostNetwork
// pod (policies do not apply to hostNetwork pods) — is an address that only
// ipBlocks can match, and is never isolated itself. A packet to or from a
// Service IP is not evaluated: policies apply to the pod kube-proxy
// translates it to, which the packet does not say. Protocols other than
// TCP, UDP and SCTP are not evaluated.
package netpol

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mattfenwick/cyclonus/pkg/matcher"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/k8s"
)

// Flow is a dropped packet as NetworkPolicy sees it.
type Flow struct {
	Proto    uint8 // IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP; others are not evaluated
	Src, Dst netip.AddrPort
	// SrcK8s and DstK8s are the ends' identity at the drop's time
	// (k8s.Resolver.LookupIP: a pod deleted moments ago included, with its
	// labels); nil, or anything but a pod not on the host network, is an
	// address only.
	SrcK8s, DstK8s *k8s.Endpoint
	// At is the drop's time: the policies then in force apply (zero: now).
	At time.Time
}

// Set is NetworkPolicies built for evaluation, by namespace (a policy
// selects pods of its own namespace only). It is immutable: evaluations
// may run concurrently.
type Set struct {
	byNS    map[string]*matcher.Policy
	Invalid []string // "ns/name: why" of policies left out (the API server rejects such policies; only a broken object has one)
}

// Build builds the set of policies. A policy the matcher cannot take (an
// invalid peer or port range, which the API server's validation rejects)
// is left out and listed in Set.Invalid; the others are still evaluated.
func Build(policies []*networkingv1.NetworkPolicy) *Set {
	s := &Set{byNS: map[string]*matcher.Policy{}}
	for _, np := range policies {
		ingress, egress, err := buildTargets(np)
		if err != nil {
			s.Invalid = append(s.Invalid, np.Namespace+"/"+np.Name+": "+err.Error())
			continue
		}
		p := s.byNS[np.Namespace]
		if p == nil {
			p = matcher.NewPolicy()
			s.byNS[np.Namespace] = p
		}
		if ingress != nil {
			p.AddTarget(true, ingress)
		}
		if egress != nil {
			p.AddTarget(false, egress)
		}
	}
	return s
}

// buildTargets is matcher.BuildTarget with its panics (on what validation
// rejects) turned into an error.
func buildTargets(np *networkingv1.NetworkPolicy) (ingress, egress *matcher.Target, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	if np.Namespace == "" {
		return nil, nil, fmt.Errorf("no namespace")
	}
	ingress, egress = matcher.BuildTarget(np)
	return ingress, egress, nil
}

// Directions (netfilter.Meaning.Direction).
const (
	Ingress = "ingress" // the destination pod is isolated
	Egress  = "egress"  // the source pod is isolated
)

// Evaluate returns what NetworkPolicies say about f: nil when they allow it
// (or do not apply: no end is an isolated pod, an end is a Service IP, the
// protocol is not TCP, UDP or SCTP), else a netfilter.MeaningNetworkPolicy naming the policies
// that isolate the pod and allow nothing matching f. When both ends are
// isolated and both directions deny, egress is named (the source's side
// drops the packet first) and its Text says ingress denies it too. nsLabels gives a namespace's labels
// (k8s.Resolver.NamespaceLabels). One call walks only the policies of the
// two ends' namespaces.
func (s *Set) Evaluate(f Flow, nsLabels func(ns string) map[string]string) *netfilter.Meaning {
	m, _ := s.evaluate(f, nsLabels)
	return m
}

// evaluate is Evaluate, and whether the policies say anything about f:
// false when they do not apply (no end is a pod, an end is a Service IP,
// another protocol) or cannot be evaluated.
func (s *Set) evaluate(f Flow, nsLabels func(ns string) map[string]string) (*netfilter.Meaning, bool) {
	egress, ingress, concluded := s.directions(f, nsLabels)
	if egress != nil && ingress != nil {
		// fixing egress alone would leave the drop at the destination
		egress.Text += "; ingress is denied too: " + ingress.Text
	}
	if egress != nil {
		return egress, concluded
	}
	return ingress, concluded
}

// directions evaluates f for each direction: the meanings of the
// source's egress and the destination's ingress policies that deny it
// (nil: allowed, or the end is no pod), and whether they concluded.
func (s *Set) directions(f Flow, nsLabels func(ns string) map[string]string) (egress, ingress *netfilter.Meaning, concluded bool) {
	proto, ok := protocols[f.Proto]
	if s == nil || !ok || !f.Src.Addr().IsValid() || !f.Dst.Addr().IsValid() || isService(f.SrcK8s) || isService(f.DstK8s) {
		return nil, nil, false
	}
	defer func() {
		if recover() != nil { // the matcher panics on what it cannot parse: no conclusion
			egress, ingress, concluded = nil, nil, false
		}
	}()
	src, dst := peer(f.SrcK8s, f.Src.Addr(), nsLabels), peer(f.DstK8s, f.Dst.Addr(), nsLabels)
	if src.Internal == nil && dst.Internal == nil {
		return nil, nil, false
	}
	t := &matcher.Traffic{Source: src, Destination: dst, ResolvedPort: int(f.Dst.Port()), Protocol: proto}
	if dst.Internal != nil {
		t.ResolvedPortName = portName(f.DstK8s, f.Dst.Port(), proto)
	}
	if src.Internal != nil {
		if p := s.byNS[src.Internal.Namespace]; p != nil {
			if d := p.IsIngressOrEgressAllowed(t, false); !d.IsAllowed() {
				egress = meaning(Egress, d.DenyingTargets, f, proto, t.ResolvedPortName)
			}
		}
	}
	if dst.Internal != nil {
		if p := s.byNS[dst.Internal.Namespace]; p != nil {
			if d := p.IsIngressOrEgressAllowed(t, true); !d.IsAllowed() {
				ingress = meaning(Ingress, d.DenyingTargets, f, proto, t.ResolvedPortName)
			}
		}
	}
	return egress, ingress, true
}

var protocols = map[uint8]corev1.Protocol{
	unix.IPPROTO_TCP:  corev1.ProtocolTCP,
	unix.IPPROTO_UDP:  corev1.ProtocolUDP,
	unix.IPPROTO_SCTP: corev1.ProtocolSCTP,
}

// isPod says whether NetworkPolicies apply to e: a pod not on the host
// network.
func isPod(e *k8s.Endpoint) bool {
	return e != nil && e.Kind == k8s.KindPod && !e.HostNetwork && e.Namespace != ""
}

// isService says whether e is a Service IP: the packet has not been
// translated to the pod policies apply to.
func isService(e *k8s.Endpoint) bool { return e != nil && e.Kind == k8s.KindService }

func peer(e *k8s.Endpoint, addr netip.Addr, nsLabels func(string) map[string]string) *matcher.TrafficPeer {
	p := &matcher.TrafficPeer{IP: addr.Unmap().WithZone("").String()}
	if isPod(e) {
		p.Internal = &matcher.InternalPeer{Namespace: e.Namespace, PodLabels: e.Labels, NamespaceLabels: nsLabels(e.Namespace)}
	}
	return p
}

// portName is the name of the destination pod's container port number
// port for proto, "" when it has none.
func portName(e *k8s.Endpoint, port uint16, proto corev1.Protocol) string {
	for _, np := range e.NamedPorts {
		if np.Port == port && np.Protocol == proto {
			return np.Name
		}
	}
	return ""
}

func meaning(direction string, deniers []*matcher.Target, f Flow, proto corev1.Protocol, portName string) *netfilter.Meaning {
	var refs []netfilter.PolicyRef
	for _, t := range deniers {
		for _, np := range t.SourceRules {
			refs = append(refs, netfilter.PolicyRef{Namespace: np.Namespace, Name: np.Name})
		}
	}
	slices.SortFunc(refs, func(a, b netfilter.PolicyRef) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	refs = slices.Compact(refs)
	m := &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy, NetworkPolicies: refs, Direction: direction,
		Pod: describe(f.DstK8s, f.Dst.Addr())}
	if direction == Egress {
		m.Pod = describe(f.SrcK8s, f.Src.Addr())
	}
	m.Text = text(m, f, proto, portName)
	return m
}

// text is the meaning's sentence: "NetworkPolicies shop/db-ingress,
// shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5432
// from shop/api-1".
func text(m *netfilter.Meaning, f Flow, proto corev1.Protocol, portName string) string {
	names := make([]string, len(m.NetworkPolicies))
	for i, r := range m.NetworkPolicies {
		names[i] = r.String()
	}
	port, prep, other := packet(m.Direction, f, proto, portName)
	if len(names) == 1 {
		return fmt.Sprintf("NetworkPolicy %s isolates %s for %s and does not allow %s %s %s", names[0], m.Pod, m.Direction, port, prep, other)
	}
	return fmt.Sprintf("NetworkPolicies %s isolate %s for %s; none allows %s %s %s", strings.Join(names, ", "), m.Pod, m.Direction, port, prep, other)
}

// packet says what the isolated pod's policies were asked about: "TCP
// 5432 (postgres)", and "from" the source (ingress) or "to" the
// destination (egress).
func packet(direction string, f Flow, proto corev1.Protocol, portName string) (port, prep, other string) {
	port = string(proto) + " " + strconv.Itoa(int(f.Dst.Port()))
	if portName != "" {
		port += " (" + portName + ")"
	}
	if direction == Egress {
		return port, "to", describe(f.DstK8s, f.Dst.Addr())
	}
	return port, "from", describe(f.SrcK8s, f.Src.Addr())
}

// describe names an end: "ns/pod" for a pod, else its address.
func describe(e *k8s.Endpoint, addr netip.Addr) string {
	if e != nil && e.Kind == k8s.KindPod && e.Namespace != "" {
		return e.Namespace + "/" + e.Name
	}
	return addr.Unmap().WithZone("").String()
}

// Evaluator evaluates drops against the cluster's NetworkPolicies as the
// resolver's informers held them at the drop's time. Built Sets are cached
// by generation of the policy list (the last few: a drop from before a
// change uses the list then in force); a Set is built on the first
// evaluation that needs its generation. Safe for concurrent use.
type Evaluator struct {
	src   *k8s.Resolver
	mu    sync.Mutex
	built map[uint64]*Set
	order []uint64 // generations built, oldest first
}

// builtSets bounds the Sets kept: the current one and those of a few
// changes before it.
const builtSets = 4

// NewEvaluator returns an Evaluator reading res's informers.
func NewEvaluator(res *k8s.Resolver) *Evaluator {
	return &Evaluator{src: res, built: map[uint64]*Set{}}
}

// Meaning is Set.Evaluate on the policies in force at f.At; nil (no
// conclusion) until the policy informer has synced — RBAC may deny
// networkpolicies, or the API server be out of reach — since an unsynced
// list cannot tell an isolated pod from one no policy selects yet. It
// never calls the API server.
func (e *Evaluator) Meaning(f Flow) *netfilter.Meaning {
	if !isPod(f.SrcK8s) && !isPod(f.DstK8s) {
		return nil
	}
	set := e.at(f.At)
	if set == nil {
		return nil
	}
	return set.Evaluate(f, e.src.NamespaceLabels)
}

// Check compares an engine's NetworkPolicy rule (engine: Engine set,
// Kind network-policy, as package netfilter decodes it) with kdrop's own
// evaluation of f, and says both: it sets engine.Evaluation and, when
// they disagree, engine.Evaluated, and rewrites engine.Text to say what
// each found. Agreeing means the same isolated pod, direction and
// policies. The engine's rule is for one direction (kube-router's chain of
// the destination, or of the source): kdrop's evaluation of that direction
// is compared, since when both deny, either chain may drop first. When kdrop
// cannot evaluate (policies not listed yet, f not evaluable), engine is
// left as it is: the engine's word alone.
func (e *Evaluator) Check(engine *netfilter.Meaning, f Flow) {
	if engine == nil || !isPod(f.SrcK8s) && !isPod(f.DstK8s) {
		return
	}
	if set := e.at(f.At); set != nil {
		set.check(engine, f, e.src.NamespaceLabels)
	}
}

// check is Evaluator.Check on the policies of s.
func (s *Set) check(engine *netfilter.Meaning, f Flow, nsLabels func(ns string) map[string]string) {
	egress, ingress, concluded := s.directions(f, nsLabels)
	if !concluded {
		return
	}
	own := ingress
	if engine.Direction == Egress || engine.Direction == "" && egress != nil {
		own = egress
	}
	compare(engine, own, f)
}

// compare sets engine's Evaluation, Evaluated and Text from kdrop's own
// evaluation own (nil: the policies allow f).
func compare(engine, own *netfilter.Meaning, f Flow) {
	if own != nil && own.Pod == engine.Pod && own.Direction == engine.Direction && slices.Equal(own.NetworkPolicies, engine.NetworkPolicies) {
		engine.Evaluation, engine.Evaluated = netfilter.EvaluationAgrees, nil
		engine.Text = own.Text + " (" + engine.Engine + "'s rule agrees)"
		return
	}
	engine.Evaluation, engine.Evaluated = netfilter.EvaluationDisagrees, own
	said := engine.Text
	if own != nil {
		engine.Text = said + "; kdrop's evaluation of the NetworkPolicies disagrees: " + own.Text
		return
	}
	proto, name := protocols[f.Proto], ""
	if isPod(f.DstK8s) {
		name = portName(f.DstK8s, f.Dst.Port(), proto)
	}
	port, prep, other := packet(engine.Direction, f, proto, name)
	engine.Text = fmt.Sprintf("%s; kdrop's evaluation of the NetworkPolicies disagrees: as the API server holds them they allow %s %s %s",
		said, port, prep, other)
}

// at returns the Set of the policies in force at t, building it when it
// is not cached; nil when the informer has not synced.
func (e *Evaluator) at(t time.Time) *Set {
	gen, synced := e.src.NetworkPolicyGeneration(t)
	if !synced {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.built[gen]; ok {
		return s
	}
	list, gen, synced := e.src.NetworkPolicies(t)
	if !synced {
		return nil
	}
	s := Build(list)
	e.built[gen] = s
	e.order = append(e.order, gen)
	if len(e.order) > builtSets {
		delete(e.built, e.order[0])
		e.order = e.order[1:]
	}
	return s
}
