package k8s

import (
	"slices"
	"strings"
	"unique"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ProbeKinds is a set of kubelet probe kinds (liveness, readiness, startup).
type ProbeKinds uint8

// Probe kinds, the bits of ProbeKinds.
const (
	ProbeLiveness ProbeKinds = 1 << iota
	ProbeReadiness
	ProbeStartup
)

// Probe handlers: how the kubelet probes a port.
const (
	ProbeTCP  = "tcp"  // tcpSocket: a TCP connect
	ProbeHTTP = "http" // httpGet: an HTTP(S) GET
	ProbeGRPC = "grpc" // grpc: a gRPC health check
)

// Probe is a port of a pod's IP that the kubelet probes: it connects there
// from the node (its own network namespace) every periodSeconds. A pod's
// probes are kept one per port: Kinds are all the probes on that port,
// Handler and Container those of the first of Kinds in Primary's order.
// Probes by exec, and httpGet probes with a host of their own (the kubelet
// connects there, not to the pod), are not kept.
type Probe struct {
	Port      uint16
	Kinds     ProbeKinds
	Handler   string // ProbeTCP, ProbeHTTP or ProbeGRPC
	Container string // the probed container's name
	// HTTPS: an httpGet probe with scheme HTTPS (the port must speak TLS).
	HTTPS bool
}

// probeOrder is how the kinds of one port rank: a failing liveness or
// startup probe restarts the container, a readiness probe only takes the
// pod out of its Services.
var probeOrder = []struct {
	kind ProbeKinds
	name string
}{{ProbeLiveness, "liveness"}, {ProbeStartup, "startup"}, {ProbeReadiness, "readiness"}}

// Primary is the kind that matters most among k: liveness, then startup,
// then readiness; 0 when k is empty.
func (k ProbeKinds) Primary() ProbeKinds {
	for _, o := range probeOrder {
		if k&o.kind != 0 {
			return o.kind
		}
	}
	return 0
}

// ProbeOrder is every kind, in Primary's order.
var ProbeOrder = [...]ProbeKinds{ProbeLiveness, ProbeStartup, ProbeReadiness}

// Name is one kind's name ("liveness"); "" for none, or for several.
func (k ProbeKinds) Name() string {
	for _, o := range probeOrder {
		if k == o.kind {
			return o.name
		}
	}
	return ""
}

// Names lists the kinds in k by name ("liveness", "startup",
// "readiness"), in Primary's order.
func (k ProbeKinds) Names() []string {
	var out []string
	for _, o := range probeOrder {
		if k&o.kind != 0 {
			out = append(out, o.name)
		}
	}
	return out
}

// String is the kinds' names joined with "+" ("liveness+readiness"); ""
// for none.
func (k ProbeKinds) String() string { return strings.Join(k.Names(), "+") }

// ParseProbeKind reads one kind's name; 0 for a name it does not know.
func ParseProbeKind(s string) ProbeKinds {
	for _, o := range probeOrder {
		if o.name == s {
			return o.kind
		}
	}
	return 0
}

// ProbeOn returns the probe of the pod on port, or nil. The Probe is shared
// with the index: read it, do not modify it.
func (e *Endpoint) ProbeOn(port uint16) *Probe {
	for i := range e.Probes {
		if e.Probes[i].Port == port {
			return &e.Probes[i]
		}
	}
	return nil
}

// probesOf lists p's probes that connect to its IP, merged per port and
// sorted by port; nil when none does. A port given by name is the probed
// container's port of that name, as the kubelet resolves it; a name the
// container does not declare (the probe then always fails in the kubelet,
// without connecting) is left out.
func probesOf(p *corev1.Pod) []Probe {
	var out []Probe
	add := func(c *corev1.Container, kind ProbeKinds, pr *corev1.Probe) {
		if pr == nil {
			return
		}
		var port intstr.IntOrString
		var handler string
		https := false
		switch h := &pr.ProbeHandler; {
		case h.TCPSocket != nil:
			if h.TCPSocket.Host != "" {
				return
			}
			port, handler = h.TCPSocket.Port, ProbeTCP
		case h.HTTPGet != nil:
			if h.HTTPGet.Host != "" {
				return
			}
			port, handler, https = h.HTTPGet.Port, ProbeHTTP, h.HTTPGet.Scheme == corev1.URISchemeHTTPS
		case h.GRPC != nil:
			port, handler = intstr.FromInt32(h.GRPC.Port), ProbeGRPC
		default:
			return
		}
		n, ok := containerPort(c, port)
		if !ok {
			return
		}
		i := slices.IndexFunc(out, func(q Probe) bool { return q.Port == n })
		if i < 0 {
			out = append(out, Probe{Port: n})
			i = len(out) - 1
		}
		q := &out[i]
		q.Kinds |= kind
		if q.Kinds.Primary() == kind { // this kind outranks what was there
			q.Handler, q.Container, q.HTTPS = handler, unique.Make(c.Name).Value(), https
		}
	}
	// Restartable init containers (sidecars) are probed too.
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range list {
			c := &list[i]
			add(c, ProbeLiveness, c.LivenessProbe)
			add(c, ProbeReadiness, c.ReadinessProbe)
			add(c, ProbeStartup, c.StartupProbe)
		}
	}
	slices.SortFunc(out, func(a, b Probe) int { return int(a.Port) - int(b.Port) })
	return slices.Clip(out)
}

// containerPort resolves a probe's port as the kubelet does: a number,
// or the name of one of c's ports (any protocol).
func containerPort(c *corev1.Container, port intstr.IntOrString) (uint16, bool) {
	n := port.IntVal
	if port.Type == intstr.String {
		i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == port.StrVal })
		if i < 0 {
			return 0, false
		}
		n = c.Ports[i].ContainerPort
	}
	if n <= 0 || n >= 65536 {
		return 0, false
	}
	return uint16(n), true
}
