package netfilter

// The real kube-proxy (v1.34, from .cache/kube/bin) in a network namespace
// of the test's own, against a real kube-apiserver (k8s/testenv), in
// iptables mode and in nftables mode. A client namespace sends, for the
// whole test, to a ClusterIP Service without endpoints (kube-proxy REJECTs
// it) and to the node port of a Service with externalTrafficPolicy: Local
// whose only endpoint is on another Node (kube-proxy DROPs it). kdrop names
// kube-proxy's rule and what it means: the kind and the Service, read from
// the rule's comment (iptables) or from the element of kube-proxy's map
// that the packet hits (nftables).

import (
	"context"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

const (
	kpNode      = "kp-node"
	kpNodeIP    = "198.18.40.1"
	kpClientIP  = "198.18.40.2"
	kpCartIP    = "10.96.0.50"
	kpNodePort  = 30080
	kpCartPort  = 80
	kpLBIP      = "192.0.2.100"
	kpLBPort    = 443
	kpNamespace = "shop"
)

func TestKubeProxyMeaning(t *testing.T) {
	needNft(t)
	if os.Getenv("KDROP_KUBE_BIN") == "" {
		t.Skip("KDROP_KUBE_BIN not set: runs in `make test-k8s` (the real kube-proxy and kube-apiserver)")
	}
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	kubeProxyObjects(t, cs)
	for _, mode := range []string{"iptables", "nftables"} {
		t.Run(mode, func(t *testing.T) { kubeProxyScenario(t, env, mode) })
	}
}

// kubeProxyObjects creates the two Nodes, the Services and the
// EndpointSlice that puts web's only endpoint on the other Node.
func kubeProxyObjects(t *testing.T, cs kubernetes.Interface) {
	ctx := context.Background()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for name, ip := range map[string]string{kpNode: kpNodeIP, "kp-other": "198.18.41.1"} {
		n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
		must(cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}))
	}
	must(cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kpNamespace}}, metav1.CreateOptions{}))
	port := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolUDP, Port: kpCartPort, TargetPort: intstr.FromInt32(8080)}
	must(cs.CoreV1().Services(kpNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "cart"},
		Spec: corev1.ServiceSpec{ClusterIP: kpCartIP, Ports: []corev1.ServicePort{port},
			Selector: map[string]string{"app": "cart"}}, // nothing matches: no endpoints
	}, metav1.CreateOptions{}))
	port.NodePort = kpNodePort
	must(cs.CoreV1().Services(kpNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{port},
			ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}, // no selector: the slice below is its
	}, metav1.CreateOptions{}))
	slice := func(svc, portName, addr, node string) {
		t.Helper()
		ready, proto, p := true, corev1.ProtocolUDP, int32(8080)
		must(cs.DiscoveryV1().EndpointSlices(kpNamespace).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: svc + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{addr},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node}},
			Ports: []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &p}},
		}, metav1.CreateOptions{}))
	}
	slice("web", "http", "10.244.1.5", "kp-other")
	// A LoadBalancer Service open to 203.0.113.0/24 only, with an endpoint
	// on this node: the client (outside the range) is dropped.
	lbPort := corev1.ServicePort{Name: "https", Protocol: corev1.ProtocolUDP, Port: kpLBPort, TargetPort: intstr.FromInt32(8080)}
	lb, err := cs.CoreV1().Services(kpNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "lb"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{lbPort},
			LoadBalancerSourceRanges: []string{"203.0.113.0/24"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: kpLBIP}}
	must(cs.CoreV1().Services(kpNamespace).UpdateStatus(ctx, lb, metav1.UpdateOptions{}))
	slice("lb", "https", "10.244.0.5", kpNode)
}

func kubeProxyScenario(t *testing.T, env *testenv.Env, mode string) {
	client, node := nstest.New(t, "kpc"), nstest.New(t, "kpn")
	dev, _ := nstest.Veth(t, client, kpClientIP+"/24", "", node, kpNodeIP+"/24", "")
	guard(t, client, dev)
	client.IP(t, "route add 10.96.0.0/16 via "+kpNodeIP)
	// The node routes ClusterIPs somewhere (a veth whose peer is down, so
	// nothing comes back), so that they are forwarded and meet
	// kube-proxy's filter rules.
	node.IP(t, "link add kpd0 type veth peer name kpd1")
	node.IP(t, "link set kpd0 up")
	node.IP(t, "route add 10.96.0.0/16 dev kpd0")
	client.IP(t, "route add "+kpLBIP+" via "+kpNodeIP)
	node.IP(t, "route add "+kpLBIP+" dev kpd0")
	node.Sysctl(t, "net/ipv4/ip_forward", "1")
	forwardAPIServer(t, node, env.URL())
	startKubeProxy(t, env, node, mode)

	h := startHarness(t, Config{Interval: 100 * time.Millisecond, SummarySpan: 400 * time.Millisecond},
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, RateLimit: 5, SweepInterval: 200 * time.Millisecond})
	stop := load(t, client, []target{{"udp", ap(kpCartIP, kpCartPort)}, {"udp", ap(kpNodeIP, kpNodePort)}, {"udp", ap(kpLBIP, kpLBPort)}}, 10*time.Millisecond)
	defer stop()

	type want struct {
		table, chain, verdict, how string
		meaning                    Meaning
	}
	wants := map[uint16]want{
		kpCartPort: {"filter", "KUBE-SERVICES", "REJECT icmp-port-unreachable", HowCounter, Meaning{Kind: MeaningNoEndpoints,
			Engine: "kube-proxy", Service: "shop/cart:http", Text: "Service shop/cart:http has no endpoints"}},
		kpNodePort: {"filter", "KUBE-EXTERNAL-SERVICES", "DROP", HowCounter, Meaning{Kind: MeaningNoLocalEndpoints,
			Engine: "kube-proxy", Service: "shop/web:http", Text: "Service shop/web:http has no local endpoints (externalTrafficPolicy: Local)"}},
		kpLBPort: {"filter", "KUBE-PROXY-FIREWALL", "DROP", HowCounter, Meaning{Kind: MeaningSourceRange,
			Engine: "kube-proxy", Service: "shop/lb:https", Text: "Service shop/lb:https: source not in loadBalancerSourceRanges"}},
	}
	if mode == "nftables" {
		w := wants[kpCartPort]
		w.table, w.chain, w.verdict, w.how = "kube-proxy", "reject-chain", "REJECT icmp-port-unreachable", HowMatch
		wants[kpCartPort] = w
		w = wants[kpNodePort]
		w.table, w.chain, w.verdict, w.how = "kube-proxy", "nodeport-endpoints-check", "DROP", HowMatch
		wants[kpNodePort] = w
		w = wants[kpLBPort]
		w.table, w.chain, w.verdict, w.how = "kube-proxy", "", "DROP", HowMatch // chain: firewall-<hash>-shop/lb/udp/https
		wants[kpLBPort] = w
	}
	// kube-proxy needs a few seconds to sync; the load runs all along.
	deadline := time.Now().Add(90 * time.Second)
	var last map[uint16]*Rule
	for {
		last = map[uint16]*Rule{}
		for _, a := range h.snapshot() {
			w, mine := wants[a.ev.Dst.Port()]
			if !mine || a.ev.Src.Addr().String() != kpClientIP || a.rule == nil {
				continue
			}
			last[a.ev.Dst.Port()] = a.rule
			r := a.rule
			chainOK := r.Chain == w.chain || (w.chain == "" && strings.HasPrefix(r.Chain, "firewall-") && strings.HasSuffix(r.Chain, "-shop/lb/udp/https"))
			if r.Known() && r.K8s != nil && r.Table == w.table && chainOK && r.Verdict == w.verdict &&
				r.How == w.how && reflect.DeepEqual(*r.K8s, w.meaning) {
				last[a.ev.Dst.Port()] = nil
				if _, first := wants[a.ev.Dst.Port()]; first {
					t.Logf("%s → %s (how %s)", a.ev.Dst, r.Short(), r.How)
				}
				delete(wants, a.ev.Dst.Port())
			}
		}
		if len(wants) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for port, w := range wants {
				r := last[port]
				if r == nil {
					t.Errorf("port %d: no drop attributed; want %s/%s %s: %s", port, w.table, w.chain, w.verdict, w.meaning.Text)
					continue
				}
				t.Errorf("port %d: got %s (how %q, k8s %+v, candidates %v); want %s/%s %s how %s k8s %+v",
					port, r.Short(), r.How, r.K8s, r.Candidates, w.table, w.chain, w.verdict, w.how, w.meaning)
			}
			t.Logf("ruleset of the node:\n%s", nstest.Run(t, "ip", "netns", "exec", node.Name, "nft", "list", "ruleset"))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s mode: the three drops named with their Service while the load runs", mode)
	if mode == "iptables" {
		decodeRealRules(t, node)
	}
}

// decodeRealRules reads the rules the real kube-proxy wrote in ns and
// checks the meaning of the one no traffic here hits: KUBE-FORWARD's drop
// of conntrack state INVALID. (KUBE-FIREWALL's martian rule is written
// only where kube-proxy serves node ports on localhost, not with the
// nodePortAddresses here.)
func decodeRealRules(t *testing.T, ns *nstest.NS) {
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+ns.Name, &st); err != nil {
		t.Fatal(err)
	}
	r := netnsReader{ino: uint32(st.Ino), timeout: 5 * time.Second}
	rs, err := r.read("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatalf("reading kube-proxy's rules: %v", err)
	}
	want := map[string]string{"KUBE-FORWARD": MeaningInvalidConntrack}
	for _, ri := range rs.rules {
		if ri.Family != "ip" || ri.Table != "filter" {
			continue
		}
		m := kubeProxyMeaning(&Rule{Ref: ri.Ref}, &tracer.Event{}, rs)
		if kind, ok := want[ri.Chain]; ok && m != nil && m.Kind == kind {
			t.Logf("%s#%d %s %q: %s", ri.Chain, ri.Handle, ri.Verdict, ri.Comment, m.Text)
			delete(want, ri.Chain)
		}
	}
	for chain, kind := range want {
		t.Errorf("no rule of kube-proxy's in filter/%s decoded as %s", chain, kind)
	}
}

// forwardAPIServer makes the API server (on the host's 127.0.0.1) answer
// on the same address inside ns, where kube-proxy runs: a listener
// opened in ns, each connection dialed from the host's namespace.
func forwardAPIServer(t *testing.T, ns *nstest.NS, apiURL string) {
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	ns.IP(t, "link set lo up")
	ns.In(t, func() {
		if l, err = net.Listen("tcp", u.Host); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", u.Host)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
}

// startKubeProxy runs kube-proxy in ns with a configuration that leaves the
// host alone (no conntrack sysctls) until the test ends.
func startKubeProxy(t *testing.T, env *testenv.Env, ns *nstest.NS, mode string) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "kube-proxy.yaml")
	conf := `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: ` + env.Kubeconfig() + `
hostnameOverride: ` + kpNode + `
mode: ` + mode + `
clusterCIDR: 10.244.0.0/16
nodePortAddresses: ["198.18.40.0/24"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	runInNetns(t, ns, "kube-proxy ("+mode+")", testenv.Bin(t, "kube-proxy"), "--config", cfg, "--v=2")
}

// runInNetns runs bin with args in ns until the test ends, its output in
// a log whose last lines a failed test shows.
func runInNetns(t *testing.T, ns *nstest.NS, what, bin string, args ...string) {
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			t.Logf("%s log, last lines:\n%s", what, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
}
