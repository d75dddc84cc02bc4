package netpol

import (
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// benchPolicies is a cluster of 100 namespaces with 10 policies each: a
// default-deny and nine allows by label, port and namespace label.
func benchPolicies() []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for n := range 100 {
		ns := fmt.Sprintf("ns-%d", n)
		out = append(out, policy(ns, "default-deny", nil, both, nil, nil))
		for i := range 9 {
			out = append(out, policy(ns, fmt.Sprintf("allow-%d", i), map[string]string{"app": fmt.Sprintf("app-%d", i)}, ingressOnly,
				[]networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{
						{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("client-%d", i)}}},
						{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}},
						{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}},
					},
					Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(int32(8000 + i)))}, {Port: ptr.To(intstr.FromString("http"))}},
				}}, nil))
		}
	}
	return out
}

// BenchmarkEvaluate is the cost per NETFILTER_DROP event of NetworkPolicy
// attribution once the set is built (1,000 policies in 100 namespaces):
// a denied drop (the sentence built) and an allowed one.
func BenchmarkEvaluate(b *testing.B) {
	set := Build(benchPolicies())
	dst := podEP("ns-7", "app-3-0", map[string]string{"app": "app-3"})
	for _, c := range []struct {
		name, src, dst string
		denied         bool
	}{
		{"denied", "192.0.2.200:40000", "10.0.0.1:9000", true},
		{"allowed", "192.0.2.7:40000", "10.0.0.1:8003", false},
	} {
		f := Flow{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort(c.src), Dst: netip.MustParseAddrPort(c.dst), DstK8s: dst}
		if m := set.Evaluate(f, nsLabels); (m != nil) != c.denied {
			b.Fatalf("%s: %+v", c.name, m)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				set.Evaluate(f, nsLabels)
			}
		})
	}
}

// BenchmarkBuild is the cost of building the set of 1,000 policies, paid
// once per change of any NetworkPolicy (on the first drop after it).
func BenchmarkBuild(b *testing.B) {
	pols := benchPolicies()
	b.ReportAllocs()
	for b.Loop() {
		Build(pols)
	}
}
