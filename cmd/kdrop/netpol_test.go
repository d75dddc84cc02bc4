package main

// NetworkPolicy attribution end to end: a drop by a netfilter rule between
// two network namespaces whose addresses are pods' IPs in a real
// kube-apiserver, where NetworkPolicies isolate the server. kdrop watch
// must name the rule and, evaluated from the API server, the policies that
// isolate the server and allow nothing like the packet. (No NetworkPolicy
// engine runs here: the netfilter rule stands in for the one an engine
// would write; which rule does not matter to the evaluation.)

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

func TestNetworkPolicyDrop(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, "shop", "batch", nstest.ClientIP, nil) // labels app=batch
	createPod(t, cs, "shop", "db", nstest.ServerIP, nil)    // labels app=db
	for _, np := range []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Name: "default-deny"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "db-from-api"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}}}}}}},
	} {
		if _, err := cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r := nstest.NewRouted(t)
	r.Router.Sh(t, "iptables -A FORWARD -s "+nstest.ClientIP+" -d "+nstest.ServerIP+" -p tcp --dport 5432 -m comment --comment policy-engine -j DROP")

	sc, cmd := watchOne(t, env, r.Router, "--reason", "NETFILTER_DROP")
	_ = r.Client.ConnectErr(t, nstest.ServerIP, 5432, 2*time.Second) // dropped: times out
	if !sc.Scan() {
		t.Fatalf("kdrop watch printed nothing (exit: %v)", cmd.Wait())
	}
	t.Logf("event: %s", sc.Text())
	var d line.Decoder
	var l line.Line
	if err := d.Decode(sc.Bytes(), &l); err != nil || l.Kind != line.KindEvent {
		t.Fatalf("not an event line (%v): %s", err, sc.Bytes())
	}
	rule := l.Event.Rule
	if rule == nil || rule.Comment != "policy-engine" || rule.K8s == nil {
		t.Fatalf("want the rule \"policy-engine\" with a Kubernetes meaning: %s", sc.Text())
	}
	m := rule.K8s
	want := "NetworkPolicies shop/db-from-api, shop/default-deny isolate shop/db for ingress; none allows TCP 5432 from shop/batch"
	if m.Kind != netfilter.MeaningNetworkPolicy || m.Direction != "ingress" || m.Engine != "" || len(m.NetworkPolicies) != 2 || m.Text != want {
		t.Errorf("meaning %+v, want %q", m, want)
	}
}
