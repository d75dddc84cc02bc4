// Package nstest builds the network namespaces kdrop's tests run their
// scenarios in (ip netns + veth), opens sockets inside them and reads the
// kernel's own counters there. Nothing here routes anywhere but between
// these namespaces, and everything is removed when the test ends.
package nstest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NS is a network namespace a test created.
type NS struct {
	Name  string
	Inode uint32
}

// Run runs a command and fails the test if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// New creates a namespace with lo up; it is deleted when the test ends.
func New(t testing.TB, role string) *NS {
	t.Helper()
	name := fmt.Sprintf("kdrop-%s-%d", role, rand.Intn(1e6))
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n := &NS{Name: name}
	n.IP(t, "link set lo up")
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+name, &st); err != nil {
		t.Fatalf("stat netns %s: %v", name, err)
	}
	n.Inode = uint32(st.Ino)
	return n
}

// IP runs an ip(8) command line in the namespace (ip -n: one exec, which
// counts under emulation).
func (n *NS) IP(t testing.TB, cmdline string) {
	t.Helper()
	Run(t, "ip", append([]string{"-n", n.Name}, strings.Fields(cmdline)...)...)
}

// Sysctl sets net.* sysctls of the namespace without an exec: /proc/sys/net
// belongs to the namespace of the thread that opens it.
func (n *NS) Sysctl(t testing.TB, kv ...string) {
	t.Helper()
	n.In(t, func() {
		for i := 0; i+1 < len(kv); i += 2 {
			path := "/proc/sys/" + strings.ReplaceAll(kv[i], ".", "/")
			if err := os.WriteFile(path, []byte(kv[i+1]), 0); err != nil {
				t.Fatalf("sysctl %s=%s in %s: %v", kv[i], kv[i+1], n.Name, err)
			}
		}
	})
}

// Sh runs a command line inside the namespace.
func (n *NS) Sh(t testing.TB, cmdline string) string {
	t.Helper()
	return Run(t, "ip", append([]string{"netns", "exec", n.Name}, strings.Fields(cmdline)...)...)
}

// Veth connects two namespaces with a veth pair and gives each end an
// IPv4 and (optionally) an IPv6 address, without duplicate address
// detection so the addresses work at once.
func Veth(t testing.TB, a *NS, aAddr, aAddr6 string, b *NS, bAddr, bAddr6 string) (aDev, bDev string) {
	t.Helper()
	id := rand.Intn(1e6)
	aDev, bDev = fmt.Sprintf("va%d", id), fmt.Sprintf("vb%d", id)
	Run(t, "ip", "link", "add", aDev, "netns", a.Name, "type", "veth", "peer", "name", bDev, "netns", b.Name)
	for _, e := range []struct {
		n          *NS
		dev, a, a6 string
	}{{a, aDev, aAddr, aAddr6}, {b, bDev, bAddr, bAddr6}} {
		e.n.IP(t, "addr add "+e.a+" dev "+e.dev)
		if e.a6 != "" {
			e.n.IP(t, "addr add "+e.a6+" dev "+e.dev+" nodad")
		}
		e.n.IP(t, "link set "+e.dev+" up")
	}
	return aDev, bDev
}

// In runs fn with the calling goroutine's thread inside the namespace.
// Sockets created by fn stay in it after fn returns.
func (n *NS) In(t testing.TB, fn func()) {
	t.Helper()
	f, err := os.Open("/run/netns/" + n.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", n.Name, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// Counters reads the namespace's SNMP and netstat counters, as nstat does
// (nstat -az prints every counter by its nstat name, e.g. TcpExtListenOverflows).
func (n *NS) Counters(t testing.TB) map[string]uint64 {
	t.Helper()
	out := n.Sh(t, "nstat -asz")
	m := map[string]uint64{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err == nil {
			m[f[0]] = v
		}
	}
	if len(m) == 0 {
		t.Fatalf("nstat in %s printed no counters:\n%s", n.Name, out)
	}
	return m
}

func parseIP(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func sockaddr(t testing.TB, addr string, port int) (int, unix.Sockaddr) {
	t.Helper()
	ip := parseIP(t, addr)
	if ip.Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Addr: ip.As4(), Port: port}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Addr: ip.As16(), Port: port}
}

// ListenNoAccept opens a TCP listener with exactly this backlog (net.Listen
// would use somaxconn) that never accepts.
func (n *NS) ListenNoAccept(t testing.TB, addr string, port, backlog int) *Sockets {
	t.Helper()
	var fd int
	n.In(t, func() {
		fam, sa := sockaddr(t, addr, port)
		var err error
		fd, err = unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(fd, sa); err != nil {
			t.Fatalf("bind %s:%d: %v", addr, port, err)
		}
		if err := unix.Listen(fd, backlog); err != nil {
			t.Fatal(err)
		}
	})
	s := &Sockets{[]int{fd}}
	t.Cleanup(s.Close)
	return s
}

// Sockets closes each fd once, however often Close is called: a second
// close could hit an fd number the tracer reuses meanwhile.
type Sockets struct{ FDs []int }

func (s *Sockets) Close() {
	for _, fd := range s.FDs {
		unix.Close(fd)
	}
	s.FDs = nil
}

// ConnectMany starts n non-blocking TCP connects from the namespace
// (Close stops their SYN retransmissions).
func (n *NS) ConnectMany(t testing.TB, addr string, port, count int) *Sockets {
	t.Helper()
	return n.ConnectFrom(t, addr, port, make([]int, count))
}

// ConnectFrom starts one non-blocking TCP connect from the namespace per
// source port in sports (0: an ephemeral one), bound to addr's address.
func (n *NS) ConnectFrom(t testing.TB, addr string, port int, sports []int) *Sockets {
	t.Helper()
	var fds []int
	n.In(t, func() {
		fam, sa := sockaddr(t, addr, port)
		for _, sport := range sports {
			fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
			if sport != 0 {
				_, local := sockaddr(t, addr, sport)
				if err := unix.Bind(fd, local); err != nil {
					t.Fatalf("bind source port %d: %v", sport, err)
				}
			}
			if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
				t.Fatalf("connect %s:%d: %v", addr, port, err)
			}
		}
	})
	s := &Sockets{fds}
	t.Cleanup(s.Close)
	return s
}

// ConnectErr does one blocking TCP connect with a timeout and returns the
// error the application would see (nil if it connected).
func (n *NS) ConnectErr(t testing.TB, addr string, port int, timeout time.Duration) error {
	t.Helper()
	var fd int
	var err error
	n.In(t, func() {
		fam, sa := sockaddr(t, addr, port)
		var e error
		if fd, e = unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); e != nil {
			t.Fatal(e)
		}
		err = unix.Connect(fd, sa)
	})
	defer unix.Close(fd)
	if err != unix.EINPROGRESS {
		return err
	}
	// Non-blocking, then poll: a blocking connect would return EINTR when
	// the Go runtime signals the thread.
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return unix.Errno(soerr)
		}
		// Connected means past the handshake (established, or already
		// closed by the server: close-wait); a socket that never got
		// there is a fixture fault to report, not a success.
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return fmt.Errorf("TCP_INFO after poll: %w", err)
		}
		if st := info.State; st == unix.BPF_TCP_SYN_SENT || st == unix.BPF_TCP_SYN_RECV || st == unix.BPF_TCP_CLOSE {
			var la string
			if sa, err := unix.Getsockname(fd); err == nil {
				if a, ok := sa.(*unix.SockaddrInet4); ok {
					la = fmt.Sprintf("%v:%d", netip.AddrFrom4(a.Addr), a.Port)
				}
			}
			return fmt.Errorf("poll said %#x with SO_ERROR 0 but the socket (from %s) is in TCP state %d, never connected", fds[0].Revents, la, info.State)
		}
		return nil
	}
}

// SendUDP sends count datagrams to addr:port from the namespace.
func (n *NS) SendUDP(t testing.TB, addr string, port, count int) {
	t.Helper()
	n.In(t, func() {
		fam, sa := sockaddr(t, addr, port)
		fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		for i := 0; i < count; i++ {
			// ECONNREFUSED from an earlier ICMP error is expected: go on.
			if err := unix.Sendto(fd, []byte("kdrop"), 0, sa); err != nil && err != unix.ECONNREFUSED {
				t.Fatalf("send %s:%d: %v", addr, port, err)
			}
		}
	})
}

// SendDF sends count UDP datagrams of size bytes (IP header included) to
// addr:port from the namespace, each with don't-fragment set (IPv4 DF,
// and IPv6, which routers never fragment) whatever path MTU the kernel
// learned meanwhile (IP_PMTUDISC_PROBE): a sender whose packets are too big
// for the path.
func (n *NS) SendDF(t testing.TB, addr string, port, size, count int) {
	t.Helper()
	n.In(t, func() {
		fam, sa := sockaddr(t, addr, port)
		lvl, opt, hdr := unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, 28
		if fam == unix.AF_INET6 {
			lvl, opt, hdr = unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, 48
		}
		fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, lvl, opt, unix.IP_PMTUDISC_PROBE); err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, size-hdr)
		for i := 0; i < count; i++ {
			// EMSGSIZE and ECONNREFUSED from earlier ICMP errors: go on
			if err := unix.Sendto(fd, payload, 0, sa); err != nil && !errors.Is(err, unix.EMSGSIZE) && !errors.Is(err, unix.ECONNREFUSED) {
				t.Fatalf("send to %s: %v", addr, err)
			}
		}
	})
}

// Flood sends UDP datagrams from the namespace to addr, cycling over ports,
// as fast as it can on its own goroutine until stop is called; stop returns
// how many were sent. The load keeps running while the test asserts.
func (n *NS) Flood(t testing.TB, addr string, ports []int) (stop func() uint64) {
	t.Helper()
	dsts := make([]netip.AddrPort, len(ports))
	for i, p := range ports {
		dsts[i] = netip.AddrPortFrom(parseIP(t, addr), uint16(p))
	}
	return n.FloodTo(t, dsts)
}

// FloodTo is Flood to any destinations of one family (a scan, say).
func (n *NS) FloodTo(t testing.TB, dsts []netip.AddrPort) (stop func() uint64) {
	t.Helper()
	var fd int
	var sas []unix.Sockaddr
	n.In(t, func() {
		var fam int
		for _, d := range dsts {
			var sa unix.Sockaddr
			fam, sa = sockaddr(t, d.Addr().String(), int(d.Port()))
			sas = append(sas, sa)
		}
		var err error
		if fd, err = unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
	})
	var sent atomic.Uint64
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		payload := []byte("kdrop flood")
		for i := 0; ; i++ {
			if i%64 == 0 {
				select {
				case <-quit:
					return
				default:
				}
			}
			if unix.Sendto(fd, payload, 0, sas[i%len(sas)]) == nil {
				sent.Add(1)
			}
		}
	}()
	var once sync.Once
	stop = func() uint64 {
		once.Do(func() { close(quit); <-done; unix.Close(fd) })
		return sent.Load()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// Routed is client ── router ── server, IPv4 and IPv6, with forwarding
// on in the router. Only these three namespaces are reachable.
type Routed struct {
	Client, Router, Server *NS
	RouterToServer         string // the router's device toward the server
}

// Addresses of Routed's ends (RFC 2544 benchmarking range, ULA).
const (
	ClientIP  = "198.18.1.2"
	ServerIP  = "198.18.2.2"
	ClientIP6 = "fd00:18:1::2"
	ServerIP6 = "fd00:18:2::2"
)

func NewRouted(t testing.TB) *Routed {
	t.Helper()
	r := &Routed{Client: New(t, "cli"), Router: New(t, "rtr"), Server: New(t, "srv")}
	Veth(t, r.Client, ClientIP+"/24", ClientIP6+"/64", r.Router, "198.18.1.1/24", "fd00:18:1::1/64")
	_, r.RouterToServer = Veth(t, r.Server, ServerIP+"/24", ServerIP6+"/64", r.Router, "198.18.2.1/24", "fd00:18:2::1/64")
	r.Client.IP(t, "route add default via 198.18.1.1")
	r.Client.IP(t, "-6 route add default via fd00:18:1::1")
	r.Server.IP(t, "route add default via 198.18.2.1")
	r.Server.IP(t, "-6 route add default via fd00:18:2::1")
	r.Router.Sysctl(t, "net.ipv4.ip_forward", "1", "net.ipv6.conf.all.forwarding", "1")
	// The kernel's ICMP rate limits stay at their defaults (icmp_ratelimit,
	// icmp_msgs_per_sec, IPv6's icmp.ratelimit): kdrop must count what is
	// sent under them, not what the kernel decided against.
	// Resolve every neighbour on the path now (a refused connect each way
	// and family), so a test's first packets are not held or dropped while
	// ARP or neighbour discovery runs, slowly under emulation.
	for _, dst := range []string{ServerIP, ServerIP6} {
		if err := r.Client.ConnectErr(t, dst, 1, 30*time.Second); err != unix.ECONNREFUSED {
			t.Fatalf("warming up the path to [%s]:1: want ECONNREFUSED, got %v", dst, err)
		}
	}
	return r
}

// Link is a device of a namespace as ip -s -s -j shows it.
type Link struct {
	Ifindex uint32 `json:"ifindex"`
	MAC     string `json:"address"`
	Stats   struct {
		// Rx are its receive counters ("dropped", "otherhost"…); a
		// counter the kernel or ip(8) does not report is absent.
		Rx map[string]uint64 `json:"rx"`
	} `json:"stats64"`
}

// Link reads a device of the namespace: its ifindex, MAC and counters.
func (n *NS) Link(t testing.TB, dev string) Link {
	t.Helper()
	out := Run(t, "ip", "-n", n.Name, "-s", "-s", "-j", "link", "show", "dev", dev)
	var links []Link
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show dev %s in %s: %v\n%s", dev, n.Name, err, out)
	}
	return links[0]
}

// ListenUDP opens a UDP socket on addr:port in the namespace with a
// receive buffer of rcvbuf bytes (SO_RCVBUF; the kernel doubles it), which
// the test reads from, or not, itself.
func (n *NS) ListenUDP(t testing.TB, addr string, port, rcvbuf int) *Sockets {
	t.Helper()
	var fd int
	n.In(t, func() {
		fam, sa := sockaddr(t, addr, port)
		var err error
		if fd, err = unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, sa); err != nil {
			t.Fatalf("bind %s:%d: %v", addr, port, err)
		}
	})
	s := &Sockets{[]int{fd}}
	t.Cleanup(s.Close)
	return s
}

// Paced calls send on its own goroutine every interval until stop is
// called (stop waits for the call under way): traffic that keeps running
// while a test looks, at a rate the kernel's queues take.
func Paced(t testing.TB, interval time.Duration, send func()) (stop func()) {
	t.Helper()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				send()
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return stop
}
