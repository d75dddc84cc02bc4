package k8s

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/kdrop/kdrop/k8s/testenv"
)

// Helpers for the integration tests, which run against a real etcd and
// kube-apiserver (k8s/testenv). Nothing runs pods there: tests create the
// objects a controller would and set pod status as a kubelet would.

type itest struct {
	t     testing.TB
	env   *testenv.Env
	admin kubernetes.Interface
}

func startEnv(t testing.TB) *itest {
	t.Helper()
	start := time.Now()
	env := testenv.Start(t)
	t.Logf("etcd + kube-apiserver up in %v", time.Since(start).Round(time.Millisecond))
	cfg := env.Config()
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	return &itest{t: t, env: env, admin: kubernetes.NewForConfigOrDie(cfg)}
}

// logger returns a logger that writes to the test log and is observed.
func testLogger(t testing.TB) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}

// resolver starts a Resolver with the admin kubeconfig (or the given one).
func (it *itest) resolver(log *zap.Logger, kubeconfig string) *Resolver {
	it.t.Helper()
	if kubeconfig == "" {
		kubeconfig = it.env.Kubeconfig()
	}
	r, err := New(Config{Kubeconfig: kubeconfig, Context: "kdrop-test", Node: "node-a", DeletedWindow: 5 * time.Minute}, log)
	if err != nil {
		it.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	it.t.Cleanup(cancel)
	start := time.Now()
	r.Start(ctx)
	if d := time.Since(start); d > 100*time.Millisecond {
		it.t.Errorf("Start took %v: it must not block", d)
	}
	return r
}

func (it *itest) sync(r *Resolver) {
	it.t.Helper()
	ctx, cancel := context.WithTimeout(it.t.Context(), 60*time.Second)
	defer cancel()
	if !r.WaitForSync(ctx) {
		it.t.Fatalf("resolver did not sync: %+v", r.Status())
	}
}

func (it *itest) namespace(name string) {
	it.t.Helper()
	_, err := it.admin.CoreV1().Namespaces().Create(it.t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		it.t.Fatal(err)
	}
}

type podSpec struct {
	ns, name    string
	node        string
	ips         []string // status.podIPs
	hostIP      string   // status.hostIPs
	ready       bool
	hostNetwork bool
	ports       []int32
	owner       *metav1.OwnerReference
	labels      map[string]string
}

// pod creates a pod and, if it has IPs, sets its status as a kubelet would.
func (it *itest) pod(s podSpec) *corev1.Pod {
	it.t.Helper()
	ctx := it.t.Context()
	var ports []corev1.ContainerPort
	for _, p := range s.ports {
		ports = append(ports, corev1.ContainerPort{ContainerPort: p})
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.ns, Labels: s.labels},
		Spec: corev1.PodSpec{
			NodeName:    s.node,
			HostNetwork: s.hostNetwork,
			Containers:  []corev1.Container{{Name: "c", Image: "example.invalid/app:1", Ports: ports}},
		},
	}
	if s.owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*s.owner}
	}
	p, err := it.admin.CoreV1().Pods(s.ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		it.t.Fatalf("create pod %s/%s: %v", s.ns, s.name, err)
	}
	if len(s.ips) == 0 {
		return p
	}
	return it.setStatus(p, s.ips, s.hostIP, s.ready)
}

func (it *itest) setStatus(p *corev1.Pod, ips []string, hostIP string, ready bool) *corev1.Pod {
	it.t.Helper()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ips[0]
	p.Status.PodIPs = nil
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if hostIP != "" {
		p.Status.HostIP = hostIP
		p.Status.HostIPs = []corev1.HostIP{{IP: hostIP}}
	}
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: cond, LastTransitionTime: metav1.Now()}}
	p, err := it.admin.CoreV1().Pods(p.Namespace).UpdateStatus(it.t.Context(), p, metav1.UpdateOptions{})
	if err != nil {
		it.t.Fatalf("pod status %s/%s: %v", p.Namespace, p.Name, err)
	}
	return p
}

func (it *itest) deletePod(ns, name string, grace int64) {
	it.t.Helper()
	err := it.admin.CoreV1().Pods(ns).Delete(it.t.Context(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(grace)})
	if err != nil {
		it.t.Fatalf("delete pod %s/%s: %v", ns, name, err)
	}
}

func ownerRef(kind, name string, uid types.UID, apiVersion string) *metav1.OwnerReference {
	return &metav1.OwnerReference{APIVersion: apiVersion, Kind: kind, Name: name, UID: uid, Controller: ptr.To(true)}
}

// eventually polls cond until it returns "" (success) or timeout passes,
// then fails with cond's last explanation.
func eventually(t testing.TB, timeout time.Duration, cond func() string) time.Duration {
	t.Helper()
	start := time.Now()
	why := ""
	for time.Since(start) < timeout {
		if why = cond(); why == "" {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after %v: %s", timeout, why)
	return 0
}

// resolvesTo returns a condition: ip resolves to kind ns/name, not Unresolved.
func resolvesTo(r *Resolver, ip string, port uint16, kind, ns, name string) func() string {
	addr := netip.MustParseAddr(ip)
	return func() string {
		ep := r.LookupIP(addr, port, time.Now())
		if ep.Kind == kind && ep.Namespace == ns && ep.Name == name && !ep.Unresolved {
			return ""
		}
		return fmt.Sprintf("LookupIP(%s, %d) = %s, want %s %s/%s", ip, port, describe(ep), kind, ns, name)
	}
}

func describe(ep Endpoint) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{%s %s/%s", ep.Kind, ep.Namespace, ep.Name)
	if ep.WorkloadKind != "" {
		fmt.Fprintf(&b, " %s/%s", ep.WorkloadKind, ep.WorkloadName)
	}
	if ep.Node != "" {
		fmt.Fprintf(&b, " node=%s", ep.Node)
	}
	if len(ep.Services) > 0 {
		fmt.Fprintf(&b, " services=%v", ep.Services)
	}
	fmt.Fprintf(&b, " ready=%v terminating=%v hostNetwork=%v", ep.Ready, ep.Terminating, ep.HostNetwork)
	if ep.DeletedAgo != 0 {
		fmt.Fprintf(&b, " deletedAgo=%v", ep.DeletedAgo)
	}
	if ep.Unresolved {
		b.WriteString(" UNRESOLVED")
	}
	for _, p := range ep.Previous {
		fmt.Fprintf(&b, " previous=%s", describe(p))
	}
	b.WriteString("}")
	return b.String()
}
