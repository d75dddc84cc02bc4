package k8s

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Helpers for tests that feed the index plain structs, without informers.

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

type podOpt func(*podInfo)

func testPod(ns, name, node string, ips []string, opts ...podOpt) *podInfo {
	p := &podInfo{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(fmt.Sprintf("uid-%s-%s", ns, name))},
		node:       node,
		phase:      "Running",
		ready:      true,
		ips:        addrs(ips...),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func owned(kind, name string) podOpt {
	return func(p *podInfo) { p.ownerKind, p.ownerName = kind, name }
}

func hostNet(hostIP string, ports ...uint16) podOpt {
	return func(p *podInfo) {
		p.hostNetwork = true
		p.ips = addrs(hostIP)
		p.hostIPs = addrs(hostIP)
		p.ports = ports
	}
}

func onHost(hostIP string) podOpt {
	return func(p *podInfo) { p.hostIPs = addrs(hostIP) }
}

func phase(ph string) podOpt { return func(p *podInfo) { p.phase = corev1.PodPhase(ph) } }

func terminating() podOpt {
	return func(p *podInfo) { now := metav1.Now(); p.DeletionTimestamp = &now }
}

func testSvc(ns, name string, ips ...string) *svcInfo {
	return &svcInfo{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, ips: addrs(ips...)}
}

func testSlice(ns, svc string, eps ...sliceEndpoint) *sliceInfo {
	return &sliceInfo{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-abc"}, service: svc, endpoints: eps}
}

// newTestResolver returns a resolver without a client whose index is built
// from in, synced and healthy.
func newTestResolver(t testing.TB, in buildInput) *Resolver {
	t.Helper()
	r := newResolver(Config{Node: "node-a", DeletedWindow: 5 * time.Minute, ProcRoot: "/proc"}, zap.NewNop())
	r.snap.Store(buildSnapshot(in, time.Now()))
	r.ready.Store(true)
	r.synced.Store(true)
	return r
}

// republish rebuilds the test resolver's index from in plus its tombstones.
func republish(r *Resolver, in buildInput) {
	in.tombs, in.deadUIDs = r.tombs.snapshot()
	r.snap.Store(buildSnapshot(in, time.Now()))
}
