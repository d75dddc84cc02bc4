package tracer

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// padOpts is an 8-byte hop-by-hop or destination options header holding
// only a PadN option (RFC 8200 4.2); the kernel fills in its next header.
var padOpts = []byte{0, 0, 1, 4, 0, 0, 0, 0}

// IPv6 behind extension headers: UDP and TCP to closed ports carried behind
// hop-by-hop and destination options headers, and UDP behind an atomic
// fragment header (offset 0, no more fragments: RFC 8200 4.5, processed as
// a whole packet). Every drop is NO_SOCKET with its protocol and ports, so
// the tracer's port filter finds them, and the counts equal the packets
// that arrived (ip6tables counters, which match past extension headers).
func TestIPv6ExtensionHeaders(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Server.Sh(t, "ip6tables -A INPUT -p udp --dport 9 -j ACCEPT")
	r.Server.Sh(t, "ip6tables -A INPUT -p tcp --dport 81 --syn -j ACCEPT")

	dst := netip.MustParseAddr(nstest.ServerIP6)
	// Each kind sent every 50 ms while the test looks; every packet that
	// arrived (the rule counting its port) is one NO_SOCKET drop with its
	// protocol and ports.
	check := func(c *capture, proto uint8, port uint16, loc string, send func()) {
		match := isDrop("NO_SOCKET", loc, c.tr.Reasons)
		keep := func(e *Event) bool {
			return match(e) && e.Proto == proto && e.Dst.Port() == port && e.Dst.Addr() == dst
		}
		what := "NO_SOCKET to port " + strconv.Itoa(int(port)) + " behind extension headers"
		evs, _ := underLoad(t, c, what, 3*time.Second, 2*time.Second, func() func() { return nstest.Paced(t, 50*time.Millisecond, send) },
			keep, func() uint64 { return ip6tablesByPort(t, r.Server)[port] })
		_, got := sum(evs, keep)
		for _, e := range got {
			if !e.Summary && (e.Src.Port() == 0 || e.Netns != r.Server.Inode) {
				t.Errorf("fields wrong:\n%s", dump([]Event{e}))
			}
		}
	}

	// UDP, with the tracer's port filter on: the kernel-side filter reads
	// the port the parser found behind the headers.
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}, Port: 9}})
	check(c, unix.IPPROTO_UDP, 9, "__udp6_lib_rcv", func() {
		r.Client.In(t, func() {
			for _, opt := range []int{unix.IPV6_HOPOPTS, unix.IPV6_DSTOPTS} {
				fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, opt, string(padOpts)); err != nil {
					t.Fatalf("setsockopt IPv6 option header %d: %v", opt, err)
				}
				if err := unix.Sendto(fd, []byte("kdrop"), 0, &unix.SockaddrInet6{Addr: dst.As16(), Port: 9}); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
					t.Fatalf("send to [%s]:9: %v", dst, err)
				}
				unix.Close(fd)
			}
			sendAtomicFragments(t, netip.MustParseAddr(nstest.ClientIP6), dst, 9, 1)
		})
	})

	// TCP behind a destination options header.
	c = startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}, Port: 81}})
	check(c, unix.IPPROTO_TCP, 81, "tcp_v6_rcv", func() {
		var err error
		r.Client.In(t, func() { err = connectWithDstOpts(dst, 81) })
		if !errors.Is(err, unix.ECONNREFUSED) {
			t.Errorf("connect to [%s]:81 behind a destination options header: want ECONNREFUSED, got %v", dst, err)
		}
	})
}

// ip6tablesByPort reads the packet counters of the INPUT rules that name a
// destination port ("dpt:N"), by port.
func ip6tablesByPort(t *testing.T, n *nstest.NS) map[uint16]uint64 {
	out := n.Sh(t, "ip6tables -L INPUT -v -x -n")
	got := map[uint16]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		for _, w := range f {
			if p, ok := strings.CutPrefix(w, "dpt:"); ok && len(f) > 0 {
				port, _ := strconv.ParseUint(p, 10, 16)
				v, _ := strconv.ParseUint(f[0], 10, 64)
				got[uint16(port)] += v
			}
		}
	}
	return got
}

// connectWithDstOpts connects over TCP with a destination options header
// on every packet (a sticky option set before connect).
func connectWithDstOpts(dst netip.Addr, port int) error {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string(padOpts)); err != nil {
		return err
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return unix.Connect(fd, &unix.SockaddrInet6{Addr: dst.As16(), Port: port})
}

// sendAtomicFragments sends n UDP datagrams to dst:port, each behind a
// fragment header with offset 0 and no more fragments.
func sendAtomicFragments(t *testing.T, src, dst netip.Addr, port uint16, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		frag := []byte{unix.IPPROTO_UDP, 0, 0, 0, 0, 0, 0, byte(i + 1)} // offset 0, M=0, id i+1
		sendRaw6(t, src, dst, 44, frag, udp6(src, dst, port))
	}
}

// udp6Checksum is UDP's checksum over the IPv6 pseudo-header (RFC 8200
// 8.1), where 0 is sent as 0xffff.
func udp6Checksum(src, dst netip.Addr, udp []byte) uint16 {
	if c := inetChecksum(src, dst, unix.IPPROTO_UDP, udp); c != 0 {
		return c
	}
	return 0xffff
}

// A chain of 12 destination options headers before UDP: still parsed (up
// to 16 are walked). A hop-by-hop header whose length runs past the packet
// (the kernel drops it): no ports are made up from what lies beyond.
func TestIPv6LongAndTruncatedHeaders(t *testing.T) {
	r := nstest.NewRouted(t)
	src, dst := netip.MustParseAddr(nstest.ClientIP6), netip.MustParseAddr(nstest.ServerIP6)
	// the router parses hop-by-hop options too: it drops the truncated ones
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{Drop}, CIDRs: []netip.Prefix{netip.PrefixFrom(src, 128)}}})
	const n = 3
	r.Client.In(t, func() {
		var chain []byte
		for i := 0; i < 12; i++ {
			next := byte(60)
			if i == 11 {
				next = unix.IPPROTO_UDP
			}
			chain = append(chain, next, 0, 1, 4, 0, 0, 0, 0)
		}
		for i := 0; i < n; i++ {
			sendRaw6(t, src, dst, 60, chain, udp6(src, dst, 9))
		}
		// hop-by-hop claiming (255+1)*8 bytes, in a packet of 8
		for i := 0; i < n; i++ {
			sendRaw6(t, src, dst, 0, []byte{unix.IPPROTO_UDP, 255, 1, 4, 0, 0, 0, 0}, nil)
		}
	})
	evs := c.stop(t)
	long, _ := sum(evs, func(e *Event) bool { return e.Proto == unix.IPPROTO_UDP && e.Dst.Port() == 9 && e.Dst.Addr() == dst })
	if long != n {
		t.Errorf("12 headers: want %d drops with UDP port 9, got %d\n%s", n, long, dump(evs))
	}
	_, bad := sum(evs, func(e *Event) bool {
		return e.Src.Addr() == src && e.Dst.Port() != 0 && e.Dst.Port() != 9
	})
	if len(bad) > 0 {
		t.Errorf("ports made up from beyond a truncated header:\n%s", dump(bad))
	}
	if trunc, _ := sum(evs, func(e *Event) bool { return e.Src.Addr() == src && e.Dst.Port() == 0 }); trunc < n {
		t.Errorf("want the %d truncated packets' drops (without ports), got %d\n%s", n, trunc, dump(evs))
	}
}

// udp6 is a UDP header and payload from sport 40000 to port, checksummed.
func udp6(src, dst netip.Addr, port uint16) []byte {
	payload := []byte("kdrop")
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	binary.BigEndian.PutUint16(udp[6:], udp6Checksum(src, dst, udp))
	return udp
}

// sendRaw6 sends one IPv6 packet: the fixed header (next header nh), then
// ext and rest, through a raw socket that writes the whole packet.
func sendRaw6(t *testing.T, src, dst netip.Addr, nh byte, ext, rest []byte) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		t.Fatalf("raw IPv6 socket: %v", err)
	}
	defer unix.Close(fd)
	pkt := make([]byte, 40)
	pkt[0] = 6 << 4
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(ext)+len(rest)))
	pkt[6], pkt[7] = nh, 64
	s, d := src.As16(), dst.As16()
	copy(pkt[8:], s[:])
	copy(pkt[24:], d[:])
	pkt = append(append(pkt, ext...), rest...)
	if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet6{Addr: d}); err != nil {
		t.Fatalf("raw IPv6 send: %v", err)
	}
}

// A packet shorter than its own header says, or than a header needs, gives
// no ports: an IPv4 UDP datagram of 2 bytes (total length 22) in a frame
// padded with 0xaa bytes, as Ethernet pads short frames. The kernel trims
// the padding and drops the datagram as too short (UdpInErrors); the bytes
// past its end are padding, never ports (dport 0xaaaa before).
func TestShortIPv4NoPortsMadeUp(t *testing.T) {
	a, b := nstest.New(t, "sha"), nstest.New(t, "shb")
	l := newRawLink(t, a, "198.18.51.1/24", b, "198.18.51.2/24")
	ip := []byte{0x45, 0, 0, 22, 0, 1, 0, 0, 64, unix.IPPROTO_UDP, 0, 0, 198, 18, 51, 1, 198, 18, 51, 2}
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(ip))
	frame := l.frame(0x0800, append(ip, 0x9c, 0x40)) // 2 bytes of UDP: a source port, no more
	for len(frame) < 60 {
		frame = append(frame, 0xaa)
	}
	c := startTracer(t, Options{Filter: Filter{Netns: b.Inode, Types: []EventType{Drop}}, RateLimit: 1000})
	var sent atomic.Uint64
	send := func() func() {
		return nstest.Paced(t, 20*time.Millisecond, func() { l.send(t, frame, &sent) })
	}
	mineOnly := func(e *Event) bool { return e.Dst.Addr().String() == "198.18.51.2" }
	evs, got := underLoad(t, c, "UdpInErrors", 3*time.Second, 2*time.Second, send, mineOnly, counters(t, b, "UdpInErrors"))
	if got != sent.Load() {
		t.Fatalf("%d drops for %d short datagrams sent\n%s", got, sent.Load(), dump(evs))
	}
	_, mine := sum(evs, mineOnly)
	for _, e := range mine {
		if e.Proto != unix.IPPROTO_UDP || e.Src.Port() != 0 || e.Dst.Port() != 0 {
			t.Fatalf("a 2-byte UDP datagram's drop carries ports read past its end:\n%s", dump([]Event{e}))
		}
	}
}

// An IPv4 header whose IHL says less than its 20-byte minimum (ip_rcv_core
// drops it, IpInHdrErrors) gives addresses but no ports: the bytes its IHL
// points at are its own addresses (adversary #14: ports 50706 -> 13058 were
// made up of 198.18.51.2).
func TestIPv4HeaderTooShortNoPorts(t *testing.T) {
	a, b := nstest.New(t, "iha"), nstest.New(t, "ihb")
	l := newRawLink(t, a, "198.18.52.1/24", b, "198.18.52.2/24")
	ip := []byte{0x44, 0, 0, 28, 0, 1, 0, 0, 64, unix.IPPROTO_UDP, 0, 0, 198, 18, 52, 1, 198, 18, 52, 2,
		0x9c, 0x40, 0, 9, 0, 8, 0, 0}
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(ip[:20]))
	frame := l.frame(0x0800, ip)
	for len(frame) < 60 {
		frame = append(frame, 0)
	}
	c := startTracer(t, Options{Filter: Filter{Netns: b.Inode, Types: []EventType{Drop}}, RateLimit: 1000})
	var sent atomic.Uint64
	send := func() func() {
		return nstest.Paced(t, 20*time.Millisecond, func() { l.send(t, frame, &sent) })
	}
	mineOnly := func(e *Event) bool { return e.Dst.Addr().String() == "198.18.52.2" }
	evs, got := underLoad(t, c, "IpInHdrErrors", 3*time.Second, 2*time.Second, send, mineOnly, counters(t, b, "IpInHdrErrors"))
	if got != sent.Load() {
		t.Fatalf("%d drops for %d packets sent\n%s", got, sent.Load(), dump(evs))
	}
	_, mine := sum(evs, mineOnly)
	for _, e := range mine {
		if e.Src.Addr().String() != "198.18.52.1" || e.Src.Port() != 0 || e.Dst.Port() != 0 {
			t.Fatalf("an IHL-4 header's drop carries made-up ports (or lost its addresses):\n%s", dump([]Event{e}))
		}
	}
}
