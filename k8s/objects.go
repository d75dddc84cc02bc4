package k8s

import (
	"net/netip"
	"slices"
	"unique"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The informers do not store the API objects they receive. Their transform
// functions (cache.SharedIndexInformer.SetTransform) turn each object into
// one of the compact types below, which hold only what identity needs, with
// the IP addresses already parsed. A stripped *v1.Pod would still cost the
// 1144 bytes of its struct (spec and status are values); a podInfo is about
// a third of that plus its strings, and nothing of the original object
// (managedFields, annotations, labels, container specs, status details)
// stays reachable.
//
// Each type embeds metav1.ObjectMeta only so that it satisfies metav1.Object,
// which client-go's key functions (cache.MetaNamespaceKeyFunc) require; only
// Name, Namespace and, for pods, UID and DeletionTimestamp are filled in.
//
// The transforms are idempotent: a compact object given back to them is
// returned unchanged, as client-go requires.

// Labels and annotations read by the transforms.
const (
	labelPodTemplateHash = appsv1.DefaultDeploymentUniqueLabelKey // "pod-template-hash"
	labelServiceName     = discoveryv1.LabelServiceName           // "kubernetes.io/service-name"
	annotationMirror     = corev1.MirrorPodAnnotationKey          // "kubernetes.io/config.mirror"
)

// podInfo is the pod informer's stored object.
type podInfo struct {
	metav1.ObjectMeta // Name, Namespace, UID, DeletionTimestamp

	// mirrorHash is a static pod's config hash (the value of the mirror
	// pod's kubernetes.io/config.mirror annotation). The kubelet names the
	// pod's cgroup after it, not after the mirror pod's UID.
	mirrorHash string

	ownerKind, ownerName string // the controller ownerReference, if any
	templateHash         string // label pod-template-hash (Deployment inference)

	node        string
	phase       corev1.PodPhase
	ready       bool
	hostNetwork bool

	ips     []netip.Addr // status.podIPs (or status.podIP)
	hostIPs []netip.Addr // status.hostIPs (or status.hostIP): the node's IPs
	ports   []uint16     // containerPorts, kept only for hostNetwork pods; sorted, unique

	// labels and namedPorts are what NetworkPolicies select and name;
	// neither is kept for hostNetwork pods, which policies do not apply to.
	// Label strings are interned (unique): pods of one workload share them.
	labels     map[string]string
	namedPorts []NamedPort
	// probes are the kubelet's probes that connect to the pod's IP, one
	// per port (not kept for hostNetwork pods: those go to the node).
	probes []Probe
}

// NamedPort is a pod's container port that has a name: what a
// NetworkPolicy port given by name ("http") stands for on that pod.
type NamedPort struct {
	Name     string
	Port     uint16
	Protocol corev1.Protocol // TCP, UDP or SCTP (the API's default TCP when unset)
}

// nsInfo is the namespace informer's stored object.
type nsInfo struct {
	metav1.ObjectMeta // Name, Labels (interned)
}

// svcInfo is the service informer's stored object.
type svcInfo struct {
	metav1.ObjectMeta              // Name, Namespace
	ips               []netip.Addr // spec.clusterIPs, spec.externalIPs, status.loadBalancer.ingress[].ip
}

// sliceInfo is the EndpointSlice informer's stored object.
type sliceInfo struct {
	metav1.ObjectMeta // Name, Namespace
	service           string
	endpoints         []sliceEndpoint
}

type sliceEndpoint struct {
	addrs []netip.Addr
	pod   string // targetRef name when targetRef.kind is Pod (same namespace)
	ready bool   // conditions.ready (unset means ready, as the API says)
}

// ownerInfo is the ReplicaSet and Job informers' stored object.
type ownerInfo struct {
	metav1.ObjectMeta // Name, Namespace
	ownerKind         string
	ownerName         string
}

func compactMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace}
}

// controllerOf returns the controller ownerReference's kind and name, or the
// first ownerReference if none is marked as controller.
func controllerOf(refs []metav1.OwnerReference) (kind, name string) {
	for i := range refs {
		if refs[i].Controller != nil && *refs[i].Controller {
			return refs[i].Kind, refs[i].Name
		}
	}
	if len(refs) > 0 {
		return refs[0].Kind, refs[0].Name
	}
	return "", ""
}

func parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}

// appendAddr appends the parsed s to list unless it is invalid or present.
func appendAddr(list []netip.Addr, s string) []netip.Addr {
	a, ok := parseAddr(s)
	if !ok || slices.Contains(list, a) {
		return list
	}
	return append(list, a)
}

// transformPod is the pod informer's cache.TransformFunc.
func transformPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // already a *podInfo, or something this package does not know
	}
	info := &podInfo{
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		mirrorHash:   p.Annotations[annotationMirror],
		templateHash: p.Labels[labelPodTemplateHash],
		node:         p.Spec.NodeName,
		phase:        p.Status.Phase,
		hostNetwork:  p.Spec.HostNetwork,
	}
	info.ownerKind, info.ownerName = controllerOf(p.OwnerReferences)
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			info.ready = c.Status == corev1.ConditionTrue
		}
	}
	for _, ip := range p.Status.PodIPs {
		info.ips = appendAddr(info.ips, ip.IP)
	}
	if len(info.ips) == 0 && p.Status.PodIP != "" {
		info.ips = appendAddr(info.ips, p.Status.PodIP)
	}
	for _, ip := range p.Status.HostIPs {
		info.hostIPs = appendAddr(info.hostIPs, ip.IP)
	}
	if len(info.hostIPs) == 0 && p.Status.HostIP != "" {
		info.hostIPs = appendAddr(info.hostIPs, p.Status.HostIP)
	}
	if info.hostNetwork {
		for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
			for _, c := range list {
				for _, port := range c.Ports {
					if port.ContainerPort > 0 && port.ContainerPort < 65536 {
						info.ports = append(info.ports, uint16(port.ContainerPort))
					}
				}
			}
		}
		slices.Sort(info.ports)
		info.ports = slices.Clip(slices.Compact(info.ports))
	} else {
		info.labels = internLabels(p.Labels)
		info.namedPorts = namedPorts(p)
		info.probes = probesOf(p)
	}
	return info, nil
}

// internLabels copies labels with interned strings; nil when empty.
func internLabels(labels map[string]string) map[string]string {
	if len(labels) == 0 {
		return nil
	}
	out := make(map[string]string, len(labels))
	for k, v := range labels {
		out[unique.Make(k).Value()] = unique.Make(v).Value()
	}
	return out
}

// namedPorts lists p's named container ports (init containers' too: a
// sidecar's ports count), sorted by port; nil when none has a name.
func namedPorts(p *corev1.Pod) []NamedPort {
	var out []NamedPort
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range list {
			for _, port := range c.Ports {
				if port.Name == "" || port.ContainerPort <= 0 || port.ContainerPort >= 65536 {
					continue
				}
				proto := port.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				out = append(out, NamedPort{Name: unique.Make(port.Name).Value(), Port: uint16(port.ContainerPort), Protocol: proto})
			}
		}
	}
	slices.SortFunc(out, func(a, b NamedPort) int { return int(a.Port) - int(b.Port) })
	return slices.Clip(out)
}

// transformNamespace is the namespace informer's cache.TransformFunc: a
// namespace's name and labels (what NetworkPolicies' namespaceSelectors
// match).
func transformNamespace(obj any) (any, error) {
	n, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &nsInfo{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: internLabels(n.Labels)}}, nil
}

// transformNetworkPolicy is the NetworkPolicy informer's
// cache.TransformFunc: the policy's name, namespace and spec, without
// annotations and managedFields. An empty policyTypes (the API server
// defaults it, so only an old object lacks it) gets the API's default:
// Ingress, plus Egress when the policy has egress rules.
func transformNetworkPolicy(obj any) (any, error) {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok || np.UID == "" {
		return obj, nil // already transformed (the UID is dropped)
	}
	out := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: np.Name, Namespace: np.Namespace}, Spec: np.Spec}
	if len(out.Spec.PolicyTypes) == 0 {
		out.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(out.Spec.Egress) > 0 {
			out.Spec.PolicyTypes = append(out.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
	return out, nil
}

// transformService is the service informer's cache.TransformFunc.
func transformService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	info := &svcInfo{ObjectMeta: compactMeta(&s.ObjectMeta)}
	info.UID = s.UID // Events about the Service (sinks/k8sevents) name it by UID
	for _, ip := range s.Spec.ClusterIPs {
		info.ips = appendAddr(info.ips, ip) // "None" (headless) does not parse
	}
	if len(info.ips) == 0 {
		info.ips = appendAddr(info.ips, s.Spec.ClusterIP)
	}
	for _, ip := range s.Spec.ExternalIPs {
		info.ips = appendAddr(info.ips, ip)
	}
	for _, ing := range s.Status.LoadBalancer.Ingress {
		info.ips = appendAddr(info.ips, ing.IP)
	}
	info.ips = slices.Clip(info.ips)
	return info, nil
}

// transformEndpointSlice is the EndpointSlice informer's cache.TransformFunc.
func transformEndpointSlice(obj any) (any, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	info := &sliceInfo{ObjectMeta: compactMeta(&s.ObjectMeta), service: s.Labels[labelServiceName]}
	if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
		return info, nil // FQDN slices name no IPs
	}
	info.endpoints = make([]sliceEndpoint, 0, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		e := sliceEndpoint{ready: ep.Conditions.Ready == nil || *ep.Conditions.Ready}
		for _, a := range ep.Addresses {
			e.addrs = appendAddr(e.addrs, a)
		}
		if len(e.addrs) == 0 {
			continue
		}
		if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" && (ref.Namespace == "" || ref.Namespace == s.Namespace) {
			e.pod = ref.Name
		}
		info.endpoints = append(info.endpoints, e)
	}
	return info, nil
}

// transformReplicaSet is the ReplicaSet informer's cache.TransformFunc.
func transformReplicaSet(obj any) (any, error) {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok {
		return obj, nil
	}
	info := &ownerInfo{ObjectMeta: compactMeta(&rs.ObjectMeta)}
	info.ownerKind, info.ownerName = controllerOf(rs.OwnerReferences)
	return info, nil
}

// transformJob is the Job informer's cache.TransformFunc.
func transformJob(obj any) (any, error) {
	j, ok := obj.(*batchv1.Job)
	if !ok {
		return obj, nil
	}
	info := &ownerInfo{ObjectMeta: compactMeta(&j.ObjectMeta)}
	info.ownerKind, info.ownerName = controllerOf(j.OwnerReferences)
	return info, nil
}
