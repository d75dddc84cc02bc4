package netpol

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/k8s"
)

func policy(ns, name string, sel map[string]string, types []networkingv1.PolicyType,
	ingress []networkingv1.NetworkPolicyIngressRule, egress []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types, Ingress: ingress, Egress: egress}}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	both        = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

func podEP(ns, name string, labels map[string]string, ports ...k8s.NamedPort) *k8s.Endpoint {
	return &k8s.Endpoint{Kind: k8s.KindPod, Namespace: ns, Name: name, Labels: labels, NamedPorts: ports}
}

func nsLabels(ns string) map[string]string {
	l := map[string]string{corev1.LabelMetadataName: ns}
	if ns == "prod" {
		l["env"] = "prod"
	}
	return l
}

// TestEvaluate is NetworkPolicy's semantics, case by case, through the
// library: isolation per direction (policyTypes), peers by pod and
// namespace labels, ipBlock with except (IPv4 and IPv6), ports by number,
// name, range and protocol (SCTP too), hostNetwork and non-pod ends.
func TestEvaluate(t *testing.T) {
	sctp := ptr.To(corev1.ProtocolSCTP)
	set := Build([]*networkingv1.NetworkPolicy{
		policy("a", "deny-all", nil, both, nil, nil),
		policy("a", "web", map[string]string{"app": "web"}, ingressOnly, []networkingv1.NetworkPolicyIngressRule{
			{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}},
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "lb"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("http"))}}},
			{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "2001:db8::/32", Except: []string{"2001:db8:bad::/48"}}}}},
			{Ports: []networkingv1.NetworkPolicyPort{{Protocol: sctp, Port: ptr.To(intstr.FromInt32(3868)), EndPort: ptr.To(int32(3870))}}},
		}, nil),
		policy("b", "egress-only", nil, egressOnly, nil, []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}, // every pod of b
		}),
	})
	if len(set.Invalid) > 0 {
		t.Fatalf("invalid: %v", set.Invalid)
	}
	web := podEP("a", "web-0", map[string]string{"app": "web"}, k8s.NamedPort{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP})
	lbProd := podEP("prod", "lb-0", map[string]string{"role": "lb"})
	lbDev := podEP("dev", "lb-0", map[string]string{"role": "lb"})
	other := podEP("a", "x-0", nil)
	b0, b1 := podEP("b", "b-0", nil), podEP("b", "b-1", nil)
	hostNet := &k8s.Endpoint{Kind: k8s.KindPod, Namespace: "a", Name: "agent", HostNetwork: true}
	svc := &k8s.Endpoint{Kind: k8s.KindService, Namespace: "a", Name: "web"}
	const TCP, UDP, SCTP, ICMP = unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP, unix.IPPROTO_ICMP

	for _, c := range []struct {
		name     string
		proto    uint8
		src, dst string
		srcEP    *k8s.Endpoint
		dstEP    *k8s.Endpoint
		want     string // "": allowed; else direction and policies
	}{
		{"labels and namespace labels match, named port", TCP, "10.0.1.1:5000", "10.0.0.1:8080", lbProd, web, ""},
		{"namespace labels do not match", TCP, "10.0.1.1:5000", "10.0.0.1:8080", lbDev, web, "ingress a/deny-all,a/web"},
		{"named port only for its number", TCP, "10.0.1.1:5000", "10.0.0.1:8081", lbProd, web, "ingress a/deny-all,a/web"},
		{"named port only for its protocol", UDP, "10.0.1.1:5000", "10.0.0.1:8080", lbProd, web, "ingress a/deny-all,a/web"},
		{"ipBlock IPv6", TCP, "[2001:db8:1::1]:5000", "[fd00::1]:8080", nil, web, ""},
		{"ipBlock except IPv6", TCP, "[2001:db8:bad::1]:5000", "[fd00::1]:8080", nil, web, "ingress a/deny-all,a/web"},
		{"SCTP port range, any peer", SCTP, "10.9.9.9:5000", "10.0.0.1:3869", nil, web, ""},
		{"SCTP past the range", SCTP, "10.9.9.9:5000", "10.0.0.1:3871", nil, web, "ingress a/deny-all,a/web"},
		{"TCP in the SCTP range", TCP, "10.9.9.9:5000", "10.0.0.1:3869", nil, web, "ingress a/deny-all,a/web"},
		{"egress of an isolated source comes first", TCP, "10.0.0.2:5000", "10.0.0.1:8080", other, web, "egress a/deny-all"},
		{"to a Service IP: not translated yet, not evaluated", TCP, "10.0.0.2:5000", "10.96.0.10:80", other, svc, ""},
		{"egress-only policy: ingress not isolated", TCP, "10.0.0.2:5000", "10.0.2.1:80", other, b0, "egress a/deny-all"},
		{"egress-only policy: its pods' ingress is open", TCP, "10.9.9.9:5000", "10.0.2.1:80", nil, b0, ""},
		{"egress-only policy allows its own namespace", UDP, "10.0.2.1:5000", "10.0.2.2:53", b0, b1, ""},
		{"egress-only policy: to another namespace", UDP, "10.0.2.1:5000", "10.0.0.1:53", b0, web, "egress b/egress-only"},
		{"hostNetwork ends are addresses", TCP, "172.18.0.2:5000", "172.18.0.3:80", hostNet, hostNet, ""},
		{"not isolated: no policy in the namespace", TCP, "10.0.1.1:5000", "10.0.1.2:80", lbProd, lbDev, ""},
		{"ICMP is not evaluated", ICMP, "10.0.1.1:0", "10.0.0.1:0", lbDev, web, ""},
		{"unresolved ends", TCP, "10.0.1.1:5000", "10.0.0.1:80", nil, nil, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := Flow{Proto: c.proto, Src: netip.MustParseAddrPort(c.src), Dst: netip.MustParseAddrPort(c.dst), SrcK8s: c.srcEP, DstK8s: c.dstEP}
			got := ""
			if m := set.Evaluate(f, nsLabels); m != nil {
				var names []string
				for _, r := range m.NetworkPolicies {
					names = append(names, r.String())
				}
				got = m.Direction + " " + strings.Join(names, ",")
				if !strings.Contains(m.Text, m.Direction) {
					t.Errorf("text %q does not say %s", m.Text, m.Direction)
				}
			}
			if got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	// both ends isolated and both directions deny: fixing egress alone
	// would leave the drop, so the sentence names ingress's policies too
	f := Flow{Proto: TCP, Src: netip.MustParseAddrPort("10.0.0.2:5000"), Dst: netip.MustParseAddrPort("10.0.0.1:8080"), SrcK8s: other, DstK8s: web}
	if m := set.Evaluate(f, nsLabels); m == nil || !strings.Contains(m.Text, "; ingress is denied too: NetworkPolicies a/deny-all, a/web isolate a/web") {
		t.Errorf("both directions deny, meaning %+v", m)
	}
}

// TestInvalidPolicy: what validation would reject is left out, named, and
// the rest still evaluates.
func TestInvalidPolicy(t *testing.T) {
	bad := policy("a", "bad", nil, ingressOnly, []networkingv1.NetworkPolicyIngressRule{
		{Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("http")), EndPort: ptr.To(int32(90))}}}, // a range from a named port
	}, nil)
	noTypes := policy("a", "no-types", nil, nil, nil, nil)
	set := Build([]*networkingv1.NetworkPolicy{bad, noTypes, policy("a", "deny", nil, ingressOnly, nil, nil)})
	if len(set.Invalid) != 2 || !strings.HasPrefix(set.Invalid[0], "a/bad: ") || !strings.HasPrefix(set.Invalid[1], "a/no-types: ") {
		t.Errorf("Invalid = %q", set.Invalid)
	}
	f := Flow{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("10.0.0.2:1"), Dst: netip.MustParseAddrPort("10.0.0.1:80"), DstK8s: podEP("a", "p", nil)}
	if m := set.Evaluate(f, nsLabels); m == nil || len(m.NetworkPolicies) != 1 || m.NetworkPolicies[0].Name != "deny" {
		t.Errorf("meaning %+v, want a/deny alone", m)
	}
}

// TestConcurrentEvaluate: one Set, many goroutines (run with -race).
func TestConcurrentEvaluate(t *testing.T) {
	set := Build([]*networkingv1.NetworkPolicy{policy("a", "deny", nil, ingressOnly, nil, nil)})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				f := Flow{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort(fmt.Sprintf("10.0.%d.%d:1", i, j%250+1)),
					Dst: netip.MustParseAddrPort("10.0.0.1:80"), DstK8s: podEP("a", "p", nil)}
				if set.Evaluate(f, nsLabels) == nil {
					t.Error("allowed")
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestCompareWithEngine: an engine's rule (kube-router's, as package
// netfilter decodes it) against kdrop's own evaluation: agreeing, naming
// other policies, and allowing what the engine rejected. Both views are
// said, never one picked silently.
func TestCompareWithEngine(t *testing.T) {
	set := Build([]*networkingv1.NetworkPolicy{
		policy("np", "default-deny", nil, ingressOnly, nil, nil),
		policy("np", "allow-api", map[string]string{"app": "server"}, ingressOnly, []networkingv1.NetworkPolicyIngressRule{
			{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "api"}}}}},
		}, nil),
		policy("np", "jail", map[string]string{"jailed": "yes"}, egressOnly, nil, nil),
	})
	server := podEP("np", "server", map[string]string{"app": "server"})
	flow := func(src *k8s.Endpoint) Flow {
		return Flow{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("10.244.0.3:40000"), Dst: netip.MustParseAddrPort("10.244.0.4:8080"),
			SrcK8s: src, DstK8s: server}
	}
	engine := func(policies ...string) *netfilter.Meaning {
		m := &netfilter.Meaning{Kind: netfilter.MeaningNetworkPolicy, Engine: "kube-router", Direction: Ingress, Pod: "np/server",
			Text: "kube-router rejects it"}
		for _, p := range policies {
			m.NetworkPolicies = append(m.NetworkPolicies, netfilter.PolicyRef{Namespace: "np", Name: p})
		}
		return m
	}
	for _, c := range []struct {
		name      string
		engine    *netfilter.Meaning
		src       *k8s.Endpoint
		want      string
		evaluated bool
		text      string
	}{
		{"agrees", engine("allow-api", "default-deny"), podEP("np", "intruder", nil), netfilter.EvaluationAgrees, false,
			"NetworkPolicies np/allow-api, np/default-deny isolate np/server for ingress; none allows TCP 8080 from np/intruder (kube-router's rule agrees)"},
		{"other policies", engine("default-deny"), podEP("np", "intruder", nil), netfilter.EvaluationDisagrees, true,
			"kube-router rejects it; kdrop's evaluation of the NetworkPolicies disagrees: NetworkPolicies np/allow-api, np/default-deny isolate np/server for ingress; none allows TCP 8080 from np/intruder"},
		{"allowed", engine("allow-api", "default-deny"), podEP("np", "api", map[string]string{"role": "api"}), netfilter.EvaluationDisagrees, false,
			"kube-router rejects it; kdrop's evaluation of the NetworkPolicies disagrees: as the API server holds them they allow TCP 8080 from np/api"},
		// both directions deny; the engine's chain of the destination
		// dropped it: compared with kdrop's ingress evaluation
		{"both deny", engine("allow-api", "default-deny"), podEP("np", "jailed", map[string]string{"jailed": "yes"}), netfilter.EvaluationAgrees, false,
			"NetworkPolicies np/allow-api, np/default-deny isolate np/server for ingress; none allows TCP 8080 from np/jailed (kube-router's rule agrees)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			set.check(c.engine, flow(c.src), nsLabels)
			if c.engine.Evaluation != c.want || (c.engine.Evaluated != nil) != c.evaluated || c.engine.Text != c.text {
				t.Errorf("evaluation %q (evaluated %+v), text:\n%s\nwant %q, evaluated %v, text:\n%s",
					c.engine.Evaluation, c.engine.Evaluated, c.engine.Text, c.want, c.evaluated, c.text)
			}
			if c.engine.Engine != "kube-router" || c.engine.Pod != "np/server" || c.engine.Direction != Ingress {
				t.Errorf("the engine's own view changed: %+v", c.engine)
			}
		})
	}
}
