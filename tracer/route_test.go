package tracer

import (
	"net"
	"net/netip"
	"strings"
	"testing"

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
	const each = 10
	for _, dst := range kinds {
		r.Client.SendUDP(t, dst, 9, each)
	}
	evs := c.stop(t)
	arrived := iptablesPackets(t, r.Router, "iptables -t raw", "PREROUTING", "ACCEPT")
	noReasons := c.tr.Reasons.Len() == 0
	n, got := sum(evs, func(e *Event) bool {
		return (e.Reason == "NOT_SPECIFIED" || noReasons) && strings.HasPrefix(e.Location, "ip_error+") &&
			strings.HasPrefix(e.Dst.Addr().String(), "198.19.13") && e.Proto == unix.IPPROTO_UDP
	})
	if n != arrived || arrived < 3*each {
		t.Fatalf("want %d drops at ip_error (packets that arrived; %d sent), got %d\n%s", arrived, 3*each, n, dump(evs))
	}
	for _, e := range got {
		if !e.Summary && e.Dst.Port() != 9 {
			t.Errorf("drop without its port:\n%s", dump([]Event{e}))
		}
	}
}

// NOT_SPECIFIED frees at a benign place (ip6_mc_input: multicast for a
// group the host has not joined) are hidden by default and shown with
// IncludeBenign, on the same traffic.
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
			group := netip.MustParseAddr("ff02::4b:6472").As16() // joined by no one
			for _, ifc := range ifs {
				if ifc.Flags&net.FlagLoopback != 0 {
					continue
				}
				for i := 0; i < 5; i++ {
					if err := unix.Sendto(fd, []byte("kdrop"), 0, &unix.SockaddrInet6{Addr: group, Port: 9, ZoneId: uint32(ifc.Index)}); err != nil {
						t.Fatalf("multicast send on %s: %v", ifc.Name, err)
					}
				}
			}
		})
	}
	at := func(evs []Event) uint64 {
		n, _ := sum(evs, func(e *Event) bool { return strings.HasPrefix(e.Location, "ip6_mc_input+") })
		return n
	}
	c := startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Drop}}})
	send()
	if n := at(c.stop(t)); n != 0 {
		t.Errorf("default filter: %d frees at ip6_mc_input shown, want none", n)
	}
	c = startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Drop}, IncludeBenign: true}})
	send()
	if n := at(c.stop(t)); n < 5 {
		t.Errorf("IncludeBenign: %d frees at ip6_mc_input shown, want at least the 5 sent", n)
	}
}
