package tracer

// Test helpers: network namespaces the tests create (ip netns + veth),
// sockets opened inside them, and the kernel's own counters read there.
// Nothing here routes anywhere but between these namespaces.

import (
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type netns struct {
	name  string
	inode uint32
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a namespace with lo up; it is deleted when the test ends.
func newNetns(t testing.TB, role string) *netns {
	t.Helper()
	name := fmt.Sprintf("kdrop-%s-%d", role, rand.Intn(1e6))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n := &netns{name: name}
	n.ip(t, "link set lo up")
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+name, &st); err != nil {
		t.Fatalf("stat netns %s: %v", name, err)
	}
	n.inode = uint32(st.Ino)
	return n
}

// ip runs an ip(8) command line in the namespace (ip -n: one exec, which
// counts under emulation).
func (n *netns) ip(t testing.TB, cmdline string) {
	t.Helper()
	run(t, "ip", append([]string{"-n", n.name}, strings.Fields(cmdline)...)...)
}

// sysctl sets net.* sysctls of the namespace without an exec: /proc/sys/net
// belongs to the namespace of the thread that opens it.
func (n *netns) sysctl(t testing.TB, kv ...string) {
	t.Helper()
	n.in(t, func() {
		for i := 0; i+1 < len(kv); i += 2 {
			path := "/proc/sys/" + strings.ReplaceAll(kv[i], ".", "/")
			if err := os.WriteFile(path, []byte(kv[i+1]), 0); err != nil {
				t.Fatalf("sysctl %s=%s in %s: %v", kv[i], kv[i+1], n.name, err)
			}
		}
	})
}

// sh runs a command line inside the namespace.
func (n *netns) sh(t testing.TB, cmdline string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", n.name}, strings.Fields(cmdline)...)...)
}

// vethLink connects two namespaces with a veth pair and gives each end an
// IPv4 and (optionally) an IPv6 address, without duplicate address
// detection so the addresses work at once.
func vethLink(t testing.TB, a *netns, aAddr, aAddr6 string, b *netns, bAddr, bAddr6 string) (aDev, bDev string) {
	t.Helper()
	id := rand.Intn(1e6)
	aDev, bDev = fmt.Sprintf("va%d", id), fmt.Sprintf("vb%d", id)
	run(t, "ip", "link", "add", aDev, "netns", a.name, "type", "veth", "peer", "name", bDev, "netns", b.name)
	for _, e := range []struct {
		n          *netns
		dev, a, a6 string
	}{{a, aDev, aAddr, aAddr6}, {b, bDev, bAddr, bAddr6}} {
		e.n.ip(t, "addr add "+e.a+" dev "+e.dev)
		if e.a6 != "" {
			e.n.ip(t, "addr add "+e.a6+" dev "+e.dev+" nodad")
		}
		e.n.ip(t, "link set "+e.dev+" up")
	}
	return aDev, bDev
}

// in runs fn with the calling goroutine's thread inside the namespace.
// Sockets created by fn stay in it after fn returns.
func (n *netns) in(t testing.TB, fn func()) {
	t.Helper()
	f, err := os.Open("/run/netns/" + n.name)
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
		t.Fatalf("setns %s: %v", n.name, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// counters reads the namespace's SNMP and netstat counters, as nstat does
// (nstat -az prints every counter by its nstat name, e.g. TcpExtListenOverflows).
func (n *netns) counters(t testing.TB) map[string]uint64 {
	t.Helper()
	out := n.sh(t, "nstat -asz")
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
		t.Fatalf("nstat in %s printed no counters:\n%s", n.name, out)
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

// listenNoAccept opens a TCP listener with exactly this backlog (net.Listen
// would use somaxconn) that never accepts.
func (n *netns) listenNoAccept(t testing.TB, addr string, port, backlog int) *sockets {
	t.Helper()
	var fd int
	n.in(t, func() {
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
	s := &sockets{[]int{fd}}
	t.Cleanup(s.Close)
	return s
}

// sockets closes each fd once, however often Close is called: a second
// close could hit an fd number the tracer reuses meanwhile.
type sockets struct{ fds []int }

func (s *sockets) Close() {
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds = nil
}

// connectMany starts n non-blocking TCP connects from the namespace
// (Close stops their SYN retransmissions).
func (n *netns) connectMany(t testing.TB, addr string, port, count int) *sockets {
	t.Helper()
	var fds []int
	n.in(t, func() {
		fam, sa := sockaddr(t, addr, port)
		for i := 0; i < count; i++ {
			fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
				t.Fatalf("connect %s:%d: %v", addr, port, err)
			}
			fds = append(fds, fd)
		}
	})
	s := &sockets{fds}
	t.Cleanup(s.Close)
	return s
}

// connectErr does one blocking TCP connect with a timeout and returns the
// error the application would see (nil if it connected).
func (n *netns) connectErr(t testing.TB, addr string, port int, timeout time.Duration) error {
	t.Helper()
	var err error
	n.in(t, func() {
		fam, sa := sockaddr(t, addr, port)
		fd, e := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if e != nil {
			t.Fatal(e)
		}
		defer unix.Close(fd)
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		err = unix.Connect(fd, sa)
	})
	return err
}

// sendUDP sends count datagrams to addr:port from the namespace.
func (n *netns) sendUDP(t testing.TB, addr string, port, count int) {
	t.Helper()
	n.in(t, func() {
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
