package k8s

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// TestIdentity resolves IPs of objects created in a real API server, through
// a Resolver started from the admin kubeconfig. The scenarios share one API
// server and one Resolver, each in its own namespace.
func TestIdentity(t *testing.T) {
	it := startEnv(t)
	log, _ := testLogger(t)
	r := it.resolver(log, "")
	it.sync(r)
	ctx := t.Context()

	t.Run("PodIPs", func(t *testing.T) {
		it := *it
		it.t = t
		it.namespace("ips")
		p := it.pod(podSpec{ns: "ips", name: "web", node: "node-a", ips: []string{"10.244.1.5", "fd00:244::5"}, hostIP: "192.168.50.1", ready: true})
		for _, ip := range []string{"10.244.1.5", "fd00:244::5", "::ffff:10.244.1.5"} {
			eventually(t, 10*time.Second, resolvesTo(r, ip, 80, KindPod, "ips", "web"))
		}
		ep := r.LookupIP(netip.MustParseAddr("fd00:244::5"), 80, time.Now())
		if ep.Node != "node-a" || !ep.Ready || ep.Terminating || ep.HostNetwork || ep.UID != string(p.UID) || ep.WorkloadKind != "" {
			t.Errorf("pod: %s uid=%s", describe(ep), ep.UID)
		}
		// Readiness follows the status.
		it.setStatus(p, []string{"10.244.1.5", "fd00:244::5"}, "192.168.50.1", false)
		eventually(t, 10*time.Second, func() string {
			if ep := r.LookupIP(netip.MustParseAddr("10.244.1.5"), 0, time.Time{}); ep.Ready {
				return "still ready: " + describe(ep)
			}
			return ""
		})
		// The pod's hostIP makes the node IP resolvable.
		eventually(t, 10*time.Second, resolvesTo(r, "192.168.50.1", 22, KindNode, "", "node-a"))
	})

	t.Run("Deployment", func(t *testing.T) {
		it := *it
		it.t = t
		it.namespace("apps")
		labels := map[string]string{"app": "api"}
		dep, err := it.admin.AppsV1().Deployments("apps").Create(ctx, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "api"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.invalid/api:1"}}},
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// As the Deployment controller would: a ReplicaSet named
		// <deployment>-<hash>, and pods labelled with the hash. The RS
		// name here deliberately does not end in the hash, so only the
		// ReplicaSet informer can tell the Deployment.
		rsLabels := map[string]string{"app": "api", "pod-template-hash": "5d8f7c6b9"}
		rs, err := it.admin.AppsV1().ReplicaSets("apps").Create(ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "api-v2", Labels: rsLabels,
				OwnerReferences: []metav1.OwnerReference{*ownerRef("Deployment", "api", dep.UID, "apps/v1")}},
			Spec: appsv1.ReplicaSetSpec{
				Selector: &metav1.LabelSelector{MatchLabels: rsLabels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: rsLabels},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.invalid/api:1"}}},
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		it.pod(podSpec{ns: "apps", name: "api-v2-x7k2p", node: "node-b", ips: []string{"10.244.2.10"}, hostIP: "192.168.50.2", ready: true,
			owner: ownerRef("ReplicaSet", rs.Name, rs.UID, "apps/v1"), labels: rsLabels})
		eventually(t, 10*time.Second, func() string {
			ep := r.LookupIP(netip.MustParseAddr("10.244.2.10"), 0, time.Time{})
			if ep.WorkloadKind != "Deployment" || ep.WorkloadName != "api" || ep.Node != "node-b" {
				return "got " + describe(ep)
			}
			return ""
		})

		// A Job run by a CronJob, and a StatefulSet pod.
		cj, err := it.admin.BatchV1().CronJobs("apps").Create(ctx, &batchv1.CronJob{
			ObjectMeta: metav1.ObjectMeta{Name: "backup"},
			Spec: batchv1.CronJobSpec{Schedule: "0 * * * *", JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{
				Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
					Containers: []corev1.Container{{Name: "c", Image: "example.invalid/backup:1"}}}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		job, err := it.admin.BatchV1().Jobs("apps").Create(ctx, &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "backup-29012345",
				OwnerReferences: []metav1.OwnerReference{*ownerRef("CronJob", "backup", cj.UID, "batch/v1")}},
			Spec: batchv1.JobSpec{
				Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
					Containers: []corev1.Container{{Name: "c", Image: "example.invalid/backup:1"}}}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		it.pod(podSpec{ns: "apps", name: "backup-29012345-q8d2m", node: "node-b", ips: []string{"10.244.2.11"}, ready: true,
			owner: ownerRef("Job", job.Name, job.UID, "batch/v1"), labels: job.Spec.Template.Labels})
		it.pod(podSpec{ns: "apps", name: "db-0", node: "node-b", ips: []string{"10.244.2.12"}, ready: true,
			owner: ownerRef("StatefulSet", "db", "8a7b6c5d-0000-4000-8000-000000000001", "apps/v1")})
		for ip, want := range map[string]string{"10.244.2.11": "CronJob/backup", "10.244.2.12": "StatefulSet/db"} {
			eventually(t, 10*time.Second, func() string {
				ep := r.LookupIP(netip.MustParseAddr(ip), 0, time.Time{})
				if ep.WorkloadKind+"/"+ep.WorkloadName != want {
					return fmt.Sprintf("%s: got %s, want %s", ip, describe(ep), want)
				}
				return ""
			})
		}
	})

	t.Run("HostNetwork", func(t *testing.T) {
		it := *it
		it.t = t
		it.namespace("infra")
		const nodeIP = "192.168.50.3"
		it.pod(podSpec{ns: "infra", name: "exporter-abcde", node: "node-c", ips: []string{nodeIP}, hostIP: nodeIP, ready: true, hostNetwork: true, ports: []int32{9100}})
		it.pod(podSpec{ns: "infra", name: "dns-fghij", node: "node-c", ips: []string{nodeIP}, hostIP: nodeIP, ready: true, hostNetwork: true, ports: []int32{53, 9153}})
		// An ordinary pod on the same node.
		it.pod(podSpec{ns: "infra", name: "app", node: "node-c", ips: []string{"10.244.3.4"}, hostIP: nodeIP, ready: true})

		eventually(t, 10*time.Second, resolvesTo(r, nodeIP, 9100, KindPod, "infra", "exporter-abcde"))
		eventually(t, 10*time.Second, resolvesTo(r, nodeIP, 53, KindPod, "infra", "dns-fghij"))
		// No port, or one no hostNetwork pod declares: the node, never a
		// random pod.
		for _, port := range []uint16{0, 22, 10250} {
			eventually(t, 10*time.Second, resolvesTo(r, nodeIP, port, KindNode, "", "node-c"))
		}
		if ep := r.LookupIP(netip.MustParseAddr(nodeIP), 9100, time.Time{}); !ep.HostNetwork || ep.Node != "node-c" {
			t.Errorf("hostNetwork pod: %s", describe(ep))
		}
		eventually(t, 10*time.Second, resolvesTo(r, "10.244.3.4", 0, KindPod, "infra", "app"))
	})

	t.Run("ServiceAndEndpointSlice", func(t *testing.T) {
		it := *it
		it.t = t
		it.namespace("svc")
		pod := it.pod(podSpec{ns: "svc", name: "web-1", node: "node-a", ips: []string{"10.244.4.2"}, ready: true, labels: map[string]string{"app": "web"}})
		svc, err := it.admin.CoreV1().Services("svc").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
				Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if svc.Spec.ClusterIP == "" {
			t.Fatal("no ClusterIP allocated")
		}
		eventually(t, 10*time.Second, resolvesTo(r, svc.Spec.ClusterIP, 80, KindService, "svc", "web"))
		// By name too, as kube-proxy's rules name it: with its UID, which
		// Kubernetes Events about it need, and no ready endpoint yet.
		byName := func(name string, uid types.UID, ready int) func() string {
			return func() string {
				ep, ok := r.LookupService("svc", name)
				if uid == "" {
					if ok {
						return "still found: " + describe(ep)
					}
					return ""
				}
				if !ok || ep.Kind != KindService || ep.UID != string(uid) || ep.ReadyEndpoints != ready || ep.Unresolved {
					return fmt.Sprintf("LookupService(svc, %s) = %s uid %s ready %d, %v; want uid %s ready %d", name, describe(ep), ep.UID, ep.ReadyEndpoints, ok, uid, ready)
				}
				return ""
			}
		}
		eventually(t, 10*time.Second, byName("web", svc.UID, 0))

		// As the EndpointSlice controller would write it.
		_, err = it.admin.DiscoveryV1().EndpointSlices("svc").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-8xk2q", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{
				Addresses:  []string{"10.244.4.2"},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "svc", Name: pod.Name, UID: pod.UID},
			}},
			Ports: []discoveryv1.EndpointPort{{Port: ptr.To[int32](80)}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// A second Service selecting the same pod, by IP only (no targetRef).
		other, err := it.admin.CoreV1().Services("svc").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web-metrics"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 9090}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = it.admin.DiscoveryV1().EndpointSlices("svc").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-metrics-1", Labels: map[string]string{discoveryv1.LabelServiceName: other.Name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.4.2"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, func() string {
			ep := r.LookupIP(netip.MustParseAddr("10.244.4.2"), 8080, time.Time{})
			if ep.Kind != KindPod || ep.Name != "web-1" || !slices.Equal(ep.Services, []string{"svc/web", "svc/web-metrics"}) {
				return "got " + describe(ep)
			}
			return ""
		})
		eventually(t, 10*time.Second, byName("web", svc.UID, 1))
		eventually(t, 10*time.Second, byName("web-metrics", other.UID, 1)) // no ready condition: ready, as the API says
		// A headless Service has no IP, and a name.
		headless, err := it.admin.CoreV1().Services("svc").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "web-headless"},
			Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, byName("web-headless", headless.UID, 0))
		if err := it.admin.CoreV1().Services("svc").Delete(ctx, "web-metrics", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, byName("web-metrics", "", 0))
	})

	t.Run("DeletedAndReusedIP", func(t *testing.T) {
		it := *it
		it.t = t
		it.namespace("churn")
		const ip = "10.244.5.50"
		addr := netip.MustParseAddr(ip)
		it.pod(podSpec{ns: "churn", name: "first", node: "node-a", ips: []string{ip}, ready: true})
		eventually(t, 10*time.Second, resolvesTo(r, ip, 0, KindPod, "churn", "first"))

		// A graceful delete: the pod has a node, and no kubelet will
		// confirm it, so it stays terminating.
		it.deletePod("churn", "first", 30)
		eventually(t, 10*time.Second, func() string {
			if ep := r.LookupIP(addr, 0, time.Time{}); !ep.Terminating || ep.Name != "first" || ep.DeletedAgo != 0 {
				return "not terminating: " + describe(ep)
			}
			return ""
		})
		// Then gone, as after the kubelet's final delete.
		beforeDelete := time.Now()
		it.deletePod("churn", "first", 0)
		afterDelete := time.Now()
		eventually(t, 10*time.Second, func() string {
			if ep := r.LookupIP(addr, 0, time.Time{}); ep.Name != "first" || ep.DeletedAgo <= 0 {
				return "not deleted: " + describe(ep)
			}
			return ""
		})
		time.Sleep(2 * time.Second)
		at := time.Now()
		ep := r.LookupIP(addr, 0, at)
		if ep.Kind != KindPod || ep.Namespace != "churn" || ep.Name != "first" || ep.Unresolved || ep.Previous != nil {
			t.Fatalf("deleted pod: %s", describe(ep))
		}
		// The resolver saw the delete while the call ran or shortly after
		// it returned (1 s tolerance for a slow watch).
		maxAgo, minAgo := at.Sub(beforeDelete), at.Sub(afterDelete)-time.Second
		if ep.DeletedAgo > maxAgo || ep.DeletedAgo < minAgo {
			t.Errorf("DeletedAgo = %v, want between %v and %v", ep.DeletedAgo, minAgo, maxAgo)
		}
		t.Logf("deleted pod: %s (the delete call ran from %v to %v before the event)", describe(ep), maxAgo, at.Sub(afterDelete))

		// The IP is reused by a new pod: current owner first, the deleted
		// one in Previous.
		it.pod(podSpec{ns: "churn", name: "second", node: "node-a", ips: []string{ip}, ready: true})
		eventually(t, 10*time.Second, func() string {
			ep := r.LookupIP(addr, 0, time.Time{})
			if ep.Name != "second" || ep.DeletedAgo != 0 || len(ep.Previous) != 1 || ep.Previous[0].Name != "first" || ep.Previous[0].DeletedAgo < 2*time.Second {
				return "got " + describe(ep)
			}
			return ""
		})
		// Reused again after the second one goes: newest first.
		it.deletePod("churn", "second", 0)
		it.pod(podSpec{ns: "churn", name: "third", node: "node-a", ips: []string{ip}, ready: true})
		eventually(t, 10*time.Second, func() string {
			ep := r.LookupIP(addr, 0, time.Time{})
			if ep.Name != "third" || len(ep.Previous) != 2 || ep.Previous[0].Name != "second" || ep.Previous[1].Name != "first" ||
				!(ep.Previous[0].DeletedAgo < ep.Previous[1].DeletedAgo) {
				return "got " + describe(ep)
			}
			return ""
		})
		t.Logf("reused IP: %s", describe(r.LookupIP(addr, 0, time.Time{})))
	})

	// The kubelet writes status.podIPs from the runtime, which reports no
	// IP once the sandbox's netns is closed: a terminating pod whose sandbox
	// goes before the final delete loses its IPs first, and is deleted
	// without them (the e2e rolling update's second old IP, unnamed once).
	t.Run("SandboxGoneBeforeDelete", func(t *testing.T) {
		it := *it
		it.t = t
		it.namespace("sandbox")
		const ip = "10.244.6.60"
		addr := netip.MustParseAddr(ip)
		it.pod(podSpec{ns: "sandbox", name: "api-1", node: "node-a", ips: []string{ip}, ready: true})
		eventually(t, 10*time.Second, resolvesTo(r, ip, 0, KindPod, "sandbox", "api-1"))
		it.deletePod("sandbox", "api-1", 30)
		eventually(t, 10*time.Second, func() string {
			if ep := r.LookupIP(addr, 0, time.Time{}); !ep.Terminating {
				return "not terminating: " + describe(ep)
			}
			return ""
		})
		release := func() *corev1.Pod {
			p, err := it.admin.CoreV1().Pods("sandbox").Get(t.Context(), "api-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p.Status.PodIP, p.Status.PodIPs = "", nil
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}}
			if p, err = it.admin.CoreV1().Pods("sandbox").UpdateStatus(t.Context(), p, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			return p
		}
		released := time.Now()
		p := release()
		named := func() string {
			ep := r.LookupIP(addr, 0, time.Time{})
			if ep.Kind != KindPod || ep.Name != "api-1" || ep.DeletedAgo <= 0 || ep.Previous != nil || ep.Unresolved {
				return "released IP: " + describe(ep)
			}
			return ""
		}
		eventually(t, 10*time.Second, named)
		// Should the status get the IP back, the pod is its owner again,
		// not a deleted pod of its own.
		it.setStatus(p, []string{ip}, "", false)
		eventually(t, 10*time.Second, func() string {
			if ep := r.LookupIP(addr, 0, time.Time{}); ep.Name != "api-1" || ep.DeletedAgo != 0 || ep.Previous != nil {
				return "IP back: " + describe(ep)
			}
			return ""
		})
		release()
		eventually(t, 10*time.Second, named)
		time.Sleep(time.Second)
		it.deletePod("sandbox", "api-1", 0)
		eventually(t, 10*time.Second, func() string {
			if _, ok := r.snap.Load().uids[string(p.UID)]; ok {
				return "the pod is still indexed"
			}
			return ""
		})
		if why := named(); why != "" {
			t.Fatal(why)
		}
		// Deleted from the release on: the delete a second later keeps it.
		if ago := r.LookupIP(addr, 0, time.Time{}).DeletedAgo; ago < time.Since(released)-time.Second/2 {
			t.Errorf("DeletedAgo %v: want from the release, %v ago", ago, time.Since(released))
		}
	})

	st := r.Status()
	if !st.Synced || !st.Healthy || st.Condition != ConditionOK || st.Forbidden || st.Pods == 0 || st.Services == 0 || st.EndpointSlices == 0 || st.ReplicaSets != 1 || st.Jobs != 1 {
		t.Errorf("status: %+v", st)
	}
	t.Logf("status: %+v", st)
}
