package main

// Identity end to end: the "No route to host" incident of a rolling update,
// reproduced in network namespaces whose addresses are the pods' IPs in a
// real kube-apiserver. kdrop watch must name the client pod, and the
// deleted pod (with its Deployment and how long ago it went) as the target.

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// createPod creates a pod (optionally owned) and sets its IP through the
// status subresource, as a kubelet would.
func createPod(t *testing.T, cs kubernetes.Interface, ns, name, ip string, owner *metav1.OwnerReference) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: "test-node", Containers: []corev1.Container{{Name: "c", Image: "app"}}}}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
		if owner.Kind == "ReplicaSet" { // as the ReplicaSet controller labels its pods
			p.Labels["pod-template-hash"] = owner.Name[strings.LastIndexByte(owner.Name, '-')+1:]
		}
	}
	p, err := cs.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if p, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestIdentityNoRouteToDeletedPod(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	r := nstest.NewRouted(t)
	r.Router.Sysctl(t, "net.ipv4.neigh."+r.RouterToServer+".retrans_time_ms", "100")
	const gone = "198.18.2.9" // the old pod's IP: on the server subnet, answered by no one

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dep, err := cs.AppsV1().Deployments("web").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "api"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	rs, err := cs.AppsV1().ReplicaSets("web").Create(ctx, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "api-5c8", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: &yes}}},
		Spec: appsv1.ReplicaSetSpec{Selector: dep.Spec.Selector, Template: dep.Spec.Template},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, "web", "client", nstest.ClientIP, nil)
	createPod(t, cs, "web", "api-5c8-x7k2p", gone, &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes})

	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(kdropBin, "watch", "-o", "json", "--kubeconfig", env.Kubeconfig(), "--node", "test-node",
		"--netns", "/run/netns/"+r.Router.Name, "--type", "unreach", "--duration", "60s", "--count", "1", "--ready-file", ready,
		"-l", "app=client")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// A second watcher whose selector matches no pod of the incident.
	readyOther := filepath.Join(t.TempDir(), "ready")
	other := exec.Command(kdropBin, "watch", "-o", "json", "--kubeconfig", env.Kubeconfig(), "--node", "test-node",
		"--netns", "/run/netns/"+r.Router.Name, "--type", "unreach", "--duration", "60s", "--ready-file", readyOther,
		"-n", "web", "-l", "app=billing")
	var otherOut syncBuffer
	other.Stdout = &otherOut
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	waitFile(t, ready, 60*time.Second)
	waitFile(t, readyOther, 60*time.Second)

	// The rolling update takes the pod away; its IP is still in a client's
	// endpoints.
	if err := cs.CoreV1().Pods("web").Delete(ctx, "api-5c8-x7k2p", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	time.Sleep(500 * time.Millisecond) // let the watch deliver the delete
	if err := r.Client.ConnectErr(t, gone, 8080, 10*time.Second); !errors.Is(err, unix.EHOSTUNREACH) {
		t.Fatalf("connect to %s: want EHOSTUNREACH, got %v", gone, err)
	}
	failed := time.Now()

	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatalf("kdrop watch printed nothing (exit: %v)", cmd.Wait())
	}
	ev := decodeEvent(t, sc.Bytes())
	t.Logf("event: %s", sc.Text())
	if ev.Type != "unreach" || ev.ICMP != "host-unreachable" || ev.Dst != gone || ev.Node != "test-node" {
		t.Errorf("want host-unreachable to %s seen on test-node, got %s", gone, sc.Text())
	}
	if ev.SrcK8s.Kind != "pod" || ev.SrcK8s.Namespace != "web" || ev.SrcK8s.Name != "client" {
		t.Errorf("source should be pod web/client: %s", sc.Text())
	}
	d := ev.DstK8s
	if d.Kind != "pod" || d.Namespace != "web" || d.Name != "api-5c8-x7k2p" || d.WorkloadKind != "Deployment" || d.WorkloadName != "api" || d.Unresolved {
		t.Errorf("destination should be the deleted pod web/api-5c8-x7k2p of Deployment api: %s", sc.Text())
	}
	// deleted_ago is measured from when kdrop saw the delete to the event:
	// between the connect's start and its failure, less the watch delay.
	lo, hi := time.Duration(0), failed.Sub(deleted)+time.Second
	if ago := time.Duration(d.DeletedAgoMs) * time.Millisecond; ago <= lo || ago > hi {
		t.Errorf("deleted_ago %v, want within (0, %v]", ago, hi)
	}
	time.Sleep(500 * time.Millisecond)
	if s := otherOut.String(); s != "" {
		t.Errorf("-l app=billing matched an event of other pods:\n%s", s)
	}
}

// watchOne starts kdrop watch -o json --count 1 on the events of ns, with
// env's API server and args added, and waits until it is ready; its lines
// come through the scanner.
func watchOne(t *testing.T, env *testenv.Env, ns *nstest.NS, args ...string) (*bufio.Scanner, *exec.Cmd) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(kdropBin, append([]string{"watch", "-o", "json", "--kubeconfig", env.Kubeconfig(), "--node", "test-node",
		"--netns", "/run/netns/" + ns.Name, "--duration", "60s", "--count", "1", "--ready-file", ready}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFile(t, ready, 60*time.Second)
	return bufio.NewScanner(stdout), cmd
}

func waitFile(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %v", path, timeout)
		}
	}
}

// kube-proxy's answer for a Service without ready endpoints: REJECT with
// icmp-port-unreachable ("Connection refused"). kdrop must name the Service
// and say it has no ready endpoints.
func TestIdentityServiceWithoutEndpoints(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cart"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	r := nstest.NewRouted(t)
	r.Router.IP(t, "route add "+vip+"/32 via "+nstest.ServerIP)
	r.Router.Sh(t, "iptables -A FORWARD -d "+vip+" -p tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable")

	sc, cmd := watchOne(t, env, r.Router, "--type", "unreach")
	if err := r.Client.ConnectErr(t, vip, 80, 10*time.Second); !errors.Is(err, unix.ECONNREFUSED) {
		t.Fatalf("connect to %s:80: want ECONNREFUSED, got %v", vip, err)
	}
	if !sc.Scan() {
		t.Fatalf("kdrop watch printed nothing (exit: %v)", cmd.Wait())
	}
	ev := decodeEvent(t, sc.Bytes())
	d := ev.DstK8s
	if ev.ICMP != "port-unreachable" || ev.Dst != vip || d.Kind != "service" || d.Namespace != "shop" || d.Name != "cart" ||
		d.ReadyEndpoints == nil || *d.ReadyEndpoints != 0 {
		t.Fatalf("want port-unreachable for svc shop/cart with 0 ready endpoints, got %s", sc.Text())
	}
}

// eventView is what the identity tests check of an event line, read with
// the one decoder (package line).
type eventView struct {
	Type, ICMP, Dst, Node string
	SrcK8s, DstK8s        endpointView
}

type endpointView struct {
	Kind, Namespace, Name      string
	WorkloadKind, WorkloadName string
	DeletedAgoMs               int64
	ReadyEndpoints             *int // nil: not said
	Unresolved                 bool
}

func decodeEvent(t *testing.T, b []byte) eventView {
	t.Helper()
	var d line.Decoder
	var l line.Line
	if err := d.Decode(b, &l); err != nil || l.Kind != line.KindEvent {
		t.Fatalf("not an event line (%v): %s", err, b)
	}
	e := &l.Event
	v := eventView{Type: l.Type, Node: e.Node}
	if e.Type == tracer.Unreachable {
		v.ICMP = e.What()
	}
	if e.Dst.Addr().IsValid() {
		v.Dst = e.Dst.Addr().String()
	}
	view := func(k *k8s.Endpoint) endpointView {
		if k == nil {
			return endpointView{}
		}
		ev := endpointView{Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, WorkloadKind: k.WorkloadKind, WorkloadName: k.WorkloadName,
			DeletedAgoMs: k.DeletedAgo.Milliseconds(), Unresolved: k.Unresolved}
		if k.ReadyEndpoints >= 0 && k.Kind == k8s.KindService {
			ev.ReadyEndpoints = &k.ReadyEndpoints
		}
		return ev
	}
	v.SrcK8s, v.DstK8s = view(e.SrcK8s), view(e.DstK8s)
	return v
}
