package netfilter

// The real kube-router (v2.1.0's firewall controller, built by `make
// kube-router`: a test fixture only, never shipped) in a router namespace
// of the test's own, against a real kube-apiserver (k8s/testenv): a Node,
// three pods whose addresses are the test namespaces', and NetworkPolicies
// in namespace bank: default-deny (ingress, every pod), allow-api (the
// vault from role=api on TCP 8080) and vault-only (the intruder may send
// to the vault alone). The intruder keeps connecting to the vault (the
// router forwards it; the vault's chain REJECTs it: ingress) and sending
// to the router itself (its INPUT; the intruder's chain REJECTs it:
// egress). kdrop names kube-router's REJECT and what its chain says: the
// pod, the direction and the policies.

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

const (
	krNode   = "kr-node"
	krNodeIP = "198.18.1.1" // the router's address towards the intruder
	krNS     = "bank"
)

func TestKubeRouterMeaning(t *testing.T) {
	needNft(t)
	router := os.Getenv("KDROP_KUBE_ROUTER")
	if os.Getenv("KDROP_KUBE_BIN") == "" || router == "" {
		t.Skip("KDROP_KUBE_BIN or KDROP_KUBE_ROUTER not set: runs in `make test-k8s` (the real kube-router and kube-apiserver)")
	}
	env := testenv.Start(t)
	kubeRouterObjects(t, kubernetes.NewForConfigOrDie(env.Config()))

	r := nstest.NewRouted(t)
	forwardAPIServer(t, r.Router, env.URL())
	startKubeRouter(t, env, r.Router, router)

	h := startHarness(t, Config{Interval: 100 * time.Millisecond, SummarySpan: 400 * time.Millisecond},
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, RateLimit: 5, SweepInterval: 200 * time.Millisecond})
	pol := func(names ...string) []PolicyRef {
		var out []PolicyRef
		for _, n := range names {
			out = append(out, PolicyRef{Namespace: krNS, Name: n})
		}
		return out
	}
	// One direction at a time: while both REJECTs count, a packet from
	// the intruder to the vault may be either's (the intruder's chain
	// rejects what its egress policy does not allow, by ipset lookups
	// kdrop does not evaluate), and kdrop lists both as candidates.
	for _, c := range []struct {
		dst  target
		want Meaning
	}{
		{target{"tcp", ap(nstest.ServerIP, 8080)}, Meaning{Kind: MeaningNetworkPolicy, Engine: "kube-router", Pod: "bank/vault", Direction: "ingress",
			NetworkPolicies: pol("allow-api", "default-deny"),
			Text:            "kube-router rejects it: NetworkPolicies bank/allow-api, bank/default-deny isolate bank/vault for ingress and none of them allows it"}},
		{target{"udp", ap(krNodeIP, 9)}, Meaning{Kind: MeaningNetworkPolicy, Engine: "kube-router", Pod: "bank/intruder", Direction: "egress",
			NetworkPolicies: pol("vault-only"),
			Text:            "kube-router rejects it: NetworkPolicy bank/vault-only isolates bank/intruder for egress and does not allow it"}},
	} {
		kubeRouterScenario(t, h, r, c.dst, c.want)
	}
}

// kubeRouterScenario sends to dst from the client (the intruder) until a
// drop is attributed to kube-router's REJECT with the meaning want, the
// load running all along (kube-router needs a few seconds to sync).
func kubeRouterScenario(t *testing.T, h *harness, r *nstest.Routed, dst target, want Meaning) {
	t.Helper()
	stop := load(t, r.Client, []target{dst}, 20*time.Millisecond)
	defer stop()
	var last *Rule
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		for _, a := range h.snapshot() {
			if a.ev.Dst != dst.dst || a.ev.Src.Addr().String() != nstest.ClientIP || a.rule == nil {
				continue
			}
			last = a.rule
			if last.Known() && last.How == HowCounter && last.Table == "filter" && strings.HasPrefix(last.Chain, "KUBE-POD-FW-") &&
				last.Verdict == "REJECT icmp-port-unreachable" && last.K8s != nil && reflect.DeepEqual(*last.K8s, want) {
				t.Logf("%s → %s", a.ev.Dst, last.Short())
				return
			}
		}
		if time.Now().After(deadline) {
			if last != nil {
				t.Errorf("%s: got %s (how %q, k8s %+v, candidates %v); want kube-router's REJECT in a KUBE-POD-FW chain, k8s %+v",
					dst.dst, last.Short(), last.How, last.K8s, last.Candidates, want)
			} else {
				t.Errorf("%s: no drop attributed; want %s", dst.dst, want.Text)
			}
			t.Logf("rules of the router:\n%s", nstest.Run(t, "ip", "netns", "exec", r.Router.Name, "iptables-save", "-c", "-t", "filter"))
			t.FailNow()
		}
	}
}

// kubeRouterObjects creates the Node, the pods (with the addresses and
// phase kubelet would report) and the NetworkPolicies.
func kubeRouterObjects(t *testing.T, cs kubernetes.Interface) {
	ctx := context.Background()
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: krNode}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: krNodeIP}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: krNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name, ip string
		labels   map[string]string
	}{
		{"vault", nstest.ServerIP, map[string]string{"app": "vault"}},
		{"intruder", nstest.ClientIP, map[string]string{"app": "intruder"}},
		{"api", "198.18.2.3", map[string]string{"role": "api"}},
	} {
		pod, err := cs.CoreV1().Pods(krNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name, Labels: p.labels},
			Spec: corev1.PodSpec{NodeName: krNode, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, HostIP: krNodeIP, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}}}
		if _, err := cs.CoreV1().Pods(krNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	sel := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	port := intstr.FromInt32(8080)
	for _, np := range []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Name: "default-deny"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "allow-api"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "vault"), Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("role", "api")}}, Ports: []networkingv1.NetworkPolicyPort{{Port: &port}}}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "vault-only"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "intruder"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "vault")}}}}}},
	} {
		if _, err := cs.NetworkingV1().NetworkPolicies(krNS).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// startKubeRouter runs kube-router's firewall alone in ns until the test
// ends (its rules and ipsets go with the namespace).
func startKubeRouter(t *testing.T, env *testenv.Env, ns *nstest.NS, bin string) {
	runInNetns(t, ns, "kube-router", bin, "--kubeconfig", env.Kubeconfig(),
		"--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--hostname-override", krNode,
		"--service-cluster-ip-range", "10.96.0.0/16", "--iptables-sync-period", "1h", "--health-port", "0", "--metrics-port", "0")
}
