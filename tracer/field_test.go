package tracer

// Field scenarios (issue #14): drops kdrop already matches the kernel's
// counters for, kept as regression tests. Each runs its traffic while the
// test looks (underLoad), and kdrop's count must equal the kernel
// counter's delta.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// underLoad runs a scenario's traffic (start starts it and returns its
// stop) for d while it looks: every 500 ms it reads what the stream has
// counted (keep), then the kernel's counter. The stream may never count
// more than the kernel has, nor (when lag is set) trail what the kernel had
// counted lag before (summaries come every sweep, not when the traffic
// stops). Then the traffic stops and, once it settled and the tracer
// stopped, the stream's count must equal the counter's delta, and be more
// than none.
func underLoad(t *testing.T, c *capture, what string, d, lag time.Duration, start func() (stop func()), keep func(*Event) bool, counter func() uint64) (evs []Event, n uint64) {
	t.Helper()
	evs, ns := underLoadEach(t, c, d, lag, start, loadCheck{what: what, keep: keep, counter: counter})
	return evs, ns[0]
}

// loadCheck is one count underLoadEach compares while the traffic runs:
// the events keep matches against counter's delta. agree, when set,
// replaces equality (at the end, and for the lag check while it runs).
type loadCheck struct {
	what    string
	keep    func(*Event) bool
	counter func() uint64
	agree   func(got, want uint64) bool
}

// underLoadEach is underLoad for several counts over the same traffic (a
// counter per family, or a drop and the answer it caused), each sampled
// and checked as underLoad checks its one; ns[i] is checks[i]'s count.
func underLoadEach(t *testing.T, c *capture, d, lag time.Duration, start func() (stop func()), checks ...loadCheck) (evs []Event, ns []uint64) {
	t.Helper()
	type sample struct {
		streamAt, kernelAt time.Time
		stream, kernel     uint64
	}
	samples := make([][]sample, len(checks))
	agree := func(ck loadCheck, got, want uint64) bool {
		if ck.agree != nil {
			return ck.agree(got, want)
		}
		return got == want
	}
	for wait := time.Now(); c.tr.Sweeps() == 0; time.Sleep(10 * time.Millisecond) { // Run is under way
		if time.Since(wait) > 10*time.Second {
			t.Fatalf("%s: the tracer did not sweep within 10 s", checks[0].what)
		}
	}
	base := make([]uint64, len(checks))
	for i, ck := range checks {
		base[i] = ck.counter()
	}
	stop := start()
	begin := time.Now()
	for time.Since(begin) < d || len(samples[0]) < 4 { // counters read slowly under emulation
		time.Sleep(500 * time.Millisecond)
		for i, ck := range checks {
			var s sample
			s.stream, _, _ = c.snapshot(ck.keep)
			s.streamAt = time.Now()
			s.kernel = ck.counter() - base[i]
			s.kernelAt = time.Now()
			if s.stream > s.kernel {
				t.Errorf("%s: t+%v: the stream counts %d, more than the kernel's %d", ck.what, s.streamAt.Sub(begin).Round(time.Millisecond), s.stream, s.kernel)
			}
			for _, p := range samples[i] {
				if s.streamAt.Sub(p.kernelAt) >= max(lag, 2*time.Second) && s.stream < p.kernel && !agree(ck, s.stream, p.kernel) {
					report := t.Errorf
					if lag == 0 {
						report = t.Logf
					}
					report("%s: t+%v: the stream counts %d, but the kernel had counted %d %v before", ck.what, s.streamAt.Sub(begin).Round(time.Millisecond), s.stream, p.kernel, s.streamAt.Sub(p.kernelAt).Round(time.Millisecond))
					break
				}
			}
			samples[i] = append(samples[i], s)
		}
	}
	stop()
	// What the load left in flight (a retransmission due, a segment the
	// closes sent) is counted on both sides before the tracer stops: the
	// kernel's counters still for 300 ms, at most 10 s.
	read := func() []uint64 {
		v := make([]uint64, len(checks))
		for i, ck := range checks {
			v[i] = ck.counter() - base[i]
		}
		return v
	}
	settled := read()
	for since := time.Now(); ; {
		time.Sleep(300 * time.Millisecond)
		v := read()
		if slices.Equal(v, settled) {
			break
		}
		settled = v
		if time.Since(since) > 10*time.Second {
			t.Logf("%s: the kernel's counters still moved 10 s after the load stopped", checks[0].what)
			break
		}
	}
	evs = c.stop(t)
	for i, ck := range checks {
		// kdrop counts until it stops: at least what the kernel had
		// counted before, at most what it counted by the time it stopped.
		before, want := settled[i], ck.counter()-base[i]
		n, matched := sum(evs, ck.keep)
		summaries, _ := sum(matched, func(e *Event) bool { return e.Summary })
		t.Logf("%s: kernel +%d, kdrop %d in %d lines (%d in summaries); %d samples while the traffic ran", ck.what, want, n, len(matched), summaries, len(samples[i]))
		if before != want {
			t.Logf("%s: the kernel counted %d more while the tracer stopped", ck.what, want-before)
		}
		if want == 0 || !(agree(ck, n, want) || agree(ck, n, before) || (n >= before && n <= want)) {
			for _, s := range samples[i] {
				t.Logf("%s: t+%v: stream %d, kernel %d", ck.what, s.streamAt.Sub(begin).Round(time.Millisecond), s.stream, s.kernel)
			}
			st, err := c.tr.Stats()
			t.Logf("%s: tracer stats %+v (%v)", ck.what, st, err)
			t.Errorf("%s: the kernel counted %d, kdrop %d\n%s", ck.what, want, n, dump(evs))
		}
		ns = append(ns, n)
	}
	return evs, ns
}

// counters reads named counters of a namespace (nstat names) and sums them.
func counters(t *testing.T, ns *nstest.NS, names ...string) func() uint64 {
	return func() uint64 {
		m := ns.Counters(t)
		var n uint64
		for _, name := range names {
			n += m[name]
		}
		return n
	}
}

// reasonIs matches drops with this reason, or, on kernels that name none
// (before 5.17), any drop ("unknown"): callers narrow by place.
func reasonIs(c *capture, e *Event, reason string) bool {
	if c.tr.Reasons.Len() == 0 {
		return e.Reason == reasonUnknown
	}
	return e.Reason == reason
}

// The socket's reader is too slow: a UDP server (IPv4 and IPv6) with a
// small receive buffer, read 100 times a second, under a flood. Each
// datagram that finds the buffer full is a SOCKET_RCVBUFF drop, counted
// as UdpRcvbufErrors / Udp6RcvbufErrors.
func TestUDPReceiveBufferOverflow(t *testing.T) {
	cli, srv := nstest.New(t, "cli"), nstest.New(t, "srv")
	nstest.Veth(t, cli, "198.18.60.1/24", "fd00:60::1/64", srv, "198.18.60.2/24", "fd00:60::2/64")
	socks := []*nstest.Sockets{srv.ListenUDP(t, "198.18.60.2", 5300, 4096), srv.ListenUDP(t, "fd00:60::2", 5306, 4096)}
	buf := make([]byte, 2048)
	stopReader := nstest.Paced(t, 10*time.Millisecond, func() {
		for _, s := range socks {
			unix.Recvfrom(s.FDs[0], buf, unix.MSG_DONTWAIT)
		}
	})
	// each subtest's tracer stops before the reader and the sockets (their
	// queues are freed at close)
	t.Cleanup(stopReader)
	for _, fam := range []struct {
		dst     string
		port    int
		counter string
	}{{"198.18.60.2", 5300, "UdpRcvbufErrors"}, {"fd00:60::2", 5306, "Udp6RcvbufErrors"}} {
		t.Run(fam.counter, func(t *testing.T) {
			c := startTracer(t, Options{Filter: Filter{Netns: srv.Inode, Types: []EventType{Drop}}, RateLimit: 100})
			keep := func(e *Event) bool {
				return e.Type == Drop && reasonIs(c, e, "SOCKET_RCVBUFF") && e.Proto == unix.IPPROTO_UDP &&
					e.Dst.Addr().String() == fam.dst && e.Dst.Port() == uint16(fam.port)
			}
			flood := func() func() {
				stop := cli.Flood(t, fam.dst, []int{fam.port})
				return func() { stop() }
			}
			evs, _ := underLoad(t, c, fam.counter, 3*time.Second, 2*time.Second, flood, keep, counters(t, srv, fam.counter))
			_, got := sum(evs, keep)
			for _, e := range got {
				if !e.Summary && (e.Src.Port() == 0 || e.Netns != srv.Inode || e.Ifindex == 0) {
					t.Errorf("fields wrong:\n%s", dump([]Event{e}))
				}
			}
		})
	}
}

// Strict reverse-path filtering (rp_filter=1) on a multi-homed node: the
// peer's network is routed over link 1, but the peer sends over link 2.
// Each packet is an IP_RPFILTER drop, counted as IPReversePathFilter.
func TestRPFilterMultiHomed(t *testing.T) {
	node, peer := nstest.New(t, "mh"), nstest.New(t, "peer")
	nstest.Veth(t, node, "198.18.30.1/24", "", peer, "198.18.30.2/24", "")
	nodeDev2, peerDev2 := nstest.Veth(t, node, "198.18.31.1/24", "", peer, "198.18.31.2/24", "")
	node.IP(t, "route add 198.18.40.0/24 via 198.18.30.2")
	node.Sysctl(t, "net.ipv4.conf.all.rp_filter", "1", "net.ipv4.conf."+nodeDev2+".rp_filter", "1")
	// The peer sends from its address on 198.18.40.0/24 over link 2, and
	// asks ARP from its link-2 address (arp_announce 2), which the node's
	// filter accepts.
	peer.IP(t, "addr add 198.18.40.2/32 dev lo")
	peer.IP(t, "route replace 198.18.31.0/24 dev "+peerDev2+" src 198.18.40.2")
	peer.Sysctl(t, "net.ipv4.conf."+peerDev2+".arp_announce", "2")
	c := startTracer(t, Options{Filter: Filter{Netns: node.Inode, Types: []EventType{Drop}}, RateLimit: 100})
	keep := func(e *Event) bool {
		return e.Type == Drop && reasonIs(c, e, "IP_RPFILTER") && e.Dst.Addr().String() == "198.18.31.1"
	}
	flood := func() func() {
		stop := peer.Flood(t, "198.18.31.1", []int{9, 10})
		return func() { stop() }
	}
	evs, _ := underLoad(t, c, "IPReversePathFilter", 3*time.Second, 2*time.Second, flood, keep, counters(t, node, "TcpExtIPReversePathFilter"))
	_, got := sum(evs, keep)
	for _, e := range got {
		if !e.Summary && (e.Src.Addr().String() != "198.18.40.2" || e.Proto != unix.IPPROTO_UDP || e.Netns != node.Inode) {
			t.Errorf("fields wrong:\n%s", dump([]Event{e}))
		}
	}
}

// PAWS in TIME_WAIT: a server closed a connection first and holds it in
// TIME_WAIT; SYNs for the same ports come with an older TCP timestamp (a
// second client behind the same NAT address, with its own clock). The
// server rejects each (PAWS) and drops it: TCP_RFC7323_TW_PAWS where the
// kernel names it, counted as PAWSTimewait (PAWSEstab on kernels without
// that counter).
func TestPAWSInTimeWait(t *testing.T) {
	cli, srv := nstest.New(t, "cli"), nstest.New(t, "srv")
	nstest.Veth(t, cli, "198.18.61.1/24", "fd00:61::1/64", srv, "198.18.61.2/24", "fd00:61::2/64")
	type end struct {
		src, dst netip.Addr
		tsval    uint32 // older than the connection's last timestamp
		fd       int    // raw socket
	}
	var ends []*end
	for _, a := range [][2]string{{"198.18.61.1", "198.18.61.2"}, {"fd00:61::1", "fd00:61::2"}} {
		e := &end{src: netip.MustParseAddr(a[0]), dst: netip.MustParseAddr(a[1])}
		e.tsval = timeWait(t, cli, srv, e.src, e.dst) - 1<<20
		cli.In(t, func() {
			fam := unix.AF_INET
			if e.dst.Is6() {
				fam = unix.AF_INET6
			}
			fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Close(fd) })
			e.fd = fd
		})
		ends = append(ends, e)
	}
	// The server's challenge ACKs to the SYNs below are dropped at the
	// client: its kernel would answer them with a reset, ending TIME_WAIT.
	cli.Sh(t, "iptables -A INPUT -p tcp --sport 80 --dport 40000 -j DROP")
	cli.Sh(t, "ip6tables -A INPUT -p tcp --sport 80 --dport 40000 -j DROP")
	c := startTracer(t, Options{Filter: Filter{Netns: srv.Inode, Types: []EventType{Drop}}, RateLimit: 100})
	reason := "TCP_RFC7323_TW_PAWS"
	if _, ok := c.tr.Reasons.Lookup(reason); !ok {
		reason = "NOT_SPECIFIED" // tcp_v4_rcv and tcp_v6_rcv drop it without a reason
		if c.tr.Reasons.Len() == 0 {
			reason = reasonUnknown
		}
	}
	counter := "TcpExtPAWSTimewait"
	if _, ok := srv.Counters(t)[counter]; !ok {
		counter = "TcpExtPAWSEstab" // where TIME_WAIT's rejects are counted before PAWSTimewait
	}
	t.Logf("kernel names the drop %s, counts it as %s", reason, counter)
	keep := func(e *Event) bool {
		return e.Type == Drop && reasonIs(c, e, reason) && e.Proto == unix.IPPROTO_TCP && e.Dst.Port() == 80
	}
	var seq uint32
	send := func() {
		for _, e := range ends {
			seq += 7919
			seg := tsSYN(e.src, e.dst, seq, e.tsval)
			var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: e.dst.As16()}
			if e.dst.Is4() {
				sa = &unix.SockaddrInet4{Addr: e.dst.As4()}
			}
			if err := unix.Sendto(e.fd, seg, 0, sa); err != nil {
				t.Errorf("raw SYN to %s: %v", e.dst, err)
			}
		}
	}
	evs, _ := underLoad(t, c, counter, 3*time.Second, 2*time.Second, func() func() { return nstest.Paced(t, 5*time.Millisecond, send) }, keep, counters(t, srv, counter))
	_, got := sum(evs, keep)
	for _, e := range got {
		if !e.Summary && (e.Src.Port() != 40000 || TCPFlagString(e.TCPFlags) != "SYN" || e.Netns != srv.Inode) {
			t.Errorf("fields wrong:\n%s", dump([]Event{e}))
		}
	}
	for _, fam := range []uint8{4, 6} {
		if n, _ := sum(got, func(e *Event) bool { return e.Family == fam }); n == 0 {
			t.Errorf("no PAWS drop over IPv%d", fam)
		}
	}
}

// timeWait opens a connection from src:40000 to dst:80 that the server
// closes first, so that the server holds it in TIME_WAIT, and returns the
// client's TCP timestamp clock at the end (getsockopt TCP_TIMESTAMP).
func timeWait(t *testing.T, cli, srv *nstest.NS, src, dst netip.Addr) uint32 {
	t.Helper()
	var ln net.Listener
	srv.In(t, func() {
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 80).String()); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			err = conn.Close() // the server closes first
		}
		accepted <- err
	}()
	var conn net.Conn
	cli.In(t, func() {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 40000)), Timeout: 10 * time.Second}
		var err error
		if conn, err = d.Dial("tcp", netip.AddrPortFrom(dst, 80).String()); err != nil {
			t.Fatal(err)
		}
	})
	defer conn.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("want the server's FIN, got %v", err)
	}
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ts int
	var serr error
	raw.Control(func(fd uintptr) { ts, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_TIMESTAMP) })
	if serr != nil {
		t.Fatalf("getsockopt TCP_TIMESTAMP: %v", serr)
	}
	conn.Close() // the client's FIN: the server goes to TIME_WAIT
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(srv.Sh(t, "ss -Htan state time-wait"), netip.AddrPortFrom(src, 40000).String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no TIME_WAIT for %s in the server:\n%s", src, srv.Sh(t, "ss -tan"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return uint32(ts)
}

// tsSYN is a TCP SYN from port 40000 to port 80 with a timestamp option
// (RFC 7323), checksummed.
func tsSYN(src, dst netip.Addr, seq, tsval uint32) []byte {
	h := make([]byte, 32)
	binary.BigEndian.PutUint16(h[0:], 40000)
	binary.BigEndian.PutUint16(h[2:], 80)
	binary.BigEndian.PutUint32(h[4:], seq)
	h[12] = 8 << 4 // 32 bytes
	h[13] = 0x02   // SYN
	binary.BigEndian.PutUint16(h[14:], 64240)
	copy(h[20:], []byte{1, 1, 8, 10}) // NOP, NOP, timestamps
	binary.BigEndian.PutUint32(h[24:], tsval)
	binary.BigEndian.PutUint16(h[16:], inetChecksum(src, dst, unix.IPPROTO_TCP, h))
	return h
}

// onesSum is the one's complement sum of b's 16-bit words (RFC 1071).
func onesSum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// inetChecksum is a transport segment's checksum under its IPv4 or IPv6
// pseudo-header (RFC 793, RFC 8200 8.1: for a segment under 64 KiB both
// sum alike).
func inetChecksum(src, dst netip.Addr, proto uint8, seg []byte) uint16 {
	b := append(src.AsSlice(), dst.AsSlice()...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(seg)))
	b = append(b, 0, 0, 0, proto)
	return ^onesSum(append(b, seg...))
}

// vxlanPair is two namespaces joined by a veth (198.18.20.0/24) and, over
// it, a VXLAN device kdvx0 each (VNI 42, port 4789) holding
// 198.18.21.1/24 and fd00:21::1/64 in a, .2 and ::2 in b.
func vxlanPair(t *testing.T) (a, b *nstest.NS) {
	t.Helper()
	a, b = nstest.New(t, "vxa"), nstest.New(t, "vxb")
	nstest.Veth(t, a, "198.18.20.1/24", "", b, "198.18.20.2/24", "")
	for i, x := range []struct{ ns, peer *nstest.NS }{{a, b}, {b, a}} {
		local, remote := fmt.Sprintf("198.18.20.%d", i+1), fmt.Sprintf("198.18.20.%d", 2-i)
		if out, err := exec.Command("ip", "-n", x.ns.Name, "link", "add", "kdvx0", "type", "vxlan", "id", "42", "local", local,
			"remote", remote, "dstport", "4789", "srcport", "768", "1024").CombinedOutput(); err != nil {
			if strings.Contains(string(out), "Unknown device type") {
				t.Skipf("this kernel has no vxlan driver: %s", out) // the case cannot arise
			}
			t.Fatalf("ip link add type vxlan: %v\n%s", err, out)
		}
		x.ns.IP(t, fmt.Sprintf("addr add 198.18.21.%d/24 dev kdvx0", i+1))
		x.ns.IP(t, fmt.Sprintf("addr add fd00:21::%d/64 dev kdvx0 nodad", i+1))
		x.ns.IP(t, "link set kdvx0 up")
	}
	return a, b
}

// Drops of the inner packet after VXLAN decapsulation carry the inner
// packet's addresses and ports, never the outer UDP's (port 4789): UDP to
// closed inner ports (IPv4 and IPv6 inside IPv4), each a NO_SOCKET drop on
// the VXLAN device, counted as UdpNoPorts / Udp6NoPorts.
func TestVXLANInnerTuple(t *testing.T) {
	a, b := vxlanPair(t)
	vx := b.Link(t, "kdvx0").Ifindex
	for _, fam := range []struct{ dst, src, counter string }{{"198.18.21.2", "198.18.21.1", "UdpNoPorts"}, {"fd00:21::2", "fd00:21::1", "Udp6NoPorts"}} {
		t.Run(fam.counter, func(t *testing.T) {
			c := startTracer(t, Options{Filter: Filter{Netns: b.Inode, Types: []EventType{Drop}}, RateLimit: 100})
			keep := func(e *Event) bool {
				return e.Type == Drop && reasonIs(c, e, "NO_SOCKET") && e.Proto == unix.IPPROTO_UDP && e.Dst.Addr().String() == fam.dst
			}
			flood := func() func() {
				stop := a.Flood(t, fam.dst, []int{7, 8})
				return func() { stop() }
			}
			evs, _ := underLoad(t, c, fam.counter, 3*time.Second, 2*time.Second, flood, keep, counters(t, b, fam.counter))
			_, got := sum(evs, keep)
			for _, e := range got {
				if (e.Dst.Port() != 7 && e.Dst.Port() != 8) || !e.Summary && (e.Src.Addr().String() != fam.src || e.Src.Port() == 0 || e.Ifindex != vx) {
					t.Errorf("want the inner tuple %s -> %s:7,8 on the VXLAN device (ifindex %d):\n%s", fam.src, fam.dst, vx, dump([]Event{e}))
				}
			}
			if _, outer := sum(evs, func(e *Event) bool {
				return e.Dst.Port() == 4789 || strings.HasPrefix(e.Dst.Addr().String(), "198.18.20.")
			}); len(outer) > 0 {
				t.Errorf("drops named by the outer packet:\n%s", dump(outer))
			}
		})
	}
}

// rawLink is a veth pair from a to b with an AF_PACKET socket in a that
// sends whole frames out a's end: frames the kernel's own stack never
// builds (a foreign VLAN tag, a broken IP header).
type rawLink struct {
	fd, ifindex int    // the socket and a's end
	bDev        string // b's end, its ifindex
	bIfindex    uint32
	eth         []byte // b's MAC then a's: an Ethernet header but its type
}

func newRawLink(t *testing.T, a *nstest.NS, aAddr string, b *nstest.NS, bAddr string) *rawLink {
	t.Helper()
	aDev, bDev := nstest.Veth(t, a, aAddr, "", b, bAddr, "")
	la, lb := a.Link(t, aDev), b.Link(t, bDev)
	dstMAC, err := net.ParseMAC(lb.MAC)
	if err != nil {
		t.Fatal(err)
	}
	srcMAC, _ := net.ParseMAC(la.MAC)
	l := &rawLink{ifindex: int(la.Ifindex), bDev: bDev, bIfindex: lb.Ifindex, eth: append(append([]byte{}, dstMAC...), srcMAC...)}
	a.In(t, func() {
		if l.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { unix.Close(l.fd) })
	return l
}

// frame is an Ethernet frame of type typ carrying payload.
func (l *rawLink) frame(typ uint16, payload []byte) []byte {
	return append(binary.BigEndian.AppendUint16(slices.Clone(l.eth), typ), payload...)
}

// send sends frame out a's end, counting it in sent (if set).
func (l *rawLink) send(t *testing.T, frame []byte, sent *atomic.Uint64) {
	if err := unix.Sendto(l.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: l.ifindex}); err != nil {
		t.Errorf("AF_PACKET send: %v", err)
		return
	}
	if sent != nil {
		sent.Add(1)
	}
}

// Frames with a VLAN tag the receiving host has no VLAN device for (a
// trunk's other VLANs) on a veth, sent through an AF_PACKET socket: one
// with an IPv4 packet inside, which the kernel marks for another host and
// drops as OTHERHOST (counted as the device's rx otherhost), one with an
// EtherType nothing handles, dropped as UNHANDLED_PROTO (the device's rx
// dropped). OTHERHOST is benign, so the tracer includes benign drops.
func TestForeignVLANTag(t *testing.T) {
	a, b := nstest.New(t, "vla"), nstest.New(t, "vlb")
	l := newRawLink(t, a, "198.18.50.1/24", b, "198.18.50.2/24")
	frame := func(inner uint16, payload []byte) []byte {
		tag := binary.BigEndian.AppendUint16(nil, 100)                                        // VLAN 100
		return l.frame(0x8100, append(binary.BigEndian.AppendUint16(tag, inner), payload...)) // 802.1Q
	}
	ip := []byte{0x45, 0, 0, 28, 0, 1, 0, 0, 64, unix.IPPROTO_UDP, 0, 0, 198, 18, 50, 1, 198, 18, 50, 2}
	binary.BigEndian.PutUint16(ip[10:], ^onesSum(ip))
	ip = append(ip, 0x9c, 0x40, 0, 9, 0, 8, 0, 0) // UDP 40000 -> 9
	frames := [][]byte{frame(0x0800, ip), frame(0x88b5, []byte("kdrop, local experimental EtherType"))}
	send := func() {
		for _, f := range frames {
			l.send(t, f, nil)
		}
	}
	rx := func(name string) func() uint64 { return func() uint64 { return b.Link(t, l.bDev).Stats.Rx[name] } }
	opts := Options{Filter: Filter{Netns: b.Inode, Types: []EventType{Drop}, IncludeBenign: true}, RateLimit: 100}
	for _, tc := range []struct {
		counter, reason string
		family          uint8
	}{{"dropped", "UNHANDLED_PROTO", 0}, {"otherhost", "OTHERHOST", 4}} {
		t.Run(tc.reason, func(t *testing.T) {
			if tc.counter == "otherhost" && !kernelHasMember(t, "rtnl_link_stats64", "rx_otherhost_dropped") {
				t.Skip("this kernel has no rx_otherhost_dropped counter (struct rtnl_link_stats64 in its BTF): nothing counts frames for another host")
			}
			c := startTracer(t, opts)
			keep := func(e *Event) bool {
				return e.Type == Drop && reasonIs(c, e, tc.reason) && e.Family == tc.family && (tc.family == 0 || e.Dst.Addr().String() == "198.18.50.2")
			}
			// No bound on lag: under emulation (6.12, 7) these drops'
			// events reached the stream only 4 to 8 s late, all at once,
			// while sweeps went on (an open question; counts stay exact).
			evs, _ := underLoad(t, c, "rx "+tc.counter, 3*time.Second, 0, func() func() { return nstest.Paced(t, 5*time.Millisecond, send) }, keep, rx(tc.counter))
			_, got := sum(evs, keep)
			for _, e := range got {
				if !e.Summary && e.Ifindex != l.bIfindex {
					t.Errorf("want ifindex %d (%s):\n%s", l.bIfindex, l.bDev, dump([]Event{e}))
				}
			}
		})
	}
}

// kernelHasMember says whether the running kernel's struct has a member of
// that name (its BTF): a feature probe.
func kernelHasMember(t *testing.T, strct, member string) bool {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var s *btf.Struct
	if err := spec.TypeByName(strct, &s); err != nil {
		t.Fatalf("struct %s in the kernel's BTF: %v", strct, err)
	}
	for _, m := range s.Members {
		if m.Name == member {
			return true
		}
	}
	return false
}
