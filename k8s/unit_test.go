package k8s

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// Unit tests of the pure parts, on plain structs. The integration tests
// (identity_test.go and others) run the same code against a real API server.

func TestPodUIDFromCgroup(t *testing.T) {
	const uid = "3f6b1c2a-7d0e-4b8f-9a21-5c6d7e8f9a0b"
	const under = "3f6b1c2a_7d0e_4b8f_9a21_5c6d7e8f9a0b"
	const static = "0123456789abcdef0123456789abcdef"
	cases := []struct{ name, in, want string }{
		{"cgroupfs v1 besteffort", "12:pids:/kubepods/besteffort/pod" + uid + "/0a1b2c\n11:memory:/kubepods/besteffort/pod" + uid + "/0a1b2c\n", uid},
		{"cgroupfs v1 burstable", "4:cpu,cpuacct:/kubepods/burstable/pod" + uid + "/abc\n", uid},
		{"cgroupfs guaranteed", "0::/kubepods/pod" + uid + "/abc\n", uid},
		{"cgroupfs v2", "0::/kubepods/besteffort/pod" + uid + "/cri-containerd-abc\n", uid},
		{"systemd v2", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + under + ".slice/cri-containerd-abc.scope\n", uid},
		{"systemd guaranteed", "0::/kubepods.slice/kubepods-pod" + under + ".slice/crio-abc.scope\n", uid},
		{"systemd v1 named", "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + under + ".slice/docker-abc.scope\n0::/\n", uid},
		{"nested (kind)", "0::/docker/9f8e7d/kubepods/besteffort/pod" + uid + "/abc\n", uid},
		{"cgroup namespace", "0::/../../kubepods/besteffort/pod" + uid + "/abc\n", uid},
		{"static pod", "0::/kubepods/burstable/pod" + static + "/abc\n", static},
		{"pod cgroup itself", "0::/kubepods/besteffort/pod" + uid + "\n", uid},
		{"host process", "0::/system.slice/containerd.service\n1:name=systemd:/init.scope\n", ""},
		{"root", "0::/\n", ""},
		{"pod-looking outside kubepods", "0::/user.slice/pod" + uid + "\n", ""},
		{"not a uid", "0::/kubepods/besteffort/podnotauid/abc\n", ""},
		{"qos dir only", "0::/kubepods/besteffort\n", ""},
		{"no trailing newline", "0::/kubepods/besteffort/pod" + uid, uid},
		{"garbage", "nonsense", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := podUIDFromCgroup([]byte(c.in)); got != c.want {
				t.Errorf("podUIDFromCgroup(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestParseNetnsLink(t *testing.T) {
	for in, want := range map[string]uint32{"net:[4026531840]": 4026531840, "net:[1]": 1, "mnt:[4026531840]": 0, "net:[x]": 0, "net:[99999999999]": 0, "": 0} {
		got, ok := parseNetnsLink(in)
		if got != want || ok != (want != 0) {
			t.Errorf("parseNetnsLink(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
}

func TestTransformPod(t *testing.T) {
	del := metav1.NewTime(time.Now().Add(30 * time.Second))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "api-7c9f8d6b5-x2x9z", Namespace: "shop", UID: "u1", ResourceVersion: "42",
			Labels:            map[string]string{"app": "api", "pod-template-hash": "7c9f8d6b5"},
			Annotations:       map[string]string{"big": strings.Repeat("x", 1000), "kubernetes.io/config.mirror": "hash1"},
			DeletionTimestamp: &del,
			OwnerReferences: []metav1.OwnerReference{
				{Kind: "Something", Name: "other"},
				{Kind: "ReplicaSet", Name: "api-7c9f8d6b5", Controller: ptr.To(true)},
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{
			NodeName:   "node-a",
			Containers: []corev1.Container{{Name: "c", Image: "img", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      "10.0.0.5",
			PodIPs:     []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}},
			HostIP:     "192.168.1.10",
			HostIPs:    []corev1.HostIP{{IP: "192.168.1.10"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	obj, err := transformPod(pod)
	if err != nil {
		t.Fatal(err)
	}
	p := obj.(*podInfo)
	want := &podInfo{
		ObjectMeta:   metav1.ObjectMeta{Name: pod.Name, Namespace: "shop", UID: "u1", DeletionTimestamp: &del},
		mirrorHash:   "hash1",
		ownerKind:    "ReplicaSet",
		ownerName:    "api-7c9f8d6b5",
		templateHash: "7c9f8d6b5",
		node:         "node-a",
		phase:        corev1.PodRunning,
		ready:        true,
		ips:          addrs("10.0.0.5", "fd00::5"),
		hostIPs:      addrs("192.168.1.10"),
		labels:       map[string]string{"app": "api", "pod-template-hash": "7c9f8d6b5"},
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("transformPod:\n got %+v\nwant %+v", p, want)
	}
	if again, _ := transformPod(p); again != any(p) {
		t.Error("transformPod is not idempotent")
	}

	// hostNetwork: containerPorts kept (sorted, unique), IPs from the
	// singular fields when the plural ones are empty.
	hn := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "kube-system"},
		Spec: corev1.PodSpec{HostNetwork: true, NodeName: "node-a",
			InitContainers: []corev1.Container{{Ports: []corev1.ContainerPort{{ContainerPort: 9000}}}},
			Containers: []corev1.Container{
				{Ports: []corev1.ContainerPort{{ContainerPort: 9100}, {ContainerPort: 9000}}},
				{Ports: []corev1.ContainerPort{{ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
			}},
		Status: corev1.PodStatus{PodIP: "::ffff:192.168.1.10", HostIP: "192.168.1.10"},
	}
	obj, _ = transformPod(hn)
	p = obj.(*podInfo)
	if !p.hostNetwork || !slices.Equal(p.ports, []uint16{53, 9000, 9100}) || !equalAddrs(p.ips, addrs("192.168.1.10")) || !equalAddrs(p.hostIPs, addrs("192.168.1.10")) {
		t.Errorf("hostNetwork pod: %+v", p)
	}
}

// TestTransformPolicyInputs: what NetworkPolicy evaluation needs is kept
// — a pod's labels (interned) and named container ports, a namespace's
// labels, a policy's spec with policyTypes defaulted — and nothing else.
func TestTransformPolicyInputs(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "shop", UID: "u2", Labels: map[string]string{"app": "db"}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}}},
			Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
				{Name: "postgres", ContainerPort: 5432}, {ContainerPort: 8080}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}},
		},
	}
	obj, _ := transformPod(pod)
	p := obj.(*podInfo)
	wantPorts := []NamedPort{{"dns", 53, corev1.ProtocolUDP}, {"postgres", 5432, corev1.ProtocolTCP}, {"proxy", 15001, corev1.ProtocolTCP}}
	if !reflect.DeepEqual(p.labels, map[string]string{"app": "db"}) || !reflect.DeepEqual(p.namedPorts, wantPorts) {
		t.Errorf("labels %v, named ports %v; want app=db, %v", p.labels, p.namedPorts, wantPorts)
	}
	if ep := podEndpoint(p, nil, nil); ep.Labels["app"] != "db" || len(ep.NamedPorts) != 3 {
		t.Errorf("endpoint %+v lacks labels or named ports", ep)
	}
	pod.Spec.HostNetwork = true
	obj, _ = transformPod(pod)
	if p := obj.(*podInfo); p.labels != nil || p.namedPorts != nil {
		t.Errorf("hostNetwork pod keeps labels %v, named ports %v: policies do not apply to it", p.labels, p.namedPorts)
	}

	obj, _ = transformNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", UID: "n1",
		Labels: map[string]string{"team": "shop"}, Annotations: map[string]string{"a": "b"}}})
	if n := obj.(*nsInfo); n.Name != "shop" || n.UID != "" || n.Annotations != nil || n.Labels["team"] != "shop" {
		t.Errorf("namespace %+v", n)
	}
	if again, _ := transformNamespace(obj); again != obj {
		t.Error("transformNamespace is not idempotent")
	}

	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny", Namespace: "shop", UID: "p1", Annotations: map[string]string{"a": "b"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{}}},
	}
	obj, _ = transformNetworkPolicy(np)
	got := obj.(*networkingv1.NetworkPolicy)
	if got.UID != "" || got.Annotations != nil || got.ManagedFields != nil || got.Name != "deny" || got.Namespace != "shop" ||
		!slices.Equal(got.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}) {
		t.Errorf("policy %+v", got)
	}
	if again, _ := transformNetworkPolicy(got); again != any(got) {
		t.Error("transformNetworkPolicy is not idempotent")
	}

	// Without informers: no policies, not synced; a namespace's labels
	// fall back to the one the API server sets on every namespace.
	r := newResolver(Config{Node: "node-a"}, zap.NewNop())
	if list, _, synced := r.NetworkPolicies(time.Time{}); list != nil || synced {
		t.Errorf("NetworkPolicies without informers: %v, synced %v", list, synced)
	}
	if l := r.NamespaceLabels("shop"); !reflect.DeepEqual(l, map[string]string{corev1.LabelMetadataName: "shop"}) {
		t.Errorf("NamespaceLabels = %v", l)
	}
}

func TestTransformOthers(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: map[string]string{"a": "b"}},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:96::10"}, ExternalIPs: []string{"203.0.113.7"}},
		Status:     corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "198.51.100.1"}, {Hostname: "lb.example"}}}},
	}
	obj, _ := transformService(svc)
	s := obj.(*svcInfo)
	if s.Name != "web" || s.Namespace != "shop" || s.Annotations != nil || !equalAddrs(s.ips, addrs("10.96.0.10", "fd00:96::10", "203.0.113.7", "198.51.100.1")) {
		t.Errorf("service: %+v", s)
	}
	headless, _ := transformService(&corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "None", ClusterIPs: []string{"None"}}})
	if len(headless.(*svcInfo).ips) != 0 {
		t.Errorf("headless service has IPs: %+v", headless)
	}

	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-x1", Namespace: "shop", Labels: map[string]string{"kubernetes.io/service-name": "web", "x": "y"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.5"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "api-1", Namespace: "shop"}},
			{Addresses: []string{"10.0.0.6"}},
			{Addresses: []string{"bogus"}},
		},
		Ports: []discoveryv1.EndpointPort{{Port: ptr.To[int32](80)}},
	}
	obj, _ = transformEndpointSlice(es)
	sl := obj.(*sliceInfo)
	if sl.service != "web" || sl.Labels != nil || len(sl.endpoints) != 2 || sl.endpoints[0].pod != "api-1" || sl.endpoints[1].pod != "" ||
		!equalAddrs(sl.endpoints[1].addrs, addrs("10.0.0.6")) {
		t.Errorf("endpointslice: %+v", sl)
	}
	fqdn, _ := transformEndpointSlice(&discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeFQDN, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"a.example"}}}})
	if len(fqdn.(*sliceInfo).endpoints) != 0 {
		t.Error("FQDN slice kept endpoints")
	}

	rs, _ := transformReplicaSet(&appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "api-abc", Namespace: "shop",
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "api", Controller: ptr.To(true)}}}})
	if o := rs.(*ownerInfo); o.ownerKind != "Deployment" || o.ownerName != "api" || o.Name != "api-abc" {
		t.Errorf("replicaset: %+v", o)
	}
	job, _ := transformJob(&batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "backup-2901", Namespace: "ops",
		OwnerReferences: []metav1.OwnerReference{{Kind: "CronJob", Name: "backup", Controller: ptr.To(true)}}}})
	if o := job.(*ownerInfo); o.ownerKind != "CronJob" || o.ownerName != "backup" {
		t.Errorf("job: %+v", o)
	}
}

func TestWorkload(t *testing.T) {
	rss := map[nsName]*ownerInfo{
		{"shop", "api-7c9f8d6b5"}: {ObjectMeta: metav1.ObjectMeta{Name: "api-7c9f8d6b5", Namespace: "shop"}, ownerKind: "Deployment", ownerName: "api"},
		{"shop", "bare-rs"}:       {ObjectMeta: metav1.ObjectMeta{Name: "bare-rs", Namespace: "shop"}},
		{"shop", "roll-5d4c"}:     {ObjectMeta: metav1.ObjectMeta{Name: "roll-5d4c", Namespace: "shop"}, ownerKind: "Rollout", ownerName: "roll"},
	}
	jobs := map[nsName]*ownerInfo{
		{"ops", "backup-2901"}: {ObjectMeta: metav1.ObjectMeta{Name: "backup-2901", Namespace: "ops"}, ownerKind: "CronJob", ownerName: "backup"},
	}
	cases := []struct {
		p          *podInfo
		kind, name string
	}{
		{testPod("shop", "api-7c9f8d6b5-x", "n", nil, owned("ReplicaSet", "api-7c9f8d6b5")), "Deployment", "api"},
		{testPod("shop", "b-x", "n", nil, owned("ReplicaSet", "bare-rs")), "ReplicaSet", "bare-rs"},
		{testPod("shop", "r-x", "n", nil, owned("ReplicaSet", "roll-5d4c")), "Rollout", "roll"},
		// ReplicaSet not known: inferred from its name and the pod-template-hash label.
		{testPod("shop", "web-6b5d-x", "n", nil, owned("ReplicaSet", "web-6b5d"), func(p *podInfo) { p.templateHash = "6b5d" }), "Deployment", "web"},
		{testPod("shop", "w-x", "n", nil, owned("ReplicaSet", "web-6b5d"), func(p *podInfo) { p.templateHash = "ffff" }), "ReplicaSet", "web-6b5d"},
		{testPod("shop", "w-x", "n", nil, owned("ReplicaSet", "6b5d"), func(p *podInfo) { p.templateHash = "6b5d" }), "ReplicaSet", "6b5d"},
		{testPod("shop", "w-x", "n", nil, owned("ReplicaSet", "web-6b5d")), "ReplicaSet", "web-6b5d"},
		{testPod("ops", "backup-2901-x", "n", nil, owned("Job", "backup-2901")), "CronJob", "backup"},
		{testPod("ops", "once-x", "n", nil, owned("Job", "once")), "Job", "once"},
		{testPod("db", "pg-0", "n", nil, owned("StatefulSet", "pg")), "StatefulSet", "pg"},
		{testPod("kube-system", "ds-x", "n", nil, owned("DaemonSet", "agent")), "DaemonSet", "agent"},
		{testPod("kube-system", "etcd-n", "n", nil, owned("Node", "n")), "Node", "n"},
		{testPod("default", "bare", "n", nil), "", ""},
	}
	for _, c := range cases {
		kind, name := workload(c.p, rss, jobs)
		if kind != c.kind || name != c.name {
			t.Errorf("workload(%s owned by %s/%s) = %s/%s, want %s/%s", c.p.Name, c.p.ownerKind, c.p.ownerName, kind, name, c.kind, c.name)
		}
	}
}

// clusterInput is a small cluster: two nodes, pods of several kinds, a
// hostNetwork pod, Services and EndpointSlices.
func clusterInput() buildInput {
	return buildInput{
		pods: []*podInfo{
			testPod("shop", "api-7c9f8d6b5-a", "node-a", []string{"10.0.0.5", "fd00::5"}, owned("ReplicaSet", "api-7c9f8d6b5"), onHost("192.168.1.10")),
			testPod("shop", "api-7c9f8d6b5-b", "node-b", []string{"10.0.1.7"}, owned("ReplicaSet", "api-7c9f8d6b5"), onHost("192.168.1.11"),
				func(p *podInfo) { p.ready = false }),
			testPod("kube-system", "agent-x", "node-a", nil, owned("DaemonSet", "agent"), hostNet("192.168.1.10", 9100)),
			testPod("kube-system", "dns-y", "node-a", nil, owned("DaemonSet", "dns"), hostNet("192.168.1.10", 53, 9153)),
			// A Completed job pod keeps its IP in its status; the IP was
			// then given to a live pod.
			testPod("ops", "backup-1", "node-b", []string{"10.0.1.9"}, owned("Job", "backup-1"), phase("Succeeded")),
			testPod("shop", "cart-0", "node-b", []string{"10.0.1.9"}, owned("StatefulSet", "cart")),
			testPod("shop", "old-0", "node-b", []string{"10.0.1.20"}, terminating()),
		},
		services: []*svcInfo{
			testSvc("shop", "api", "10.96.0.10", "fd00:96::10"),
			testSvc("kube-system", "metrics", "10.96.0.20"),
			testSvc("shop", "headless"),
		},
		slices: []*sliceInfo{
			testSlice("shop", "api", sliceEndpoint{addrs: addrs("10.0.0.5"), pod: "api-7c9f8d6b5-a"}, sliceEndpoint{addrs: addrs("10.0.1.7"), pod: "api-7c9f8d6b5-b"}),
			testSlice("shop", "api", sliceEndpoint{addrs: addrs("fd00::5"), pod: "api-7c9f8d6b5-a"}),
			testSlice("shop", "all", sliceEndpoint{addrs: addrs("10.0.0.5")}), // no targetRef
			testSlice("kube-system", "metrics", sliceEndpoint{addrs: addrs("192.168.1.10"), pod: "agent-x"}),
		},
		replicaSets: map[nsName]*ownerInfo{{"shop", "api-7c9f8d6b5"}: {ownerKind: "Deployment", ownerName: "api"}},
	}
}

func TestLookupIP(t *testing.T) {
	r := newTestResolver(t, clusterInput())
	at := time.Now()
	type want struct {
		kind, ns, name, wk, wn, node string
		services                     []string
		ready, terminating, hostNet  bool
	}
	cases := []struct {
		ip   string
		port uint16
		want want
	}{
		{"10.0.0.5", 0, want{"pod", "shop", "api-7c9f8d6b5-a", "Deployment", "api", "node-a", []string{"shop/all", "shop/api"}, true, false, false}},
		{"fd00::5", 443, want{"pod", "shop", "api-7c9f8d6b5-a", "Deployment", "api", "node-a", []string{"shop/all", "shop/api"}, true, false, false}},
		{"::ffff:10.0.0.5", 0, want{"pod", "shop", "api-7c9f8d6b5-a", "Deployment", "api", "node-a", []string{"shop/all", "shop/api"}, true, false, false}},
		{"10.0.1.7", 0, want{"pod", "shop", "api-7c9f8d6b5-b", "Deployment", "api", "node-b", []string{"shop/api"}, false, false, false}},
		{"10.0.1.9", 0, want{"pod", "shop", "cart-0", "StatefulSet", "cart", "node-b", nil, true, false, false}},
		{"10.0.1.20", 0, want{"pod", "shop", "old-0", "", "", "node-b", nil, true, true, false}},
		{"10.96.0.10", 80, want{"service", "shop", "api", "", "", "", nil, false, false, false}},
		{"fd00:96::10", 80, want{"service", "shop", "api", "", "", "", nil, false, false, false}},
		// Node IP: the node, never one of the hostNetwork pods...
		{"192.168.1.10", 0, want{"node", "", "node-a", "", "", "node-a", []string{"kube-system/metrics"}, false, false, false}},
		{"192.168.1.10", 22, want{"node", "", "node-a", "", "", "node-a", []string{"kube-system/metrics"}, false, false, false}},
		// ...unless the port is one of its containerPorts.
		{"192.168.1.10", 9100, want{"pod", "kube-system", "agent-x", "DaemonSet", "agent", "node-a", []string{"kube-system/metrics"}, true, false, true}},
		{"192.168.1.10", 53, want{"pod", "kube-system", "dns-y", "DaemonSet", "dns", "node-a", nil, true, false, true}},
		{"192.168.1.11", 9100, want{"node", "", "node-b", "", "", "node-b", nil, false, false, false}},
		{"10.9.9.9", 0, want{}},
	}
	for _, c := range cases {
		ep := r.LookupIP(netip.MustParseAddr(c.ip), c.port, at)
		got := want{ep.Kind, ep.Namespace, ep.Name, ep.WorkloadKind, ep.WorkloadName, ep.Node, ep.Services, ep.Ready, ep.Terminating, ep.HostNetwork}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("LookupIP(%s, %d):\n got %+v\nwant %+v", c.ip, c.port, got, c.want)
		}
		if ep.Unresolved || ep.DeletedAgo != 0 || ep.Previous != nil {
			t.Errorf("LookupIP(%s, %d): unexpected %+v", c.ip, c.port, ep)
		}
	}
	if ep := r.LookupIP(netip.MustParseAddr("10.0.0.5"), 0, at); ep.UID != "uid-shop-api-7c9f8d6b5-a" {
		t.Errorf("UID = %q", ep.UID)
	}

	// Not synced or unhealthy: Unresolved, with what is known.
	r.ready.Store(false)
	if ep := r.LookupIP(netip.MustParseAddr("10.0.0.5"), 0, at); !ep.Unresolved || ep.Name != "api-7c9f8d6b5-a" {
		t.Errorf("unhealthy hit: %+v", ep)
	}
	if ep := r.LookupIP(netip.MustParseAddr("10.9.9.9"), 0, at); !ep.Unresolved || ep.Kind != "" {
		t.Errorf("unhealthy miss: %+v", ep)
	}
}

func TestDeletedAndReusedIP(t *testing.T) {
	in := clusterInput()
	r := newTestResolver(t, in)
	ip := netip.MustParseAddr("10.0.1.7")
	t0 := time.Now()

	// Pod b is deleted: its IP resolves to it, with the age at the event time.
	b := in.pods[1]
	in.pods = slices.Delete(in.pods, 1, 2)
	r.podDeleted(b)
	republish(r, in)
	ep := r.LookupIP(ip, 0, t0.Add(3*time.Second))
	if ep.Kind != "pod" || ep.Name != b.Name || ep.WorkloadKind != "Deployment" || !slices.Equal(ep.Services, []string{"shop/api"}) || ep.Previous != nil {
		t.Fatalf("deleted pod: %+v", ep)
	}
	if d := ep.DeletedAgo - 3*time.Second; d < -100*time.Millisecond || d > 100*time.Millisecond {
		t.Errorf("DeletedAgo = %v, want ~3s", ep.DeletedAgo)
	}
	// An event from before the deletion: the pod, deleted after it.
	if ep := r.LookupIP(ip, 0, t0.Add(-time.Second)); ep.Name != b.Name || ep.DeletedAgo > -time.Second || ep.DeletedAgo < -2*time.Second {
		t.Errorf("event before deletion: %+v", ep)
	}
	// Past the window: forgotten by the lookup...
	if ep := r.LookupIP(ip, 0, t0.Add(6*time.Minute)); ep.Kind != "" {
		t.Errorf("after the window: %+v", ep)
	}

	// The IP goes to a new pod, which is deleted too, then to a third one.
	c := testPod("shop", "c", "node-b", []string{"10.0.1.7"})
	in.pods = append(in.pods, c)
	republish(r, in)
	time.Sleep(20 * time.Millisecond)
	in.pods = in.pods[:len(in.pods)-1]
	r.podDeleted(c)
	d := testPod("shop", "d", "node-b", []string{"10.0.1.7"})
	in.pods = append(in.pods, d)
	republish(r, in)

	ep = r.LookupIP(ip, 0, time.Time{})
	if ep.Name != "d" || ep.DeletedAgo != 0 || len(ep.Previous) != 2 || ep.Previous[0].Name != "c" || ep.Previous[1].Name != b.Name {
		t.Fatalf("reused IP: %+v", ep)
	}
	if !(ep.Previous[0].DeletedAgo > 0 && ep.Previous[0].DeletedAgo < ep.Previous[1].DeletedAgo) {
		t.Errorf("Previous not newest first with ages: %v, %v", ep.Previous[0].DeletedAgo, ep.Previous[1].DeletedAgo)
	}

	// The janitor forgets them after the window.
	if !r.tombs.prune(time.Now().Add(6 * time.Minute)) {
		t.Error("prune removed nothing")
	}
	republish(r, in)
	if ep := r.LookupIP(ip, 0, time.Time{}); ep.Name != "d" || ep.Previous != nil {
		t.Errorf("after prune: %+v", ep)
	}
	if n := r.tombs.len(); n != 0 {
		t.Errorf("%d tombstones left", n)
	}
}

func TestTombstoneBounds(t *testing.T) {
	ts := newTombstones(time.Minute)
	ts.max, ts.maxPerIP = 10, 3
	ip := netip.MustParseAddr("10.0.0.1")
	base := time.Now()
	// Out of order deletion times still end up newest first.
	for _, s := range []int{2, 0, 3, 1} {
		ts.add(Endpoint{Name: fmt.Sprint(s)}, "", []netip.Addr{ip}, base.Add(time.Duration(s)*time.Second))
	}
	var names []string
	for _, tb := range ts.byIP[ip] {
		names = append(names, tb.ep.Name)
	}
	if !slices.Equal(names, []string{"3", "2", "1"}) {
		t.Errorf("per-IP list = %v, want [3 2 1]", names)
	}
	for i := range 20 {
		ts.add(Endpoint{}, fmt.Sprint("u", i), []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, byte(i)})}, base.Add(10*time.Second))
	}
	if ts.len() > 10 {
		t.Errorf("%d tombstones, max 10", ts.len())
	}
	if _, ok := ts.byUID["u19"]; !ok {
		t.Error("newest UID evicted")
	}
	ts.prune(base.Add(2 * time.Minute))
	if ts.len() != 0 || len(ts.byIP) != 0 || len(ts.byUID) != 0 {
		t.Errorf("after prune: %d, %v, %v", ts.len(), ts.byIP, ts.byUID)
	}
}

func TestDeletedAt(t *testing.T) {
	observed := time.Now()
	p := testPod("a", "b", "n", nil)
	check := func(what string, late bool, want time.Time) {
		t.Helper()
		if got := deletedAt(p, observed, late); !got.Equal(want) {
			t.Errorf("%s: deletedAt = %v, want %v", what, got, want)
		}
	}
	check("no deletionTimestamp", false, observed)
	check("no deletionTimestamp, relist", true, observed)
	later := metav1.NewTime(observed.Add(20 * time.Second)) // stopped before the grace was over
	p.DeletionTimestamp = &later
	check("deadline ahead", false, observed)
	check("deadline ahead, relist", true, observed)
	truncated := metav1.NewTime(observed.Add(-800 * time.Millisecond)) // force delete: request time, whole seconds
	p.DeletionTimestamp = &truncated
	check("force delete", false, observed)
	check("force delete found by a relist", true, truncated.Time)
	longAgo := metav1.NewTime(observed.Add(-time.Minute)) // delete event came late
	p.DeletionTimestamp = &longAgo
	check("seen late", false, longAgo.Time)
}

func TestClassify(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	cases := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{io.EOF, ""},
		{apierrors.NewResourceExpired("too old"), ""},
		{apierrors.NewGone("gone"), ""},
		{apierrors.NewForbidden(gr, "", errors.New("RBAC")), ConditionForbidden},
		{fmt.Errorf("failed to list *v1.Pod: %w", apierrors.NewForbidden(gr, "", errors.New("RBAC"))), ConditionForbidden},
		{apierrors.NewUnauthorized("bad cert"), ConditionUnauthorized},
		{apierrors.NewServiceUnavailable("starting"), ConditionUnreachable},
		{apierrors.NewTooManyRequests("slow down", 1), ConditionUnreachable},
		{apierrors.NewInternalError(errors.New("etcd")), ConditionUnreachable},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, ConditionUnreachable},
		{fmt.Errorf("Get \"https://127.0.0.1:6443\": %w", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}), ConditionUnreachable},
		{io.ErrUnexpectedEOF, ConditionUnreachable},
		{apierrors.NewNotFound(gr, ""), ConditionError},
		{errors.New("weird"), ConditionError},
	}
	for _, c := range cases {
		if got := classify(c.err); got != c.want {
			t.Errorf("classify(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

func TestHealthLogsOnce(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	var readyCalls []bool
	h := newHealth(zap.New(core), func(b bool) { readyCalls = append(readyCalls, b) })
	for _, r := range []string{"pods", "services", "endpointslices"} {
		h.add(r, true)
	}
	h.add("replicasets", false)
	gr := schema.GroupResource{Resource: "pods"}
	forbidden := apierrors.NewForbidden(gr, "", errors.New("RBAC"))
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}

	// Forbidden on everything, over and over: one line.
	for range 50 {
		for _, r := range []string{"pods", "services", "endpointslices", "replicasets"} {
			h.report(r, forbidden)
		}
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Fatalf("%d warnings for a forbidden episode, want 1: %v", n, logs.All())
	}
	// Granted: lists succeed, informers sync, one recovery line.
	for _, r := range []string{"pods", "services", "endpointslices", "replicasets"} {
		h.report(r, nil)
	}
	h.setSynced()
	if n := logs.FilterMessageSnippet("recovered").Len(); n != 1 {
		t.Fatalf("%d recovery lines, want 1", n)
	}
	if !slices.Equal(readyCalls, []bool{true}) {
		t.Errorf("ready transitions %v", readyCalls)
	}

	// An outage with retries: one warning, one recovery, ready off and on.
	logs.TakeAll()
	for range 30 {
		h.report("pods", refused)
		h.report("services", refused)
	}
	h.report("pods", nil)
	h.report("services", refused) // still down
	h.report("services", nil)
	if w := logs.FilterLevelExact(zapcore.WarnLevel).Len(); w != 1 {
		t.Errorf("%d warnings for an outage", w)
	}
	if n := logs.FilterMessageSnippet("recovered").Len(); n != 1 {
		t.Errorf("%d recovery lines", n)
	}
	if !slices.Equal(readyCalls, []bool{true, false, true}) {
		t.Errorf("ready transitions %v", readyCalls)
	}
	var st Status
	h.status(&st)
	if st.Condition != ConditionOK || st.LastError == "" {
		t.Errorf("status %+v", st)
	}

	// An optional resource forbidden: logged, but lookups stay ready.
	logs.TakeAll()
	h.report("replicasets", forbidden)
	h.status(&st)
	if st.Condition != ConditionForbidden || !st.Forbidden || logs.Len() != 1 || readyCalls[len(readyCalls)-1] != true {
		t.Errorf("optional forbidden: %+v, logs %v, ready %v", st, logs.All(), readyCalls)
	}
}

func TestNewConfigErrors(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", dir)
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")

	_, err := New(Config{Kubeconfig: filepath.Join(dir, "missing"), Node: "n"}, nil)
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing kubeconfig: %v", err)
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: good, context: {cluster: c, user: u}}]
current-context: good
`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{Kubeconfig: kc, Context: "nope", Node: "n"}, nil)
	if err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown context: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad"), []byte("{{{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err = New(Config{Kubeconfig: filepath.Join(dir, "bad"), Node: "n"}, nil); err == nil {
		t.Error("unparsable kubeconfig accepted")
	}
	_, err = New(Config{Node: "n"}, nil)
	if err == nil || !strings.Contains(err.Error(), "no kubeconfig") {
		t.Errorf("no configuration at all: %v", err)
	}
	if _, err = New(Config{Kubeconfig: kc, Node: "n", DeletedWindow: -time.Second}, nil); err == nil {
		t.Error("negative DeletedWindow accepted")
	}

	// A good one: New contacts nothing (the server does not exist).
	r, err := New(Config{Kubeconfig: kc, Context: "good"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.cfg.DeletedWindow != 5*time.Minute || r.cfg.ProcRoot != "/proc" || r.cfg.Node == "" {
		t.Errorf("defaults: %+v", r.cfg)
	}
	t.Setenv("NODE_NAME", "from-env")
	if r, _ := New(Config{Kubeconfig: kc}, nil); r.cfg.Node != "from-env" {
		t.Errorf("Node = %q, want $NODE_NAME", r.cfg.Node)
	}
}

func TestClusterRoleYAML(t *testing.T) {
	var cr rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict([]byte(ClusterRoleYAML), &cr); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cr.Rules, ClusterRoleRules()) || cr.Name != "kdrop" {
		t.Errorf("ClusterRoleYAML says %+v, ClusterRoleRules %+v", cr.Rules, ClusterRoleRules())
	}
	ClusterRoleRules()[0].Verbs[0] = "delete"
	if ClusterRoleRules()[0].Verbs[0] != "get" {
		t.Error("ClusterRoleRules shares its slices")
	}
}

// TestScanProcLayout checks the walker on a directory laid out like /proc
// (symlinks and files). The real walk, on /proc with a real netns and
// cgroup, is TestNetnsToPod.
func TestScanProcLayout(t *testing.T) {
	root := t.TempDir()
	const uid = "3f6b1c2a-7d0e-4b8f-9a21-5c6d7e8f9a0b"
	mk := func(pid, netns, cgroup string) {
		d := filepath.Join(root, pid, "ns")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if netns != "" {
			if err := os.Symlink(netns, filepath.Join(d, "net")); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("1", "net:[100]", "0::/init.scope\n")
	mk("50", "net:[100]", "0::/kubepods/besteffort/pod"+uid+"/c\n") // hostNetwork pod: the host netns
	mk("70", "net:[200]", "0::/system.slice/foo\n")                 // e.g. nsenter'd first...
	mk("71", "net:[200]", "0::/kubepods/besteffort/pod"+uid+"/c\n") // ...then the pod's process
	mk("80", "net:[300]", "0::/user.slice\n")
	mk("90", "", "")
	mk("self", "net:[999]", "")
	m := scanProc(root, netnsMaxEntries)
	if m.host != 100 || m.pods[200] != uid || m.pods[300] != "" || len(m.pods) != 2 || m.pids != 6 {
		t.Errorf("scanProc = host %d, pods %v, pids %d", m.host, m.pods, m.pids)
	}
	// pid 1 unreadable: kthreadd's netns.
	os.Remove(filepath.Join(root, "1", "ns", "net"))
	mk("2", "net:[100]", "")
	if m := scanProc(root, netnsMaxEntries); m.host != 100 {
		t.Errorf("host from pid 2 = %d", m.host)
	}
	// At most max namespaces: the rest are left out, and that is told.
	if m := scanProc(root, 1); len(m.pods) != 1 || !m.full {
		t.Errorf("scanProc(max 1) = pods %v, full %v", m.pods, m.full)
	}
	if m := scanProc(root, 2); len(m.pods) != 2 || m.full {
		t.Errorf("scanProc(max 2) = pods %v, full %v", m.pods, m.full)
	}
}

func TestSamePod(t *testing.T) {
	a := testPod("a", "b", "n", []string{"10.0.0.1"})
	b := *a
	if !samePod(a, &b) {
		t.Error("copy differs")
	}
	b.ready = false
	if samePod(a, &b) {
		t.Error("readiness change ignored")
	}
	b = *a
	b.ips = addrs("10.0.0.2")
	if samePod(a, &b) {
		t.Error("IP change ignored")
	}
}

// TestNetnsCacheRefresh: a lookup never walks; it asks the refresher,
// which walks at most once per interval; hits do not ask; inodes a walk
// looked for and did not find are remembered, within bounds, for the TTL.
func TestNetnsCacheRefresh(t *testing.T) {
	root := t.TempDir()
	const uid = "3f6b1c2a-7d0e-4b8f-9a21-5c6d7e8f9a0b"
	mk := func(pid, netns, cgroup string) {
		d := filepath.Join(root, pid, "ns")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(netns, filepath.Join(d, "net")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(cgroup), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	asked := func(c *netnsCache) bool {
		select {
		case <-c.kick:
			return true
		default:
			return false
		}
	}
	mk("1", "net:[100]", "0::/init.scope\n")
	c := newNetnsCache(root, zap.NewNop())

	// No refresher running: lookups answer from the cache, never walk.
	if _, host, known := c.lookup(100); host || known || c.scans.Load() != 0 || !asked(c) {
		t.Fatalf("lookup before any walk: host %v, known %v, %d walks", host, known, c.scans.Load())
	}
	c.scan()
	if _, host, known := c.lookup(100); !host || !known {
		t.Fatal("host netns not found by the first walk")
	}
	// A new pod appears: its first lookup asks, and answers unknown...
	mk("42", "net:[200]", "0::/kubepods/besteffort/pod"+uid+"/c\n")
	if _, _, known := c.lookup(200); known || !asked(c) || c.scans.Load() != 1 {
		t.Fatalf("first lookup of a new netns: known %v, %d walks", known, c.scans.Load())
	}
	// ...and the walk it asked for finds it.
	c.scan()
	if got, _, known := c.lookup(200); !known || got != uid {
		t.Fatalf("after a walk: %q, %v", got, known)
	}
	// Hits do not ask.
	for range 10 {
		c.lookup(200)
		c.lookup(100)
	}
	if asked(c) {
		t.Error("a hit asked for a walk")
	}
	// An inode no process is in: asked once, then known absent, without
	// asking again until the TTL is past.
	c.lookup(300)
	c.scan()
	asked(c)
	if got, host, known := c.lookup(300); got != "" || host || !known || asked(c) {
		t.Errorf("absent netns: %q, host %v, known %v", got, host, known)
	}
	// Past the TTL: still absent, but looked for again...
	m := *c.cur.Load()
	m.absent = map[uint32]time.Time{300: m.scanned.Add(-netnsNegativeTTL)}
	c.cur.Store(&m)
	if _, _, known := c.lookup(300); !known || !asked(c) {
		t.Error("absent netns past the TTL: not known, or not looked for again")
	}
	c.scan()
	if since, ok := c.cur.Load().absent[300]; !ok || time.Since(since) > time.Second {
		t.Errorf("absent netns looked for again: since %v, %v", since, ok)
	}
	// ...and forgotten when no lookup asks for twice the TTL.
	m = *c.cur.Load()
	m.absent = map[uint32]time.Time{300: m.scanned.Add(-2 * netnsNegativeTTL)}
	c.cur.Store(&m)
	c.scan()
	if _, _, known := c.lookup(300); known || !asked(c) {
		t.Error("absent netns still remembered, unasked, past twice the TTL")
	}
	// Bounded: at most maxAbsent inodes asked for and remembered absent.
	c.maxAbsent = 2
	for ino := uint32(301); ino <= 305; ino++ {
		c.lookup(ino)
	}
	if n := len(c.pending); n != 2 {
		t.Errorf("%d inodes pending, want at most 2", n)
	}
	c.scan()
	if n := len(c.cur.Load().absent); n != 2 {
		t.Errorf("%d inodes remembered absent, want at most 2", n)
	}

	// The refresher walks at start, then only when asked, at most once
	// per interval however often it is asked.
	c = newNetnsCache(root, zap.NewNop())
	c.interval = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	eventually(t, 5*time.Second, func() string {
		if c.scans.Load() == 0 {
			return "no walk at start"
		}
		return ""
	})
	time.Sleep(500 * time.Millisecond)
	if n := c.scans.Load(); n != 1 {
		t.Errorf("%d walks unasked, want 1 (at start)", n)
	}
	start, before := time.Now(), c.scans.Load()
	for ino := uint32(1000); time.Since(start) < time.Second; ino++ {
		c.lookup(ino)
		time.Sleep(time.Millisecond)
	}
	if n := c.scans.Load() - before; n < 2 || n > 6 {
		t.Errorf("%d walks in 1s of asking, with an interval of 200ms", n)
	}
}

// TestLookupAllocs guards the hot path: no allocation on a hit (nor a miss,
// nor a deleted pod without older owners).
func TestLookupAllocs(t *testing.T) {
	in := clusterInput()
	r := newTestResolver(t, in)
	gone := testPod("shop", "gone", "node-a", []string{"10.0.9.9"})
	r.podDeleted(gone)
	republish(r, in)
	now := time.Now()
	for _, c := range []struct {
		ip   string
		port uint16
	}{{"10.0.0.5", 80}, {"fd00::5", 80}, {"10.96.0.10", 80}, {"192.168.1.10", 9100}, {"192.168.1.10", 22}, {"10.9.9.9", 80}, {"10.0.9.9", 80}} {
		ip := netip.MustParseAddr(c.ip)
		if n := testing.AllocsPerRun(1000, func() { r.LookupIP(ip, c.port, now) }); n != 0 {
			t.Errorf("LookupIP(%s, %d): %v allocs", c.ip, c.port, n)
		}
	}
	r.netns.scan()
	host := r.netns.cur.Load().host
	if n := testing.AllocsPerRun(1000, func() { r.LookupNetns(host) }); n != 0 {
		t.Errorf("LookupNetns(host): %v allocs", n)
	}
}

// A Service's ready endpoints are counted from its slices' conditions, so
// an event aimed at its IP can say kube-proxy has nowhere to send it.
func TestServiceReadyEndpoints(t *testing.T) {
	r := newTestResolver(t, buildInput{
		services: []*svcInfo{testSvc("shop", "cart", "10.96.0.10"), testSvc("shop", "api", "10.96.0.11")},
		slices: []*sliceInfo{
			testSlice("shop", "api", sliceEndpoint{addrs: addrs("10.0.0.5"), ready: true}, sliceEndpoint{addrs: addrs("10.0.0.6")}),
			testSlice("shop", "cart", sliceEndpoint{addrs: addrs("10.0.0.7")}), // not ready
		},
	})
	for ip, want := range map[string]int{"10.96.0.10": 0, "10.96.0.11": 1} {
		ep := r.LookupIP(netip.MustParseAddr(ip), 80, time.Time{})
		if ep.Kind != KindService || ep.ReadyEndpoints != want {
			t.Errorf("%s: got %+v, want a service with %d ready endpoints", ip, ep, want)
		}
	}
}

// Services by namespace and name, as kube-proxy's rules name them: each
// Service the informer holds (headless too), with its UID and ready
// endpoints; nothing else; no allocation.
func TestLookupService(t *testing.T) {
	in := clusterInput()
	for _, s := range in.services {
		s.UID = types.UID("uid-" + s.Namespace + "-" + s.Name)
	}
	in.slices = append(in.slices, testSlice("shop", "api", sliceEndpoint{addrs: addrs("10.0.0.8"), ready: true}, sliceEndpoint{addrs: addrs("10.0.0.9"), ready: true}))
	r := newTestResolver(t, in)
	for _, c := range []struct {
		ns, name string
		ok       bool
		ready    int
	}{{"shop", "api", true, 2}, {"kube-system", "metrics", true, 0}, {"shop", "headless", true, 0},
		{"shop", "all", false, 0}, {"kube-system", "api", false, 0}, {"", "", false, 0}} {
		ep, ok := r.LookupService(c.ns, c.name)
		want := Endpoint{}
		if c.ok {
			want = Endpoint{Kind: KindService, Namespace: c.ns, Name: c.name, UID: "uid-" + c.ns + "-" + c.name, ReadyEndpoints: c.ready}
		}
		if ok != c.ok || !reflect.DeepEqual(ep, want) {
			t.Errorf("LookupService(%q, %q) = %+v, %v; want %+v, %v", c.ns, c.name, ep, ok, want, c.ok)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { r.LookupService("shop", "api") }); n != 0 {
		t.Errorf("LookupService: %v allocs", n)
	}
	r.ready.Store(false)
	if ep, ok := r.LookupService("shop", "api"); !ok || !ep.Unresolved || ep.UID != "uid-shop-api" {
		t.Errorf("unhealthy hit: %+v, %v", ep, ok)
	}
}
