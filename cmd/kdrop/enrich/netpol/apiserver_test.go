package netpol

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/k8s/testenv"
)

// TestAgainstAPIServer evaluates drops against NetworkPolicies, namespaces
// and pods held by a real kube-apiserver, through the resolver's informers,
// as the pipeline does: default-deny plus an allow for one label (by named
// port), an ipBlock with except, egress default-deny with an ipBlock and a
// namespaceSelector with a port range, a namespace without policies, a
// hostNetwork pod; then a pod deleted moments ago still evaluates with its
// labels, and a deleted policy is no longer named.
func TestAgainstAPIServer(t *testing.T) {
	env := testenv.Start(t)
	admin := kubernetes.NewForConfigOrDie(env.Config())
	ctx := t.Context()

	for ns, team := range map[string]string{"shop": "shop", "web": "web", "ops": ""} {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
		if team != "" {
			n.Labels = map[string]string{"team": team}
		}
		if _, err := admin.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(ns, name, ip string, labels map[string]string, hostNetwork bool, ports ...corev1.ContainerPort) {
		t.Helper()
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: "node-a", HostNetwork: hostNetwork,
				Containers: []corev1.Container{{Name: "c", Image: "example.invalid/app:1", Ports: ports}}},
		}
		p, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			HostIP: "172.18.0.2", HostIPs: []corev1.HostIP{{IP: "172.18.0.2"}}}
		if _, err := admin.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod("shop", "db-0", "10.1.0.10", map[string]string{"app": "db"}, false,
		corev1.ContainerPort{Name: "postgres", ContainerPort: 5432})
	pod("shop", "api-1", "10.1.0.11", map[string]string{"app": "api"}, false)
	pod("shop", "batch-2", "10.1.0.12", map[string]string{"app": "batch"}, false)
	pod("shop", "agent", "172.18.0.2", map[string]string{"app": "agent"}, true, corev1.ContainerPort{ContainerPort: 9100})
	pod("web", "front-0", "10.2.0.5", map[string]string{"app": "front"}, false)
	pod("ops", "tool-0", "10.3.0.5", nil, false)
	pod("ops", "tool-1", "10.3.0.6", nil, false)

	tcp, udp := ptr.To(corev1.ProtocolTCP), ptr.To(corev1.ProtocolUDP)
	policies := []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "default-deny"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-ingress"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: tcp, Port: ptr.To(intstr.FromString("postgres"))}}},
					{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "198.51.100.0/24", Except: []string{"198.51.100.128/25"}}}}},
				}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api-from-web"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "web"}}}}}},
			}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "egress-deny"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "web", Name: "egress-allow"},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
				Egress: []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: udp, Port: ptr.To(intstr.FromInt32(53))}}},
					{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "shop"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: tcp, Port: ptr.To(intstr.FromInt32(8000)), EndPort: ptr.To(int32(8100))}}},
				}}},
	}
	for _, np := range policies {
		if _, err := admin.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
		}
	}

	res, err := k8s.New(k8s.Config{REST: env.Config(), Node: "node-a", DeletedWindow: 5 * time.Minute}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res.Start(rctx)
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	defer scancel()
	if !res.WaitForSync(sctx) {
		t.Fatalf("resolver did not sync: %+v", res.Status())
	}
	ev := NewEvaluator(res)
	flow := func(proto uint8, src, dst string) Flow {
		f := Flow{Proto: proto, Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}
		s, d := res.LookupIP(f.Src.Addr(), f.Src.Port(), time.Now()), res.LookupIP(f.Dst.Addr(), f.Dst.Port(), time.Now())
		f.SrcK8s, f.DstK8s = &s, &d
		return f
	}
	check := func(name string, proto uint8, src, dst, want string) {
		t.Helper()
		eventually(t, 10*time.Second, func() string {
			got := ev.Meaning(flow(proto, src, dst))
			gotText := ""
			if got != nil {
				gotText = got.Text
				if got.Kind != netfilter.MeaningNetworkPolicy || got.Engine != "" || len(got.NetworkPolicies) == 0 ||
					!slices.IsSortedFunc(got.NetworkPolicies, compareRef) {
					return fmt.Sprintf("%s: meaning %+v", name, got)
				}
			}
			if gotText != want {
				return fmt.Sprintf("%s: got %q, want %q", name, gotText, want)
			}
			return ""
		})
	}
	const TCP, UDP = unix.IPPROTO_TCP, unix.IPPROTO_UDP

	// Ingress: default-deny plus an allow for app=api on the named port.
	check("client without the label", TCP, "10.1.0.12:40000", "10.1.0.10:5432",
		"NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5432 (postgres) from shop/batch-2")
	check("client with the label, named port", TCP, "10.1.0.11:40000", "10.1.0.10:5432", "")
	check("client with the label, another port", TCP, "10.1.0.11:40000", "10.1.0.10:5433",
		"NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5433 from shop/api-1")
	check("named port is TCP only", UDP, "10.1.0.11:40000", "10.1.0.10:5432",
		"NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows UDP 5432 from shop/api-1")
	check("default-deny alone", TCP, "10.1.0.11:40000", "10.1.0.12:80",
		"NetworkPolicy shop/default-deny isolates shop/batch-2 for ingress and does not allow TCP 80 from shop/api-1")
	// ipBlock with except, for an address outside the cluster.
	check("ipBlock", TCP, "198.51.100.7:40000", "10.1.0.10:5432", "")
	check("ipBlock except", TCP, "198.51.100.200:40000", "10.1.0.10:5432",
		"NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5432 (postgres) from 198.51.100.200")
	// Egress default-deny plus an ipBlock and a namespaceSelector with endPort.
	check("egress ipBlock", UDP, "10.2.0.5:40000", "192.0.2.10:53", "")
	check("egress ipBlock except", UDP, "10.2.0.5:40000", "192.0.2.200:53",
		"NetworkPolicies web/egress-allow, web/egress-deny isolate web/front-0 for egress; none allows UDP 53 to 192.0.2.200")
	check("egress and ingress allowed (namespaceSelectors, endPort)", TCP, "10.2.0.5:40000", "10.1.0.11:8050", "")
	check("egress past endPort", TCP, "10.2.0.5:40000", "10.1.0.11:8101",
		"NetworkPolicies web/egress-allow, web/egress-deny isolate web/front-0 for egress; none allows TCP 8101 to shop/api-1")
	check("egress allowed, ingress not", TCP, "10.2.0.5:40000", "10.1.0.10:8050",
		"NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 8050 from web/front-0")
	// Not isolated: no policy in ops; a hostNetwork pod; node to node.
	check("namespace without policies", TCP, "10.3.0.5:40000", "10.3.0.6:80", "")
	check("hostNetwork destination", TCP, "10.1.0.12:40000", "172.18.0.2:9100", "")
	if f := flow(unix.IPPROTO_TCP, "10.1.0.12:40000", "172.18.0.2:9100"); f.DstK8s.Kind != k8s.KindPod || !f.DstK8s.HostNetwork {
		t.Errorf("172.18.0.2:9100 resolves to %+v, want the hostNetwork pod", f.DstK8s)
	}

	// A pod deleted moments ago still evaluates, with its labels: the
	// deleted api-1 is still allowed on the named port.
	if err := admin.CoreV1().Pods("shop").Delete(ctx, "api-1", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string {
		if e := res.LookupIP(netip.MustParseAddr("10.1.0.11"), 0, time.Now()); e.DeletedAgo <= 0 || e.Labels["app"] != "api" {
			return fmt.Sprintf("10.1.0.11 resolves to %+v, want the deleted api-1 with its labels", e)
		}
		return ""
	})
	check("deleted client with the label", TCP, "10.1.0.11:40000", "10.1.0.10:5432", "")
	check("deleted client, another port", TCP, "10.1.0.11:40000", "10.1.0.10:5433",
		"NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5433 from shop/api-1")

	// A deleted policy is no longer named (the informer's update)...
	beforeDelete := time.Now()
	if err := admin.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "db-ingress", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("after db-ingress was deleted", TCP, "10.1.0.12:40000", "10.1.0.10:5432",
		"NetworkPolicy shop/default-deny isolates shop/db-0 for ingress and does not allow TCP 5432 (postgres) from shop/batch-2")
	// ...but a drop from before the deletion, evaluated after it, meets
	// the policies then in force.
	f := flow(TCP, "10.1.0.12:40000", "10.1.0.10:5432")
	f.At = beforeDelete
	if m := ev.Meaning(f); m == nil || m.Text != "NetworkPolicies shop/db-ingress, shop/default-deny isolate shop/db-0 for ingress; none allows TCP 5432 (postgres) from shop/batch-2" {
		t.Errorf("a drop from before db-ingress was deleted: meaning %+v", m)
	}
	// Namespace labels follow the informer: web loses team=web, so
	// api-from-web no longer allows front-0.
	nsWeb, err := admin.CoreV1().Namespaces().Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(nsWeb.Labels, "team")
	if _, err := admin.CoreV1().Namespaces().Update(ctx, nsWeb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod("shop", "api-3", "10.1.0.13", map[string]string{"app": "api"}, false)
	check("namespace label removed", TCP, "10.2.0.5:40000", "10.1.0.13:8050",
		"NetworkPolicies shop/api-from-web, shop/default-deny isolate shop/api-3 for ingress; none allows TCP 8050 from web/front-0")
}

func compareRef(a, b netfilter.PolicyRef) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// eventually polls cond until it returns "" or timeout passes, then fails
// with cond's last explanation.
func eventually(t testing.TB, timeout time.Duration, cond func() string) {
	t.Helper()
	start := time.Now()
	why := ""
	for time.Since(start) < timeout {
		if why = cond(); why == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after %v: %s", timeout, why)
}
