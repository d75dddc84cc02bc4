package tracer

import (
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// Traffic a router forwards into blackhole, unreachable and prohibit routes
// (what a CNI leaves for a deleted pod's IP, a dead CIDR) is freed at
// ip_error with reason NOT_SPECIFIED (on kernels before 5.17 with none):
// shown by the default filter, which hides NOT_SPECIFIED only at
// BenignPlaces. Every packet that arrived (a raw PREROUTING counter) is
// one drop, with its destination and port.
func TestRouteDropsShown(t *testing.T) {
	r := nstest.NewRouted(t)
	kinds := map[string]string{"blackhole": "198.19.131.5", "unreachable": "198.19.132.5", "prohibit": "198.19.133.5"}
	for kind, dst := range kinds {
		r.Router.IP(t, "route add "+kind+" "+dst[:strings.LastIndex(dst, ".")]+".0/24")
	}
	r.Router.Sh(t, "iptables -t raw -A PREROUTING -d 198.19.128.0/17 -j ACCEPT")
	c := startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Drop}}})
	var rounds atomic.Uint64
	send := func() func() {
		return nstest.Paced(t, 50*time.Millisecond, func() {
			for _, dst := range kinds {
				r.Client.SendUDP(t, dst, 9, 1)
			}
			rounds.Add(1)
		})
	}
	noReasons := c.tr.Reasons.Len() == 0
	atIPError := func(e *Event) bool {
		return (e.Reason == "NOT_SPECIFIED" || noReasons) && strings.HasPrefix(e.Location, "ip_error+") &&
			strings.HasPrefix(e.Dst.Addr().String(), "198.19.13") && e.Proto == unix.IPPROTO_UDP
	}
	// every packet that arrived (the raw PREROUTING counter) is one drop
	evs, n := underLoad(t, c, "drops at ip_error", 3*time.Second, 2*time.Second, send, atIPError, func() uint64 {
		return r.Router.IptablesPackets(t, "iptables -t raw", "PREROUTING", "ACCEPT", "")
	})
	if sent := 3 * rounds.Load(); n < sent {
		t.Fatalf("%d drops at ip_error for %d datagrams sent\n%s", n, sent, dump(evs))
	}
	_, got := sum(evs, atIPError)
	for _, e := range got {
		if !e.Summary && e.Dst.Port() != 9 {
			t.Errorf("drop without its port:\n%s", dump([]Event{e}))
		}
	}
}

// NOT_SPECIFIED frees at a benign place (ip6_mc_input: multicast for a
// group the host has not joined) and of frames that came as link-layer
// multicast or broadcast (a joined group or the subnet's broadcast with no
// socket on the port: mDNS, SSDP, DHCP) are hidden by default and shown
// with IncludeBenign, on the same traffic.
func TestBenignPlaceHidden(t *testing.T) {
	r := nstest.NewRouted(t)
	send := func() {
		r.Client.In(t, func() {
			ifs, err := net.Interfaces()
			if err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			fd4, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd4)
			unix.SetsockoptInt(fd4, unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
			for _, ifc := range ifs {
				if ifc.Flags&net.FlagLoopback != 0 {
					continue
				}
				for i := 0; i < 5; i++ {
					// a group joined by no one (ip6_mc_input), all-nodes
					// (joined: no socket on the port), mDNS, the subnet's
					// broadcast
					for _, g := range []string{"ff02::4b:6472", "ff02::1"} {
						sa := &unix.SockaddrInet6{Addr: netip.MustParseAddr(g).As16(), Port: 5003, ZoneId: uint32(ifc.Index)}
						if err := unix.Sendto(fd, []byte("kdrop"), 0, sa); err != nil {
							t.Fatalf("multicast send to %s on %s: %v", g, ifc.Name, err)
						}
					}
					for _, d := range [][4]byte{{224, 0, 0, 251}, {198, 18, 1, 255}} {
						if err := unix.Sendto(fd4, []byte("kdrop"), 0, &unix.SockaddrInet4{Addr: d, Port: 5353}); err != nil {
							t.Fatalf("send to %v: %v", d, err)
						}
					}
				}
			}
		})
	}
	at := func(evs []Event) uint64 {
		n, _ := sum(evs, func(e *Event) bool { return e.Reason == "NOT_SPECIFIED" || e.Reason == "unknown" })
		return n
	}
	c := startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Drop}}})
	send()
	if evs := c.stop(t); at(evs) != 0 {
		t.Errorf("default filter: %d NOT_SPECIFIED frees of link multicast and broadcast shown, want none\n%s", at(evs), dump(evs))
	}
	c = startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Drop}, IncludeBenign: true}})
	send()
	if n := at(c.stop(t)); n < 20 {
		t.Errorf("IncludeBenign: %d NOT_SPECIFIED frees shown, want at least the 20 sent", n)
	}
}
