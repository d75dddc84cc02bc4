package k8s

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// probedPod is a pod whose spec has every kind of probe the kubelet sends
// to the pod's IP, and some it does not.
func probedPod(ns, name string) *corev1.Pod {
	tcp := func(port intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: port}}}
	}
	http := func(port intstr.IntOrString, scheme corev1.URIScheme, host string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: port, Scheme: scheme, Host: host}}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName: "node-a",
			InitContainers: []corev1.Container{{
				// a sidecar (restartable init container): probed too
				Name: "proxy", Image: "example.invalid/proxy:1", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
				Ports:         []corev1.ContainerPort{{Name: "admin", ContainerPort: 15021}},
				LivenessProbe: http(intstr.FromString("admin"), corev1.URISchemeHTTPS, ""),
			}},
			Containers: []corev1.Container{{
				Name: "api", Image: "example.invalid/api:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "health", ContainerPort: 8081}},
				// liveness and readiness on one port (by name and by number)
				LivenessProbe:  tcp(intstr.FromString("health")),
				ReadinessProbe: http(intstr.FromInt32(8081), "", ""),
				StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}},
			}, {
				Name: "worker", Image: "example.invalid/worker:1",
				ReadinessProbe: tcp(intstr.FromInt32(7070)),
				// elsewhere than the pod: not kept
				LivenessProbe: http(intstr.FromInt32(80), "", "10.0.0.1"),
				// a port name the container lacks: the kubelet fails it without connecting
				StartupProbe: tcp(intstr.FromString("http")),
			}, {
				Name: "exec", Image: "example.invalid/exec:1",
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			}},
		},
	}
}

// wantProbes is what the resolver keeps of probedPod.
var wantProbes = []Probe{
	{Port: 7070, Kinds: ProbeReadiness, Handler: ProbeTCP, Container: "worker"},
	{Port: 8081, Kinds: ProbeLiveness | ProbeReadiness, Handler: ProbeTCP, Container: "api"},
	{Port: 9090, Kinds: ProbeStartup, Handler: ProbeGRPC, Container: "api"},
	{Port: 15021, Kinds: ProbeLiveness, Handler: ProbeHTTP, Container: "proxy", HTTPS: true},
}

// TestProbes: a pod's probe ports, through a real API server, in the
// initial list (the streaming protobuf list decoder) and in the watch, and
// still there once the pod is deleted.
func TestProbes(t *testing.T) {
	it := startEnv(t)
	ctx := t.Context()
	it.namespace("shop")
	create := func(name, ip string) {
		t.Helper()
		p, err := it.admin.CoreV1().Pods("shop").Create(ctx, probedPod("shop", name), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create pod: %v", err)
		}
		it.setStatus(p, []string{ip}, "192.168.50.1", true)
	}
	create("listed", "10.244.3.4") // before the resolver starts: its initial list
	log, _ := testLogger(t)
	r := it.resolver(log, "")
	it.sync(r)
	create("watched", "10.244.3.5")

	probesOf := func(ip string, at time.Time) func() string {
		return func() string {
			ep := r.LookupIP(netip.MustParseAddr(ip), 8081, at)
			if ep.Kind != KindPod || ep.Unresolved {
				return fmt.Sprintf("%s resolves to %s", ip, describe(ep))
			}
			if !slices.Equal(ep.Probes, wantProbes) {
				return fmt.Sprintf("%s: probes %+v, want %+v", ip, ep.Probes, wantProbes)
			}
			return ""
		}
	}
	for _, ip := range []string{"10.244.3.4", "10.244.3.5"} {
		eventually(t, 10*time.Second, probesOf(ip, time.Now()))
	}
	ep := r.LookupIP(netip.MustParseAddr("10.244.3.4"), 0, time.Time{})
	if p := ep.ProbeOn(8081); p == nil || p.Kinds.Primary() != ProbeLiveness || p.Kinds.String() != "liveness+readiness" {
		t.Errorf("ProbeOn(8081) = %+v, want liveness (and readiness)", p)
	}
	if p := ep.ProbeOn(8080); p != nil {
		t.Errorf("ProbeOn(8080) = %+v: nothing probes 8080", p)
	}

	// Deleted: the tombstone keeps them.
	it.deletePod("shop", "watched", 0)
	eventually(t, 10*time.Second, func() string {
		ep := r.LookupIP(netip.MustParseAddr("10.244.3.5"), 8081, time.Now())
		if ep.DeletedAgo <= 0 {
			return "not deleted yet: " + describe(ep)
		}
		if !slices.Equal(ep.Probes, wantProbes) {
			return fmt.Sprintf("deleted pod's probes %+v, want %+v", ep.Probes, wantProbes)
		}
		return ""
	})

	// A hostNetwork pod's probes go to the node: not kept.
	hp := probedPod("shop", "host")
	hp.Spec.HostNetwork = true
	for i := range hp.Spec.Containers {
		for j := range hp.Spec.Containers[i].Ports {
			hp.Spec.Containers[i].Ports[j].HostPort = hp.Spec.Containers[i].Ports[j].ContainerPort
		}
	}
	hp.Spec.InitContainers[0].Ports[0].HostPort = 15021
	p, err := it.admin.CoreV1().Pods("shop").Create(ctx, hp, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	it.setStatus(p, []string{"192.168.50.1"}, "192.168.50.1", true)
	eventually(t, 10*time.Second, resolvesTo(r, "192.168.50.1", 8081, KindPod, "shop", "host"))
	if ep := r.LookupIP(netip.MustParseAddr("192.168.50.1"), 8081, time.Now()); ep.Probes != nil {
		t.Errorf("hostNetwork pod: probes %+v kept", ep.Probes)
	}
}
