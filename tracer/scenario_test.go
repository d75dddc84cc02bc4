package tracer

// Scenario tests: the incidents kdrop exists for, reproduced in network
// namespaces, with kdrop's events checked field by field and their counts
// checked against the kernel's own counters over the same window. They run
// on the host kernel and, through tracer/vmtest, on other kernels.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "tracer tests load BPF programs and create network namespaces: run them as root (sudo make test)")
		os.Exit(1)
	}
	for _, tool := range []string{"ip", "nstat", "iptables", "bpftool"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "tracer tests need %s: run `make deps` (installs iproute2, iptables, bpftool)\n", tool)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// testModes lets `make test-kernels ATTACH=kprobe,raw_tp,sock_diag` prove the
// fallback modes on kernels where the preferred ones work.
func testModes(t testing.TB) []Mode {
	m, err := ParseModes(os.Getenv("KDROP_TEST_ATTACH"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type capture struct {
	tr      *Tracer
	cancel  context.CancelFunc
	done    chan error
	waited  sync.Once
	runErr  error
	stopped bool // Run returned in time
	mu      sync.Mutex
	events  []Event
}

// wait ends the run and waits up to 10 s for Run to return (once).
func (c *capture) wait() {
	c.waited.Do(func() {
		c.cancel()
		select {
		case c.runErr = <-c.done:
			c.stopped = true
		case <-time.After(10 * time.Second):
		}
	})
}

// startTracer attaches kdrop with opts and collects its events until stop.
func startTracer(t *testing.T, opts Options) *capture {
	t.Helper()
	if opts.Modes == nil {
		opts.Modes = testModes(t)
	}
	if opts.Log == nil {
		opts.Log = zaptest.NewLogger(t)
	}
	if opts.SweepInterval == 0 {
		opts.SweepInterval = 200 * time.Millisecond
	}
	start := time.Now()
	tr, err := New(opts)
	if err != nil {
		t.Fatalf("tracer: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	t.Logf("tracer loaded and attached in %v", time.Since(start).Round(time.Millisecond))
	kernel := os.Getenv("KDROP_VM_KERNEL")
	if kernel == "" {
		kernel = "host"
	}
	for _, h := range tr.Hooks() {
		t.Logf("kernel %s: hook %s", kernel, h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &capture{tr: tr, cancel: cancel, done: make(chan error, 1)}
	go func() {
		c.done <- tr.Run(ctx, func(e *Event) {
			c.mu.Lock()
			c.events = append(c.events, *e)
			c.mu.Unlock()
		})
	}()
	// Cleanups run last-registered first: Run must have returned before
	// the tracer is closed under it (a test that fails early skips stop).
	t.Cleanup(c.wait)
	return c
}

// stop ends the run (the final sweep reports every count) and returns the
// events.
func (c *capture) stop(t *testing.T) []Event {
	t.Helper()
	c.wait()
	if !c.stopped {
		t.Fatal("tracer did not stop within 10s")
	}
	if c.runErr != nil {
		t.Fatalf("tracer run: %v", c.runErr)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.events
}

func (c *capture) hook(name string) HookStatus {
	for _, h := range c.tr.Hooks() {
		if h.Hook == name {
			return h
		}
	}
	return HookStatus{}
}

func sum(evs []Event, keep func(*Event) bool) (n uint64, matched []Event) {
	for i := range evs {
		if keep(&evs[i]) {
			n += evs[i].Count
			matched = append(matched, evs[i])
		}
	}
	return n, matched
}

func dump(evs []Event) string {
	var b strings.Builder
	for i := range evs {
		e := &evs[i]
		fmt.Fprintf(&b, "%s %s count=%d summary=%v %s -> %s netns=%d %s %s\n",
			e.Type, e.What(), e.Count, e.Summary, e.Src, e.Dst, e.Netns, e.Source, e.Location)
		if i > 40 {
			fmt.Fprintf(&b, "... %d more\n", len(evs)-i-1)
			break
		}
	}
	return b.String()
}

func isDrop(reason, location string, reasons *Reasons) func(*Event) bool {
	return func(e *Event) bool {
		if e.Type != Drop {
			return false
		}
		if reasons.Len() == 0 { // kernel before 5.17: only the location tells
			return e.Reason == reasonUnknown && strings.HasPrefix(e.Location, location+"+")
		}
		return e.Reason == reason
	}
}

// The image-server incident: a listener whose backlog is small never keeps
// up, the accept queue overflows, and clients time out. kdrop must report
// each overflow with the queue length and its limit, and count exactly what
// TcpExtListenOverflows counts.
//
// tcp_conn_request drops a SYN whenever the accept queue is full, syncookies
// or not: no accept-queue overflow may carry the syncookie flag, with
// cookies forced (2), or on (1) while the SYN queue is full too.
func TestListenQueueOverflow(t *testing.T) {
	for _, cookies := range []string{"1", "2"} {
		t.Run("tcp_syncookies="+cookies, func(t *testing.T) { listenQueueOverflow(t, cookies) })
	}
}

func listenQueueOverflow(t *testing.T, cookies string) {
	const backlog, port = 4, 8080
	srv := nstest.New(t, "srv")
	srv.Sysctl(t, "net.core.somaxconn", "128") // the image server's limit
	srv.Sysctl(t, "net.ipv4.tcp_syncookies", cookies)
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{ListenOverflow}, Netns: srv.Inode}})
	before := srv.Counters(t)

	ln := srv.ListenNoAccept(t, "127.0.0.1", port, backlog)
	defer ln.Close()
	mode := c.hook("tcp_conn_request").Mode
	isOverflow := func(e *Event) bool { return e.Type == ListenOverflow && e.Queue != QueueSYN }
	// A new client every 40 ms: the queue stays full, and each SYN (and
	// retransmission) finds it so, while the test looks.
	connect := func() func() {
		return pacedConnects(t, srv, 40*time.Millisecond, nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	}
	evs, got := underLoadEach(t, c, 3*time.Second, 2*time.Second, connect, loadCheck{
		what: "TcpExtListenOverflows", keep: isOverflow, counter: counters(t, srv, "TcpExtListenOverflows"),
		agree: func(got, want uint64) bool { return countAgrees(t, overflowCountMode(c), got, want) },
	})
	after := srv.Counters(t)

	overflows := after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
	drops := after["TcpExtListenDrops"] - before["TcpExtListenDrops"]
	t.Logf("TcpExtListenOverflows +%d, TcpExtListenDrops +%d, %d events counting %d, mode %s", overflows, drops, len(evs), got[0], mode)
	_, acc := sum(evs, isOverflow)
	want := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	var synqMax uint32
	for _, e := range acc {
		if e.Syncookie {
			t.Fatalf("accept-queue overflow flagged syncookie (tcp_syncookies=%s): the SYN was dropped, no cookie sent\n%s", cookies, dump([]Event{e}))
		}
		if e.Summary {
			continue
		}
		synqMax = max(synqMax, e.SynQueueLen)
		// The kernel admits one connection over the limit before it calls
		// the queue full (sk_acceptq_is_full is ack_backlog > max).
		if e.QueueMax != backlog || e.QueueLen != backlog+1 || e.Dst != want || e.Netns != srv.Inode || e.Proto != unix.IPPROTO_TCP || e.Somaxconn != 128 {
			t.Fatalf("overflow event fields: want queue %d/%d dst %s netns %d tcp somaxconn 128, got\n%s", backlog+1, backlog, want, srv.Inode, dump([]Event{e}))
		}
		if mode != ModeSockDiag && (e.Src.Addr() != want.Addr() || e.Src.Port() == 0 || e.Source != string(mode)) {
			t.Fatalf("overflow event from the kernel hook should carry the client's address and source %s:\n%s", mode, dump([]Event{e}))
		}
		if mode == ModeSockDiag && e.Source != string(ModeSockDiag) {
			t.Fatalf("want source sock_diag:\n%s", dump([]Event{e}))
		}
	}
	t.Logf("SYN queue length up to %d (its limit %d) during accept-queue overflows", synqMax, backlog)
}

// pacedConnects starts a non-blocking TCP connect from ns to each of dsts
// every interval, counting the rounds in rounds (if set), until the
// returned stop, which also closes every socket (no SYN retransmission
// after it).
func pacedConnects(t *testing.T, ns *nstest.NS, every time.Duration, rounds *atomic.Uint64, dsts ...netip.AddrPort) (stop func()) {
	var mu sync.Mutex
	var conns []*nstest.Sockets
	pace := nstest.Paced(t, every, func() {
		for _, d := range dsts {
			s := ns.ConnectMany(t, d.Addr().String(), int(d.Port()), 1)
			mu.Lock()
			conns = append(conns, s)
			mu.Unlock()
		}
		if rounds != nil {
			rounds.Add(1)
		}
	})
	return func() {
		pace()
		mu.Lock()
		defer mu.Unlock()
		for _, s := range conns {
			s.Close()
		}
	}
}

// overflowCountMode is the mode whose counting rule (countAgrees) applies
// to accept-queue overflows: a SYN refused by tcp_conn_request, or a final
// ACK (a syncookie's) refused by tcp_v4/v6_syn_recv_sock, hooked apart; if
// either is a kprobe, so is the count.
func overflowCountMode(c *capture) Mode {
	for _, h := range []string{"tcp_v4_syn_recv_sock", "tcp_v6_syn_recv_sock"} {
		if c.hook(h).Mode == ModeKprobe {
			return ModeKprobe
		}
	}
	return c.hook("tcp_conn_request").Mode
}

// countAgrees says whether kdrop's count got agrees with the kernel's
// counter want: equal, except in kprobe mode, where the kernel skips a
// kprobe program while any kprobe or tracepoint program, or any BPF map
// syscall (kdrop's own sweeps: bpf_disable_instrumentation), runs on that
// CPU (bpf_prog_active), and older kernels count none of those skips: then
// short by at most a tenth, never over, and the shortfall is logged.
func countAgrees(t *testing.T, mode Mode, got, want uint64) bool {
	if mode != ModeKprobe || got == want {
		return got == want
	}
	if got < want {
		t.Logf("kprobe mode: %d of %d counted; the kernel skipped the program %d times without counting it", got, want, want-got)
	}
	return got <= want && got >= want-want/10
}

// "No route to host" in a rolling update: the client still sends to a pod IP
// that is gone; the node's neighbour resolution fails and the kernel answers
// with ICMP host-unreachable.
func TestNoRouteToHostNeighbourFailed(t *testing.T) {
	r := nstest.NewRouted(t)
	// Give up on ARP after 3 x 100 ms instead of 3 x 1 s.
	r.Router.Sysctl(t, "net.ipv4.neigh."+r.RouterToServer+".retrans_time_ms", "100")
	const gone = "198.18.2.9" // on the server's subnet, but no one has it
	c := startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode, Types: []EventType{Unreachable, Drop}}})
	before := r.Router.Counters(t)
	// With the ICMP rate limit on (6 answers at once, then 1 a second, per
	// client), an answer may be held back: the connect then fails on a
	// later SYN retransmission, seconds after.
	// What is checked is kdrop against the router's counter; a connect
	// that ends otherwise (once on 6.1 in CI: nil, never reproduced in
	// 25 runs) is logged with what the socket showed, and the scenario
	// must have happened at least once.
	unreachable := 0
	for i := 0; i < 3; i++ {
		err := r.Client.ConnectErr(t, gone, 80, 15*time.Second)
		if errors.Is(err, unix.EHOSTUNREACH) {
			unreachable++
		} else {
			t.Logf("connect %d to %s: want EHOSTUNREACH (No route to host), got %v", i+1, gone, err)
		}
	}
	if unreachable == 0 {
		t.Fatalf("no connect to %s failed with EHOSTUNREACH: the scenario did not happen", gone)
	}
	evs := c.stop(t)
	after := r.Router.Counters(t)

	sent := after["IcmpOutDestUnreachs"] - before["IcmpOutDestUnreachs"]
	got, unreach := sum(evs, func(e *Event) bool { return e.Type == Unreachable })
	if sent == 0 || got != sent {
		t.Fatalf("unreach events count %d, IcmpOutDestUnreachs rose by %d\n%s", got, sent, dump(evs))
	}
	for _, e := range unreach {
		if e.Summary {
			continue
		}
		if e.What() != "host-unreachable" || e.Src.Addr().String() != nstest.ClientIP || e.Dst.Addr().String() != gone ||
			e.Dst.Port() != 80 || e.Proto != unix.IPPROTO_TCP || e.Netns != r.Router.Inode {
			t.Fatalf("want host-unreachable for %s -> %s:80/tcp in the router, got\n%s", nstest.ClientIP, gone, dump([]Event{e}))
		}
	}
	// The packets waiting for the neighbour are dropped too, with a reason
	// on kernels that name it.
	if _, ok := c.tr.Reasons.Lookup("NEIGH_FAILED"); ok {
		if n, _ := sum(evs, isDrop("NEIGH_FAILED", "", c.tr.Reasons)); n == 0 {
			t.Errorf("no NEIGH_FAILED drop seen in the router\n%s", dump(evs))
		}
	}
}

// kube-proxy's REJECT for a Service without endpoints, here with
// icmp-host-unreachable as in the issue, in the router's FORWARD chain.
func TestRejectHostUnreachable(t *testing.T) {
	r := nstest.NewRouted(t)
	const svc = "198.18.2.10"
	r.Router.Sh(t, "iptables -A FORWARD -d "+svc+" -p tcp -j REJECT --reject-with icmp-host-unreachable")
	if err := r.Client.ConnectErr(t, svc, 443, 15*time.Second); !errors.Is(err, unix.EHOSTUNREACH) {
		t.Fatalf("connect to %s: want EHOSTUNREACH, got %v", svc, err)
	}
	c := startTracer(t, Options{Filter: Filter{Netns: r.Router.Inode}})
	// Then a new connect every 50 ms while the test looks. A
	// host-unreachable the ICMP rate limit held back leaves the connect
	// to retransmit its SYN, rejected again.
	connect := func() func() {
		return pacedConnects(t, r.Client, 50*time.Millisecond, nil, netip.MustParseAddrPort(svc+":443"))
	}
	// REJECT's verdict is a drop: NETFILTER_DROP where the kernel names it,
	// in nf_hook_slow before that; one per packet the rule matched, whether
	// or not the ICMP rate limit let its answer out.
	evs, _ := underLoadEach(t, c, 3*time.Second, 2*time.Second, connect,
		loadCheck{what: "IcmpOutDestUnreachs", keep: func(e *Event) bool { return e.Type == Unreachable }, counter: counters(t, r.Router, "IcmpOutDestUnreachs")},
		loadCheck{what: "REJECT rule", keep: isDrop("NETFILTER_DROP", "nf_hook_slow", c.tr.Reasons), counter: func() uint64 {
			return r.Router.IptablesPackets(t, "iptables", "FORWARD", "REJECT", "")
		}})
	_, unreach := sum(evs, func(e *Event) bool { return e.Type == Unreachable })
	for _, e := range unreach {
		if !e.Summary && (e.What() != "host-unreachable" || e.Dst.String() != svc+":443" || e.Src.Addr().String() != nstest.ClientIP) {
			t.Fatalf("want host-unreachable for -> %s:443, got\n%s", svc, dump([]Event{e}))
		}
	}
}

// A connect to a port nothing listens on: the SYN is dropped with
// NO_SOCKET and answered with a reset, over IPv4 and IPv6.
func TestClosedPortNoSocket(t *testing.T) {
	r := nstest.NewRouted(t)
	// Counting rules: how many SYNs really reached the server (a SYN can be
	// retransmitted when the first reset waits for neighbour discovery).
	r.Server.Sh(t, "iptables -A INPUT -p tcp --dport 81 --syn -j ACCEPT")
	r.Server.Sh(t, "ip6tables -A INPUT -p tcp --dport 81 --syn -j ACCEPT")
	for _, dst := range []string{nstest.ServerIP, nstest.ServerIP6} {
		if err := r.Client.ConnectErr(t, dst, 81, 5*time.Second); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("connect to [%s]:81: want ECONNREFUSED, got %v", dst, err)
		}
	}
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}, Port: 81}})
	before := r.Server.Counters(t)
	// Then a connect to each every 50 ms while the test looks.
	var connects atomic.Uint64
	connect := func() func() {
		return pacedConnects(t, r.Client, 50*time.Millisecond, &connects,
			netip.MustParseAddrPort(nstest.ServerIP+":81"), netip.MustParseAddrPort("["+nstest.ServerIP6+"]:81"))
	}
	fams := []struct {
		src, dst string
		loc      string
		ipt      string
	}{{nstest.ClientIP, nstest.ServerIP, "tcp_v4_rcv", "iptables"}, {nstest.ClientIP6, nstest.ServerIP6, "tcp_v6_rcv", "ip6tables"}}
	var checks []loadCheck
	for _, fam := range fams {
		match := isDrop("NO_SOCKET", fam.loc, c.tr.Reasons)
		// Each refused connect is exactly one SYN dropped for want of a
		// socket: as many as reached the server (the counting rules).
		checks = append(checks, loadCheck{what: "NO_SOCKET to " + fam.dst,
			keep:    func(e *Event) bool { return match(e) && e.Dst.Addr().String() == fam.dst },
			counter: func() uint64 { return r.Server.IptablesPackets(t, fam.ipt, "INPUT", "ACCEPT", "") }})
	}
	evs, ns := underLoadEach(t, c, 3*time.Second, 2*time.Second, connect, checks...)
	after := r.Server.Counters(t)

	n := connects.Load()
	if rsts := after["TcpOutRsts"] - before["TcpOutRsts"]; rsts < 2*n {
		t.Fatalf("TcpOutRsts rose by %d, want at least %d (%d connects to each)", rsts, 2*n, n)
	}
	for i, fam := range fams {
		if ns[i] < n {
			t.Errorf("%d NO_SOCKET drops to %s, for %d connects", ns[i], fam.dst, n)
		}
		_, got := sum(evs, checks[i].keep)
		for _, e := range got {
			if !e.Summary && (e.Src.Addr().String() != fam.src || e.Dst.Port() != 81 || TCPFlagString(e.TCPFlags) != "SYN" ||
				e.Netns != r.Server.Inode || e.Ifindex == 0 || e.Location == "") {
				t.Fatalf("NO_SOCKET drop fields wrong:\n%s", dump([]Event{e}))
			}
		}
	}
}

// An iptables DROP rule: every packet is reported as NETFILTER_DROP, and
// the count equals the rule's own packet counter. A filter on the port
// keeps a second, unwatched flow out.
func TestIptablesDrop(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 9998 -j DROP")
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Port: 9999, Proto: unix.IPPROTO_UDP}, RateLimit: 1000})
	var sent atomic.Uint64
	send := func() func() {
		return nstest.Paced(t, 20*time.Millisecond, func() {
			r.Client.SendUDP(t, nstest.ServerIP, 9999, 1)
			r.Client.SendUDP(t, nstest.ServerIP, 9998, 1)
			sent.Add(1)
		})
	}
	isRule := isDrop("NETFILTER_DROP", "nf_hook_slow", c.tr.Reasons)
	evs, n := underLoad(t, c, "DROP rule for 9999", 3*time.Second, 2*time.Second, send, isRule, func() uint64 {
		return r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "dpt:9999")
	})

	if rule, want := r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", ""), 2*sent.Load(); rule != want {
		t.Fatalf("DROP rules counted %d packets, sent %d", rule, want)
	}
	_, drops := sum(evs, isRule)
	if n != sent.Load() || len(evs) != len(drops) || uint64(len(drops)) != n {
		t.Fatalf("want %d NETFILTER_DROP events for port 9999 only, got count %d in %d events (%d of them drops)\n%s", sent.Load(), n, len(evs), len(drops), dump(evs))
	}
	for _, e := range drops {
		if e.Src.Addr().String() != nstest.ClientIP || e.Dst.String() != nstest.ServerIP+":9999" || e.Proto != unix.IPPROTO_UDP || e.Count != 1 {
			t.Fatalf("drop fields wrong:\n%s", dump([]Event{e}))
		}
	}
}

// A drop storm must not flood userspace, and must not lose count: with 5
// events per second per flow, 20 dropped packets every 20 ms give a handful
// of lines a second whose counts still add up to the rule's counter, while
// the storm runs and at its end.
func TestRateLimitKeepsExactCounts(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}, Port: 9999}, RateLimit: 5, SweepInterval: time.Second})
	var sent atomic.Uint64
	var began, ended time.Time
	storm := func() func() {
		began = time.Now()
		stop := nstest.Paced(t, 20*time.Millisecond, func() {
			r.Client.SendUDP(t, nstest.ServerIP, 9999, 20)
			sent.Add(20)
		})
		return func() { stop(); ended = time.Now() }
	}
	evs, n := underLoad(t, c, "DROP rule", 3*time.Second, 2*time.Second, storm, func(e *Event) bool { return e.Type == Drop }, func() uint64 {
		return r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "")
	})

	summaries, _ := sum(evs, func(e *Event) bool { return e.Summary })
	if n != sent.Load() {
		t.Fatalf("counts: sent %d, kdrop %d\n%s", sent.Load(), n, dump(evs))
	}
	lines := 0
	for _, e := range evs {
		if e.Summary && e.Src.IsValid() {
			t.Fatalf("a summary spans the flow's sources, yet names one:\n%s", dump([]Event{e}))
		}
		if !e.Summary {
			lines++
		}
	}
	// 5 per sweep (a second here) for the one flow (type, reason,
	// destination), per second begun, and one more for the window's edges.
	secs := int(ended.Sub(began)/time.Second) + 2
	t.Logf("%d drops in %v: %d lines, %d summary lines counting %d", n, ended.Sub(began).Round(time.Millisecond), lines, len(evs)-lines, summaries)
	if lines > 5*secs || summaries == 0 || uint64(len(evs)) > n/10 {
		t.Fatalf("rate limit 5/s over %d s: want at most %d lines with a summary, and few lines, got %d lines (%d events), summary count %d\n%s", secs, 5*secs, lines, len(evs), summaries, dump(evs))
	}
}

// A reader that can't keep up with a one-page ring buffer: events are
// lost, kdrop says how many, and the counts still add up (the lost events'
// occurrences come back in summaries).
func TestLostEventsAreCounted(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	tr, err := New(Options{Modes: testModes(t), RingBytes: uint32(os.Getpagesize()), SweepInterval: 200 * time.Millisecond,
		Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}, Port: 9999}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// Nobody reads while the storm runs: the ring fills after ~40 events.
	r.Client.SendUDP(t, nstest.ServerIP, 9999, 2000)
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // drain what is there, sweep, return
	var total, lines uint64
	if err := tr.Run(ctx, func(e *Event) { total += e.Count; lines++ }); err != nil {
		t.Fatal(err)
	}
	rule := r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "")
	t.Logf("2000 drops: %d lost in the ring buffer, %d lines, counts sum %d", st.LostLines[Drop], lines, total)
	if st.LostLines[Drop] == 0 || st.LostLines[Drop] >= rule {
		t.Fatalf("want some (not all) of %d drop events lost, stats say %d", rule, st.LostLines[Drop])
	}
	if total != rule || rule != 2000 {
		t.Fatalf("counts sum %d, rule counted %d (want 2000 both)", total, rule)
	}
}

// UDP to a closed port: the kernel answers port-unreachable ("Connection
// refused"), within its ICMP rate limits, left at their defaults: 6 answers
// at once, then about one a second per destination, for a datagram every
// 20 ms. kdrop must count exactly what was sent, IcmpOutDestUnreachs (and
// Icmp6OutDestUnreachs where it can hook IPv6), not what the limiter
// suppressed, while the datagrams keep coming.
func TestUDPClosedPortUnreachable(t *testing.T) {
	r := nstest.NewRouted(t)
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Unreachable}}})
	h6 := c.hook("icmp6_send")
	var datagrams atomic.Uint64
	send := func() func() {
		return nstest.Paced(t, 20*time.Millisecond, func() {
			r.Client.SendUDP(t, nstest.ServerIP, 7777, 1)
			r.Client.SendUDP(t, nstest.ServerIP6, 7777, 1)
			datagrams.Add(1)
		})
	}
	family := func(f uint8) func(*Event) bool {
		return func(e *Event) bool { return e.Type == Unreachable && e.Family == f }
	}
	checks := []loadCheck{{what: "IcmpOutDestUnreachs", keep: family(4), counter: counters(t, r.Server, "IcmpOutDestUnreachs")}}
	if h6.Mode != "" {
		checks = append(checks, loadCheck{what: "Icmp6OutDestUnreachs", keep: family(6), counter: counters(t, r.Server, "Icmp6OutDestUnreachs")})
	}
	evs, got := underLoadEach(t, c, 3*time.Second, 2*time.Second, send, checks...)
	n := datagrams.Load()

	check := func(i int, src, dst, what string) {
		_, m := sum(evs, checks[i].keep)
		t.Logf("%s: %d datagrams, kdrop counted %d", checks[i].what, n, got[i])
		if got[i] >= n {
			t.Errorf("%s: kdrop counted %d for %d datagrams: the rate limit should have let some, not all, answers out", checks[i].what, got[i], n)
		}
		for _, e := range m {
			if !e.Summary && (e.What() != what || e.Dst.String() != dst || e.Src.Addr().String() != src ||
				e.Proto != unix.IPPROTO_UDP || e.Netns != r.Server.Inode) {
				t.Fatalf("want %s for %s/udp, got\n%s", what, dst, dump([]Event{e}))
			}
		}
	}
	check(0, nstest.ClientIP, nstest.ServerIP+":7777", "port-unreachable")
	if h6.Mode != "" {
		check(1, nstest.ClientIP6, "["+nstest.ServerIP6+"]:7777", "port-unreachable")
	} else {
		// This kernel refuses both fentry and kprobes: kdrop must say so,
		// and must not invent ICMPv6 events.
		if len(h6.Failed) == 0 {
			t.Errorf("icmp6_send missing without a reason: %+v", h6)
		}
		if got, _ := sum(evs, func(e *Event) bool { return e.Family == 6 }); got != 0 {
			t.Errorf("ICMPv6 events without an icmp6_send hook:\n%s", dump(evs))
		}
		t.Logf("icmp6_send not hookable here (%s): ICMPv6 errors are not traced on this kernel", strings.Join(h6.Failed, "; "))
	}
}

// bpftoolIDs lists the IDs of loaded programs or links, as the kernel
// reports them to bpftool.
func bpftoolIDs(t *testing.T, what string) map[string]bool {
	out := nstest.Run(t, "bpftool", what, "show")
	ids := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, ":"); i > 0 && !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			if _, err := strconv.Atoi(line[:i]); err == nil {
				ids[line[:i]+line[i:min(len(line), i+40)]] = true
			}
		}
	}
	return ids
}

// Closing the tracer leaves no program or link of kdrop behind. Compared
// by ID: other processes may load and unload programs meanwhile.
func TestCleanDetach(t *testing.T) {
	progs, links := bpftoolIDs(t, "prog"), bpftoolIDs(t, "link")
	tr, err := New(Options{Modes: testModes(t)})
	if err != nil {
		t.Fatal(err)
	}
	added := func(before, now map[string]bool) []string {
		var out []string
		for id := range now {
			if !before[id] {
				out = append(out, id)
			}
		}
		return out
	}
	ours := map[string]bool{}
	for _, id := range append(added(progs, bpftoolIDs(t, "prog")), added(links, bpftoolIDs(t, "link"))...) {
		ours[id] = true
	}
	if len(ours) == 0 {
		t.Fatal("bpftool shows no new program or link while kdrop runs")
	}
	t.Logf("kdrop's programs and links: %d", len(ours))
	tr.Close()
	tr.Close() // twice is fine
	// Release is synchronous with the last fd's close, but give the
	// kernel's RCU a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []string
		for id := range bpftoolIDs(t, "prog") {
			if ours[id] {
				left = append(left, id)
			}
		}
		for id := range bpftoolIDs(t, "link") {
			if ours[id] {
				left = append(left, id)
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Close, still loaded: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
