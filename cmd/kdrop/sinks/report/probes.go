package report

import (
	"fmt"
	"strings"

	"github.com/kdrop/kdrop/k8s"
)

// Probe is a kubelet probe as a report keeps it (see k8s.Probe): every
// field checked, comparable. Zero: the flow is no probe connection.
type Probe struct {
	Kinds     k8s.ProbeKinds // the known kinds only
	Port      uint16
	Handler   string // "tcp", "http", "grpc"; else marked
	Container string // a DNS label; else marked
	HTTPS     bool
}

// cleanProbe checks a line's probe; a probe of no kind this kdrop knows
// (a newer one's) is no probe.
func cleanProbe(p *k8s.Probe) Probe {
	if p == nil || p.Kinds&(k8s.ProbeLiveness|k8s.ProbeReadiness|k8s.ProbeStartup) == 0 {
		return Probe{}
	}
	return Probe{
		Kinds: p.Kinds & (k8s.ProbeLiveness | k8s.ProbeReadiness | k8s.ProbeStartup), Port: p.Port, HTTPS: p.HTTPS,
		Handler: checked(p.Handler, func(s string) bool {
			return s == k8s.ProbeTCP || s == k8s.ProbeHTTP || s == k8s.ProbeGRPC
		}),
		Container: checked(p.Container, isDNSLabel),
	}
}

// probeWords is "liveness probe", "liveness and readiness probes".
func probeWords(k k8s.ProbeKinds) string {
	names := k.Names()
	if len(names) == 1 {
		return names[0] + " probe"
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1] + " probes"
}

// handlerWords names how the kubelet probes.
func handlerWords(p Probe) string {
	switch p.Handler {
	case k8s.ProbeTCP:
		return "tcpSocket"
	case k8s.ProbeHTTP:
		if p.HTTPS {
			return "httpGet (HTTPS)"
		}
		return "httpGet"
	case k8s.ProbeGRPC:
		return "grpc"
	}
	return p.Handler
}

// probeFindings: drops, resets and unreachables on kubelet probe
// connections, one finding per pod and probed port. A failing liveness or
// startup probe restarts the container, a failing readiness probe takes
// the pod out of its Services: "the liveness probe fails now and then".
func (a *analysis) probeFindings() {
	var gs groups
	type extra struct {
		sample      *Flow
		podEnd      *K8s
		noSocket    uint64
		unreach     uint64
		overflow    uint64
		icmp, other counter
	}
	ex := map[*group]*extra{}
	for _, f := range a.rec.Flows {
		if f.Probe.Kinds == 0 || a.used[f] {
			continue
		}
		end, ip := f.DstK8s, f.Dst
		if f.Dport != f.Probe.Port {
			end, ip = f.SrcK8s, f.Src // the pod's answer, dropped on its way back
		}
		g := gs.get(pod(end, ip) + "|" + fmt.Sprint(f.Probe.Port))
		g.add(f)
		e := ex[g]
		if e == nil {
			e = &extra{sample: f, podEnd: end, icmp: counter{}, other: counter{}}
			ex[g] = e
		}
		switch {
		case f.Type == "drop" && f.Reason == "NO_SOCKET":
			e.noSocket += f.Count
		case f.Type == "unreach":
			e.unreach += f.Count
			e.icmp.add(f.ICMP, f.Count)
		case f.Type == "overflow":
			e.overflow += f.Count
			e.other.add(f.Queue+"-queue overflow", f.Count)
		default:
			e.other.add(f.Reason, f.Count)
		}
		a.used[f] = true
	}
	for _, g := range gs.order {
		e := ex[g]
		p, k := e.sample.Probe, e.podEnd
		who := pod(k, e.sample.Dst)
		if e.podEnd != e.sample.DstK8s {
			who = pod(k, e.sample.Src)
		}
		got := counter{}
		if e.noSocket > 0 {
			got.add("NO_SOCKET", e.noSocket)
		}
		for _, c := range []counter{e.icmp, e.other} {
			for n, v := range c {
				got.add(n, v)
			}
		}
		fd := Finding{
			Severity: SevWarning, Kind: "probe", Count: g.count, First: g.first, Last: g.last,
			Title: fmt.Sprintf("The %s of %s on :%d got %s: %s", probeWords(p.Kinds), who, p.Port, got.names(3), plural(g.count, "packet", "packets")),
		}
		if p.Kinds&(k8s.ProbeLiveness|k8s.ProbeStartup) != 0 {
			fd.Severity = SevCritical // each failure counts toward a restart
		}
		container := "its container"
		if p.Container != "" {
			container = "container " + p.Container
		}
		var d strings.Builder
		fmt.Fprintf(&d, "%s, the kubelet's %s %s of %s on port %d (%s) failed in the kernel %s: ",
			capital(span(g.first, g.last)), handlerWords(p), probeWords(p.Kinds), container, p.Port, who, plural(g.count, "time", "times"))
		var what []string
		if e.noSocket > 0 {
			what = append(what, fmt.Sprintf("%s found nothing listening on port %d (NO_SOCKET; the kubelet got a reset: \"connection refused\")", plural(e.noSocket, "connection", "connections"), p.Port))
		}
		if e.unreach > 0 {
			what = append(what, fmt.Sprintf("%s answered with ICMP %s (the pod's address did not answer)", plural(e.unreach, "packet was", "packets were"), e.icmp.names(2)))
		}
		if e.overflow > 0 {
			what = append(what, fmt.Sprintf("%s found the listen queue full (the app does not accept connections fast enough)", plural(e.overflow, "connection", "connections")))
		}
		if rest := g.count - e.noSocket - e.unreach - e.overflow; rest > 0 {
			what = append(what, fmt.Sprintf("%s dropped (%s)", plural(rest, "packet was", "packets were"), got.names(3)))
		}
		d.WriteString(join(what) + ". ")
		switch {
		case p.Kinds&k8s.ProbeLiveness != 0:
			d.WriteString("Each failure counts toward failureThreshold (default 3); then the kubelet restarts the container: \"the liveness probe fails now and then\", restarts for no visible reason.")
		case p.Kinds&k8s.ProbeStartup != 0:
			d.WriteString("Once failureThreshold is reached the kubelet restarts the container before it ever ran.")
		default:
			d.WriteString("While the readiness probe fails the pod is taken out of its Services' endpoints.")
		}
		fd.Detail = d.String()

		podName, nsFlag := "POD", ""
		if known(k) && k.Kind == "pod" {
			podName = k.Name
			if k.Namespace != "" {
				nsFlag = " -n " + k.Namespace
			}
		}
		var fix []string
		if e.noSocket > 0 {
			fix = append(fix,
				fmt.Sprintf("Does the container listen on %d? `kubectl exec%s %s -- ss -ltn` shows what it listens on; the probe's port is %d: make the probe's port (or the named containerPort it uses) the port the app listens on.", p.Port, nsFlag, podName, p.Port),
				"If the app listens on 127.0.0.1 only, make it bind 0.0.0.0 (or ::): the kubelet probes the pod's IP.",
				"If it is slow to start (the failures stop once it listens): add a startupProbe, or raise initialDelaySeconds, so liveness checks begin only once it listens.")
		}
		if e.overflow > 0 {
			fix = append(fix, "The listen queue overflows: the app accepts too slowly under load; the probe then times out. Raise the listen backlog (and net.core.somaxconn), or give probes their own port and thread; raise timeoutSeconds if the app is only slow.")
		}
		if e.unreach > 0 {
			fix = append(fix, fmt.Sprintf("The pod's address did not answer: check the pod's network (`kubectl describe pod%s %s`, the CNI's logs); after a pod was deleted, these end by themselves.", nsFlag, podName))
		}
		if g.count > e.noSocket+e.unreach+e.overflow {
			fix = append(fix, "Something drops the kubelet's packets to the pod: a NetworkPolicy or firewall rule must allow traffic from the node (its addresses, the CNI bridge's) to the probe port.")
		}
		fd.Fix = strings.Join(fix, "\n")
		if e.noSocket > 0 {
			fd.Example = fmt.Sprintf(`# the probed container (%s): probe the port the app listens on, and
# let a startupProbe hold off liveness until it does
startupProbe:
  tcpSocket: {port: %d}       # the port the app really listens on
  periodSeconds: 2
  failureThreshold: 60        # up to 2 minutes to start
livenessProbe:
  tcpSocket: {port: %d}`, container, p.Port, p.Port)
		}
		a.add(fd)
	}
}
