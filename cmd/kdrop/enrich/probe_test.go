package enrich

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// Addresses of TestProbeMarked: the node's namespace and the pod on one
// link, a client pod's namespace and the pod on another.
const (
	probeNode   = "10.213.77.1"
	probePod    = "10.213.77.2" // the pod's IP in the API server
	probeClient = "10.213.78.1"
)

// seen is what the test keeps of a line.
type seen struct {
	typ, reason, icmp string
	count             uint64
	summary           bool
	src, dst          netip.AddrPort
	probe             *k8s.Probe
	text              string
}

// TestProbeMarked: a "node" namespace connects, as the kubelet does, to
// probe ports of a "pod" namespace whose address is a pod's IP in a real
// API server: to its liveness port, where nothing listens (NO_SOCKET, a
// reset), and to its readiness port, where a REJECT rule answers with ICMP
// port-unreachable. Every such drop and unreachable is marked with its
// probe; the node's connects to a port no probe names, and a client pod's
// connects to the liveness port (kept running while the test asserts), are
// not. Counts equal the connects made and the kernel's own counters.
func TestProbeMarked(t *testing.T) {
	env := testenv.Start(t)
	ctx := t.Context()

	node, pod, client := nstest.New(t, "node"), nstest.New(t, "pod"), nstest.New(t, "client")
	nstest.Veth(t, node, probeNode+"/24", "", pod, probePod+"/24", "")
	nstest.Veth(t, client, probeClient+"/24", "", pod, "10.213.78.2/24", "")
	client.IP(t, "route add "+probePod+"/32 via 10.213.78.2")
	pod.Sh(t, "iptables -A INPUT -p tcp --dport 8083 -j REJECT --reject-with icmp-port-unreachable")
	// On the startup probe's port an app answers, as the one in the real
	// cluster does, with a greeting the kubelet's probe, which connected and
	// closed at once, no longer reads: the node drops it
	// (TCP_ABORT_ON_DATA). The probe succeeded: not a probe's drop.
	var ln net.Listener
	pod.In(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", probePod+":8084"); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				time.Sleep(20 * time.Millisecond)
				c.Write([]byte("hello\n"))
				time.Sleep(20 * time.Millisecond)
				c.Close()
			}()
		}
	}()

	env.RunningPod(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec: corev1.PodSpec{NodeName: "test-node", Containers: []corev1.Container{{
			Name: "api", Image: "example.invalid/api:1",
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "health", ContainerPort: 8081}},
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("health")}}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8083)}}},
			StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8084)}}},
		}}},
	}, probePod)

	log := zaptest.NewLogger(t)
	res, err := k8s.New(k8s.Config{REST: env.Config(), Node: "test-node"}, log)
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(context.Background())
	defer stop()
	pl, err := New(pctx, tracer.Options{Filter: tracer.Filter{CIDRs: []netip.Prefix{netip.MustParsePrefix(probePod + "/32")}}, RateLimit: 100}, res, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	running := false
	defer func() { // Run must end before Close frees the tracer
		stop()
		if running {
			<-done
		}
		pl.Close()
	}()
	// The node is the "node" namespace here (in a cluster, kdrop's own).
	pl.Host.Close()
	if pl.Host, err = NewHostAddrs("/run/netns/" + node.Name); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	if !res.WaitForSync(sctx) {
		t.Fatalf("resolver did not sync: %+v", res.Status())
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ep := res.LookupIP(netip.MustParseAddr(probePod), 8081, time.Time{}); ep.ProbeOn(8081) != nil && ep.ProbeOn(8083) != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pod's probes never reached the resolver")
		}
		time.Sleep(20 * time.Millisecond)
	}

	var mu sync.Mutex
	var lines []seen
	running = true
	go func() {
		done <- pl.Run(pctx, func(ev *line.Event) {
			s := seen{typ: ev.Type.String(), reason: ev.Reason, count: ev.Count, summary: ev.Summary, src: ev.Src, dst: ev.Dst, probe: ev.Probe, text: ev.ProbeText()}
			if ev.Type == tracer.Unreachable {
				s.icmp = ev.What()
			}
			mu.Lock()
			lines = append(lines, s)
			mu.Unlock()
		})
	}()
	time.Sleep(time.Second) // the hooks are attached by New; let Run start reading

	before := pod.Counters(t)
	// A client pod's connects to the liveness port go on all along.
	var clientRefused atomic.Uint64
	clientStop := make(chan struct{})
	var clientDone sync.WaitGroup
	clientDone.Add(1)
	go func() {
		defer clientDone.Done()
		for {
			select {
			case <-clientStop:
				return
			default:
			}
			if err := client.ConnectErr(t, probePod, 8081, time.Second); errors.Is(err, unix.ECONNREFUSED) {
				clientRefused.Add(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	defer func() { close(clientStop); clientDone.Wait() }()

	// The kubelet's probes, from the node: 150 to the liveness port, 40
	// to the readiness port, 30 to a port no probe names; paced (40/s) so
	// that with the client's (20/s) each flow stays under the rate limit
	// (100/s): a summary line names no source, so it is never a probe's.
	const liveness, readiness, unprobed = 150, 40, 30
	connect := func(port, n int, want error, timeout time.Duration) {
		t.Helper()
		for range n {
			if err := node.ConnectErr(t, probePod, port, timeout); !errors.Is(err, want) {
				t.Fatalf("connect from the node to :%d: %v, want %v", port, err, want)
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	connect(8081, liveness, unix.ECONNREFUSED, time.Second)
	connect(8082, unprobed, unix.ECONNREFUSED, time.Second)
	const started = 20
	connect(8084, started, nil, time.Second)
	// The REJECT's ICMP errors are rate-limited by the kernel (its
	// defaults stay on): a connect whose error was not sent times out,
	// before its SYN is sent again.
	connect8083 := 0
	for range readiness {
		err := node.ConnectErr(t, probePod, 8083, 300*time.Millisecond)
		if !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.ETIMEDOUT) {
			t.Fatalf("connect from the node to :8083: %v", err)
		}
		connect8083++
	}

	// tally sums the lines so far by what they are.
	type tally struct {
		livenessDrops, readinessDrops, readinessUnreach, unprobedDrops, clientDrops, afterProbe, summaries, wrong uint64
	}
	sumUp := func() (tl tally, bad []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range lines {
			fromNode, fromClient := s.src.Addr() == netip.MustParseAddr(probeNode), s.src.Addr() == netip.MustParseAddr(probeClient)
			switch {
			case s.summary:
				tl.summaries += s.count
			case s.typ == "drop" && s.reason == "NO_SOCKET" && fromNode && s.dst.Port() == 8081:
				if s.probe == nil || s.probe.Kinds != k8s.ProbeLiveness || s.probe.Handler != k8s.ProbeTCP || s.text != "liveness probe of shop/api on :8081 got NO_SOCKET" {
					bad = append(bad, fmt.Sprintf("liveness drop marked %+v %q", s.probe, s.text))
				}
				tl.livenessDrops += s.count
			case s.typ == "drop" && s.reason == "NETFILTER_DROP" && fromNode && s.dst.Port() == 8083:
				if s.probe == nil || s.probe.Kinds != k8s.ProbeReadiness || s.probe.Handler != k8s.ProbeHTTP || s.text != "readiness probe of shop/api on :8083 got NETFILTER_DROP" {
					bad = append(bad, fmt.Sprintf("readiness drop marked %+v %q", s.probe, s.text))
				}
				tl.readinessDrops += s.count
			case s.typ == "unreach" && fromNode && s.dst.Port() == 8083:
				if s.probe == nil || s.probe.Kinds != k8s.ProbeReadiness || s.text != "readiness probe of shop/api on :8083 got port-unreachable" {
					bad = append(bad, fmt.Sprintf("readiness unreachable marked %+v %q", s.probe, s.text))
				}
				tl.readinessUnreach += s.count
			case s.typ == "drop" && s.reason == "NO_SOCKET" && fromNode && s.dst.Port() == 8082:
				if s.probe != nil {
					bad = append(bad, fmt.Sprintf("a drop on :8082, which no probe names, marked %+v", s.probe))
				}
				tl.unprobedDrops += s.count
			case s.typ == "drop" && s.reason == "NO_SOCKET" && fromClient && s.dst.Port() == 8081:
				if s.probe != nil {
					bad = append(bad, fmt.Sprintf("a client pod's drop marked %+v %q", s.probe, s.text))
				}
				tl.clientDrops += s.count
			case s.typ == "drop" && s.src.Port() == 8084 && s.dst.Addr() == netip.MustParseAddr(probeNode):
				if s.probe != nil {
					bad = append(bad, fmt.Sprintf("the app's answer after a successful probe (%s) marked %+v %q", s.reason, s.probe, s.text))
				}
				tl.afterProbe += s.count
			default:
				if s.probe != nil {
					bad = append(bad, fmt.Sprintf("%s %s %v -> %v marked %+v", s.typ, s.reason, s.src, s.dst, s.probe))
				}
				tl.wrong += s.count
			}
		}
		return tl, bad
	}
	// The kernel's count of the REJECT's ICMP errors, while the client's
	// connects go on (they draw resets, not ICMP errors).
	after := pod.Counters(t)
	icmpSent := after["IcmpOutDestUnreachs"] - before["IcmpOutDestUnreachs"]
	var tl tally
	var bad []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		tl, bad = sumUp()
		if tl.livenessDrops == liveness && tl.readinessDrops == uint64(connect8083) && tl.readinessUnreach == icmpSent && tl.unprobedDrops == unprobed &&
			tl.afterProbe >= started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %+v; want %d liveness drops, %d readiness drops, %d port-unreachables (the kernel's IcmpOutDestUnreachs), %d drops on :8082, %d greetings dropped after the probe",
				tl, liveness, connect8083, icmpSent, unprobed, started)
		}
	}
	for _, b := range bad {
		t.Error(b)
	}
	if icmpSent == 0 {
		t.Errorf("no ICMP error sent for the readiness port: the unreachable path was not exercised")
	}
	if tl.clientDrops == 0 {
		t.Errorf("the client pod's connects drew no drops (%d refused so far): the unmarked path was not exercised", clientRefused.Load())
	}
	close(clientStop)
	clientDone.Wait()
	clientStop = make(chan struct{})
	refused := clientRefused.Load()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if tl, _ = sumUp(); tl.clientDrops == refused {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("client pod: %d connects refused, %d drops seen", refused, tl.clientDrops)
			break
		}
	}
	if tl.wrong != 0 || tl.summaries != 0 {
		t.Errorf("%d other occurrences seen, %d in summaries; none expected", tl.wrong, tl.summaries)
	}
	t.Logf("marked: %d liveness NO_SOCKET, %d readiness NETFILTER_DROP, %d readiness port-unreachable (kernel: %d); unmarked: %d on :8082, %d from a client pod, %d after successful probes",
		tl.livenessDrops, tl.readinessDrops, tl.readinessUnreach, icmpSent, tl.unprobedDrops, tl.clientDrops, tl.afterProbe)
	stop()
	running = false
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
