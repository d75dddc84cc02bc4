package enrich

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
)

// Kubelet probes.
//
// The kubelet probes a pod from the node's own network namespace: it
// connects to the pod's IP on the probed port, from whichever address of
// the host the route to the pod picks (with a CNI bridge, the bridge's
// own address, which the API server knows nothing of). So an event's flow
// is a probe when one end is a pod of this node on a port its spec probes
// (k8s.Endpoint.ProbeOn) and the other end is an address of the host's
// network namespace (HostAddrs) or a node IP the resolver knows. What
// goes from the node to the pod counts: the SYN the pod drops (NO_SOCKET:
// nothing listens, it answers with a reset), an ICMP error about it, a
// firewall's drop. From the pod to the node only its SYN-ACK does (the
// answer the probe waits for): the pod's other segments are dropped
// there mostly after the probe is over (the kubelet connects and closes
// at once; data the app writes then is TCP_ABORT_ON_DATA on the node),
// and a probe that succeeded is no probe failure.

// HostAddrs are the addresses of one network namespace (the host's: where
// the kubelet's probe connections come from), read over rtnetlink. Has
// never waits for more than one read: the addresses are read again at
// most once per refresh interval, when an address is asked for that is
// not among them (a CNI bridge that got its address after kdrop started).
type HostAddrs struct {
	h       *netlink.Handle
	addrs   atomic.Pointer[map[netip.Addr]bool]
	mu      sync.Mutex // one read at a time
	read    atomic.Int64
	refresh time.Duration
}

// NewHostAddrs reads the addresses of the network namespace at nsPath
// (e.g. /proc/1/ns/net, /run/netns/NAME; "": kdrop's own, which for the
// agent, a hostNetwork pod, is the host's). Errors: the namespace cannot
// be opened, or its addresses not read (CAP_NET_ADMIN is not needed;
// CAP_SYS_ADMIN is, for another namespace than kdrop's own).
func NewHostAddrs(nsPath string) (*HostAddrs, error) {
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle()
	} else {
		ns, oerr := netns.GetFromPath(nsPath)
		if oerr != nil {
			return nil, fmt.Errorf("host addresses: opening network namespace %s: %w", nsPath, oerr)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("host addresses: netlink socket in %q: %w", nsPath, err)
	}
	a := &HostAddrs{h: h, refresh: time.Second}
	if err := a.load(); err != nil {
		h.Close()
		return nil, err
	}
	return a, nil
}

func (a *HostAddrs) load() error {
	list, err := a.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("host addresses: listing them over rtnetlink: %w", err)
	}
	m := make(map[netip.Addr]bool, len(list))
	for _, x := range list {
		if ip, ok := netip.AddrFromSlice(x.IP); ok {
			m[ip.Unmap()] = true
		}
	}
	a.addrs.Store(&m)
	a.read.Store(time.Now().UnixNano())
	return nil
}

// Has says whether ip is an address of the namespace.
func (a *HostAddrs) Has(ip netip.Addr) bool {
	if a == nil || !ip.IsValid() {
		return false
	}
	ip = ip.Unmap().WithZone("")
	if (*a.addrs.Load())[ip] {
		return true
	}
	if time.Since(time.Unix(0, a.read.Load())) < a.refresh || !a.mu.TryLock() {
		return false
	}
	defer a.mu.Unlock()
	if a.load() != nil {
		return false
	}
	return (*a.addrs.Load())[ip]
}

// Close releases the netlink socket.
func (a *HostAddrs) Close() {
	if a != nil {
		a.h.Close()
	}
}

// MarkProbe sets ev.Probe when ev's flow is a kubelet probe connection
// (see above) on node, with host the host namespace's addresses (nil:
// only node IPs the resolver knows count as the node). It needs ev's
// identities (Enrich); without them it does nothing.
func MarkProbe(ev *line.Event, host *HostAddrs, node string) {
	ev.Probe = nil
	if ev.Proto != 6 || ev.SrcK8s == nil || ev.DstK8s == nil { // probes are TCP: tcpSocket, httpGet, grpc
		return
	}
	if p := probeOf(ev.DstK8s, ev.Dst.Port(), node); p != nil && isNode(ev.SrcK8s, ev.Src.Addr(), host) {
		ev.Probe = p
		return
	}
	if ev.TCPFlags&tcpSYN == 0 {
		return
	}
	if p := probeOf(ev.SrcK8s, ev.Src.Port(), node); p != nil && isNode(ev.DstK8s, ev.Dst.Addr(), host) {
		ev.Probe = p
	}
}

// tcpSYN is the SYN bit of tracer.Event.TCPFlags.
const tcpSYN = 0x02

// probeOf is the probe of pod e on port, if e is a pod of node (or of an
// unknown node) the kubelet probes there.
func probeOf(e *k8s.Endpoint, port uint16, node string) *k8s.Probe {
	if e.Kind != k8s.KindPod || e.HostNetwork || port == 0 || (node != "" && e.Node != "" && e.Node != node) {
		return nil
	}
	return e.ProbeOn(port)
}

// isNode says whether the end at ip (resolved to e) is the node: a node
// IP, or an address of the host's namespace that no pod has.
func isNode(e *k8s.Endpoint, ip netip.Addr, host *HostAddrs) bool {
	switch e.Kind {
	case k8s.KindNode:
		return true
	case "":
		return host.Has(ip)
	}
	return false
}
