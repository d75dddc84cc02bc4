package netfilter

// Real kernel, real packets: two server namespaces with iptables-nft rules
// (comments, DROP and REJECT, TCP and UDP, IPv4 and IPv6) and a native
// nftables table (a counted rule and one without a counter), a client
// sending to them for the whole test, and kdrop's tracer. Every rule is
// named, and the counts per rule equal the rules' own counters, read with
// nft(8), not with the code under test.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

func needNft(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	for _, b := range []string{"nft", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
	if out, err := exec.Command("iptables", "-V").CombinedOutput(); err != nil || !strings.Contains(string(out), "nf_tables") {
		t.Skipf("iptables is not iptables-nft: %s", out)
	}
}

// attributed is one event with the rule kdrop gave it.
type attributed struct {
	ev   tracer.Event
	rule *Rule
	ct   *conntrack.Drop // conntrack's part, when it had one
}

// harness runs the tracer and an Attributor, collecting what comes out.
type harness struct {
	a      *Attributor[tracer.Event]
	mu     sync.Mutex
	out    []attributed
	others int // events the attributor was not asked about
	cancel context.CancelFunc
	done   chan error
	tr     *tracer.Tracer
	// noReasons: the kernel names no drop reasons (before 5.17)
	noReasons bool
	// only, when set: the one namespace whose drops are attributed (the
	// machine's others, e.g. other tests' storms, are left out)
	only atomic.Uint32
}

func (h *harness) add(ev *tracer.Event, r *Rule, ct *conntrack.Drop) {
	h.mu.Lock()
	h.out = append(h.out, attributed{*ev, r, ct})
	h.mu.Unlock()
}

func (h *harness) snapshot() []attributed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]attributed(nil), h.out...)
}

func startHarness(t *testing.T, cfg Config, opts tracer.Options) *harness {
	t.Helper()
	h := &harness{done: make(chan error, 1)}
	h.a = New(cfg, func(ev *tracer.Event, r *Rule, ct *conntrack.Drop) { h.add(ev, r, ct) })
	opts.Log = zaptest.NewLogger(t)
	m, err := tracer.ParseModes(os.Getenv("KDROP_TEST_ATTACH"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Modes = m
	tr, err := tracer.New(opts)
	if err != nil {
		t.Fatalf("tracer: %v", err)
	}
	if _, ok := tr.Reasons.Lookup("NETFILTER_DROP"); !ok && opts.RateLimit != 0 {
		// Before 5.17 drops have no reason: a netfilter drop is told by its
		// location, which summaries (keyed by flow) do not carry, so only
		// events of their own can be named. Every occurrence gets one here.
		t.Logf("this kernel names no drop reasons: rate limit off, summaries could not be named")
		tr.Close()
		opts.RateLimit = 0
		if tr, err = tracer.New(opts); err != nil {
			t.Fatalf("tracer: %v", err)
		}
		h.noReasons = true
	}
	h.tr = tr
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		h.done <- tr.Run(ctx, func(e *tracer.Event) {
			if o := h.only.Load(); !Wants(e) || o != 0 && e.Netns != o {
				h.mu.Lock()
				h.others++
				h.mu.Unlock()
				return
			}
			if r := h.a.Submit(e, *e); r != nil {
				h.add(e, r, nil)
			}
		})
	}()
	t.Cleanup(func() { h.stop(t); tr.Close() })
	return h
}

// stop ends the tracer's run (its last summaries included), then the
// attributor (what it holds is attributed and given out).
func (h *harness) stop(t *testing.T) []attributed {
	t.Helper()
	if h.cancel != nil {
		h.cancel()
		h.cancel = nil
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("tracer run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("tracer did not stop within 10s")
		}
		h.a.Close()
	}
	return h.snapshot()
}

// finish stops the load, lets the last drops arrive, stops the harness and
// returns what came out and how many occurrences the kernel skipped kdrop's
// program for (a drop nested in another of its programs on that CPU: rare,
// more so under -race): those are in no line, so counts may be short by
// that many, never more.
func (h *harness) finish(t *testing.T, stopLoad func()) ([]attributed, uint64) {
	t.Helper()
	stopLoad()
	time.Sleep(300 * time.Millisecond)
	out := h.stop(t)
	st, err := h.tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return out, st.Missed
}

// counters reads every rule counter in the namespace with nft -j: handle
// (by family/table/chain) to packets.
func counters(t testing.TB, ns *nstest.NS) map[string]uint64 {
	t.Helper()
	out := nstest.Run(t, "ip", "netns", "exec", ns.Name, "nft", "-j", "list", "ruleset")
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j: %v", err)
	}
	got := map[string]uint64{}
	for _, o := range doc.Nftables {
		raw, ok := o["rule"]
		if !ok {
			continue
		}
		var r struct {
			Family, Table, Chain string
			Handle               uint64
			Expr                 []map[string]json.RawMessage
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Expr {
			if c, ok := e["counter"]; ok {
				var cv struct{ Packets uint64 }
				json.Unmarshal(c, &cv)
				got[fmt.Sprintf("%s/%s/%s#%d", r.Family, r.Table, r.Chain, r.Handle)] = cv.Packets
			}
		}
	}
	return got
}

// lastTwo are the keys of the last two rules of ip filter INPUT, by handle.
func lastTwo(rules map[string]uint64) (string, string) {
	var ks []string
	for k := range rules {
		if strings.HasPrefix(k, "ip/filter/INPUT#") {
			ks = append(ks, k)
		}
	}
	sort.Slice(ks, func(i, j int) bool {
		var a, b int
		fmt.Sscanf(ks[i], "ip/filter/INPUT#%d", &a)
		fmt.Sscanf(ks[j], "ip/filter/INPUT#%d", &b)
		return a < b
	})
	if len(ks) < 2 {
		return "", ""
	}
	return ks[len(ks)-2], ks[len(ks)-1]
}

func key(r *Ref) string { return fmt.Sprintf("%s/%s/%s#%d", r.Family, r.Table, r.Chain, r.Handle) }

// load sends, from the client namespace until stop: UDP datagrams and TCP
// SYNs (non-blocking connects) to each target, IPv4 or IPv6, every period.
type target struct {
	proto string // "udp" or "tcp"
	dst   netip.AddrPort
}

func load(t *testing.T, client *nstest.NS, targets []target, period time.Duration) (stop func()) {
	t.Helper()
	var udp4, udp6 int
	client.In(t, func() {
		var err error
		if udp4, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
		if udp6, err = unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			t.Fatal(err)
		}
	})
	var tcps []int
	var mu sync.Mutex
	var failed atomic.Value
	stopPaced := nstest.Paced(t, period, func() {
		for _, tg := range targets {
			sa := sockaddrOf(tg.dst)
			switch tg.proto {
			case "udp":
				fd := udp4
				if tg.dst.Addr().Is6() {
					fd = udp6
				}
				unix.Sendto(fd, []byte("kdrop"), 0, sa) // REJECTs make some sends fail: fine
			case "tcp":
				dom := unix.AF_INET
				if tg.dst.Addr().Is6() {
					dom = unix.AF_INET6
				}
				var fd int
				var err error
				client.In(t, func() { fd, err = unix.Socket(dom, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0) })
				if err != nil {
					failed.Store(err)
					return
				}
				unix.Connect(fd, sa) // EINPROGRESS
				mu.Lock()
				tcps = append(tcps, fd)
				mu.Unlock()
			}
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stopPaced()
			unix.Close(udp4)
			unix.Close(udp6)
			mu.Lock()
			for _, fd := range tcps {
				unix.Close(fd) // no more SYN retransmissions
			}
			mu.Unlock()
			if err, ok := failed.Load().(error); ok {
				t.Errorf("load: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func sockaddrOf(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

// guard drops, in the client namespace, anything that would leave by
// another device than the test's veths (there is none; this says so).
func guard(t *testing.T, client *nstest.NS, devs ...string) {
	t.Helper()
	set := `"lo"`
	for _, d := range devs {
		set += `, "` + d + `"`
	}
	client.Sh(t, "nft add table inet kdrop_guard")
	client.Sh(t, "nft add chain inet kdrop_guard out { type filter hook output priority 0 ; }")
	nstest.Run(t, "ip", "netns", "exec", client.Name, "nft", "add", "rule", "inet", "kdrop_guard", "out",
		"oifname", "!=", "{ "+set+" }", "counter", "drop")
}

const (
	aIP, aIP6 = "198.18.10.2", "fd00:18:10::2"
	bIP, bIP6 = "198.18.11.2", "fd00:18:11::2"
)

func ap(s string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(s), port)
}

// TestRulesNamedAndCounted is the main scenario.
func TestRulesNamedAndCounted(t *testing.T) {
	needNft(t)
	client, nsA, nsB := nstest.New(t, "nfc"), nstest.New(t, "nfa"), nstest.New(t, "nfb")
	devA, _ := nstest.Veth(t, client, "198.18.10.1/24", "fd00:18:10::1/64", nsA, aIP+"/24", aIP6+"/64")
	devB, _ := nstest.Veth(t, client, "198.18.11.1/24", "fd00:18:11::1/64", nsB, bIP+"/24", bIP6+"/64")
	guard(t, client, devA, devB)

	ipt := func(ns *nstest.NS, bin, rule string) {
		t.Helper()
		// the comment is one argument: split around it
		before, comment, _ := strings.Cut(rule, `"`)
		comment, after, _ := strings.Cut(comment, `"`)
		args := append([]string{"netns", "exec", ns.Name, bin}, strings.Fields(before)...)
		args = append(args, comment)
		args = append(args, strings.Fields(after)...)
		nstest.Run(t, "ip", args...)
	}
	// namespace A: iptables-nft, DROP and REJECT, TCP and UDP, IPv4 and IPv6,
	// and two rules dropping the same flow in turn (nth packet).
	ipt(nsA, "iptables", `-A INPUT -p udp --dport 9001 -m comment --comment "A udp drop" -j DROP`)
	ipt(nsA, "iptables", `-A INPUT -p tcp --dport 9002 -m comment --comment "A tcp reject" -j REJECT --reject-with tcp-reset`)
	ipt(nsA, "ip6tables", `-A INPUT -p udp --dport 9003 -m comment --comment "A udp6 reject" -j REJECT`)
	ipt(nsA, "ip6tables", `-A INPUT -p tcp --dport 9004 -m comment --comment "A tcp6 drop" -j DROP`)
	ipt(nsA, "iptables", `-A INPUT -p tcp --dport 9006 -m comment --comment "A tcp4 drop" -j DROP`)
	ipt(nsA, "iptables", `-A INPUT -p udp --dport 9005 -m statistic --mode nth --every 2 --packet 0 -m comment --comment "A every 2nd" -j DROP`)
	ipt(nsA, "iptables", `-A INPUT -p udp --dport 9005 -m comment --comment "A the rest" -j DROP`)
	// namespace B: iptables-nft REJECT, and a native table with a counted
	// rule and a rule without a counter.
	ipt(nsB, "iptables", `-A INPUT -p udp --dport 9101 -m comment --comment "B udp reject" -j REJECT`)
	nft := func(ns *nstest.NS, args ...string) {
		t.Helper()
		nstest.Run(t, "ip", append([]string{"netns", "exec", ns.Name, "nft"}, args...)...)
	}
	nft(nsB, "add", "table", "inet", "kd")
	nft(nsB, "add", "chain", "inet", "kd", "in", "{ type filter hook input priority -10 ; }")
	nft(nsB, "add", "rule", "inet", "kd", "in", "udp", "dport", "9102", "counter", "drop", "comment", `"B native counted"`)
	nft(nsB, "add", "rule", "inet", "kd", "in", "tcp", "dport", "9103", "drop", "comment", `"B native no counter"`)

	h := startHarness(t, Config{Interval: 100 * time.Millisecond, SummarySpan: 400 * time.Millisecond},
		// No reason filter: kernels before 5.17 name no reasons (Wants
		// then goes by nf_hook_slow).
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}},
			RateLimit: 5, SweepInterval: 200 * time.Millisecond})

	targets := []target{
		{"udp", ap(aIP, 9001)}, {"tcp", ap(aIP, 9002)}, {"udp", ap(aIP6, 9003)}, {"tcp", ap(aIP6, 9004)},
		{"udp", ap(aIP, 9005)}, {"tcp", ap(aIP, 9006)},
		{"udp", ap(bIP, 9101)}, {"udp", ap(bIP6, 9102)}, {"tcp", ap(bIP, 9103)},
	}
	stop := load(t, client, targets, 10*time.Millisecond)
	loadStarted := time.Now()

	// While the load runs: every rule is named with its comment and verdict.
	want := map[uint16]struct {
		ns               *nstest.NS
		comment, verdict string
		how              string
	}{
		9001: {nsA, "A udp drop", "DROP", HowCounter},
		9002: {nsA, "A tcp reject", "REJECT tcp-reset", HowCounter},
		9003: {nsA, "A udp6 reject", "REJECT icmp6-port-unreachable", HowCounter},
		9004: {nsA, "A tcp6 drop", "DROP", HowCounter},
		9101: {nsB, "B udp reject", "REJECT icmp-port-unreachable", HowCounter},
		9102: {nsB, "B native counted", "DROP", HowCounter},
		9103: {nsB, "B native no counter", "DROP", HowMatch},
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		seen := map[uint16]bool{}
		ambiguous := false
		for _, x := range h.snapshot() {
			p := x.ev.Dst.Port()
			if w, ok := want[p]; ok && x.rule.Known() && x.rule.Comment == w.comment && x.rule.Verdict == w.verdict &&
				x.rule.How == w.how && x.ev.Netns == w.ns.Inode && x.rule.Backend == BackendNftables {
				seen[p] = true
			}
			if p == 9005 && len(x.rule.Candidates) == 2 && x.rule.Candidates[0].Comment == "A every 2nd" &&
				x.rule.Candidates[1].Comment == "A the rest" {
				ambiguous = true
			}
		}
		if len(seen) == len(want) && ambiguous {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s of load, rules named for ports %v of %d, the two rules of 9005 shown: %v\n%s",
				keys(seen), len(want), ambiguous, dump(h.snapshot()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("while the load ran: every rule named, the two rules of port 9005 both shown")

	time.Sleep(time.Until(loadStarted.Add(3 * time.Second))) // several windows and summaries
	out, missed := h.finish(t, stop)
	summaries := 0
	for _, x := range out {
		if x.ev.Summary && x.rule.Known() {
			summaries++
		}
	}
	if summaries == 0 && !h.noReasons {
		t.Errorf("no summary event was attributed (rate limit 5 per 200 ms, 100 packets/s a flow)")
	}
	// Counts per rule equal the rules' own counters.
	for _, ns := range []*nstest.NS{nsA, nsB} {
		rules := counters(t, ns)
		got := map[string]uint64{}
		// how each rule's events were attributed, said when its count is short
		how := map[string]map[string]uint64{}
		var ambiguous, ambiguousWant uint64
		for _, x := range out {
			if x.ev.Netns != ns.Inode {
				continue
			}
			if x.rule.Known() && len(x.rule.Candidates) == 0 {
				k := key(&x.rule.Ref)
				if how[k] == nil {
					how[k] = map[string]uint64{}
				}
				how[k][x.rule.How] += x.ev.Count
			}
			switch {
			case !x.rule.Known():
				t.Errorf("netns %s: event to %v has no rule: %s", ns.Name, x.ev.Dst, x.rule.Unknown)
			case len(x.rule.Candidates) > 0:
				ambiguous += x.ev.Count
			case x.rule.How == HowCounter || x.rule.How == HowLifetime: // lifetime: read before the baseline, counters from 0
				got[key(&x.rule.Ref)] += x.ev.Count
			}
		}
		for k, n := range rules {
			if strings.Contains(k, "kdrop_guard") {
				continue
			}
			t.Logf("netns %s rule %s: counter %d, kdrop %d", ns.Name, k, n, got[k])
			if nth, rest := lastTwo(rules); ns == nsA && (k == nth || k == rest) {
				// Port 9005's two rules: a window where only one of them
				// moved names it (the flow's first packet: "every 2nd"),
				// the others show both.
				ambiguousWant += n
				ambiguous += got[k]
				if got[k] > n {
					t.Errorf("netns %s rule %s: kdrop named it for %d packets, its counter %d", ns.Name, k, got[k], n)
				}
				continue
			}
			switch short := int64(n) - int64(got[k]) - int64(missed); {
			case got[k] > n:
				t.Errorf("netns %s rule %s: kdrop counted %d packets, the rule's counter %d", ns.Name, k, got[k], n)
			case short > int64(unreported(n)):
				t.Errorf("netns %s rule %s: kdrop counted %d packets, the rule's counter %d (missed by the kernel: %d); its events by how: %v",
					ns.Name, k, got[k], n, missed, how[k])
			case short > 0:
				t.Logf("netns %s rule %s: %d packets counted by the rule were never reported by the kfree_skb tracepoint (see unreported)", ns.Name, k, short)
			}
		}
		if ambiguous > ambiguousWant || ambiguous+missed < ambiguousWant {
			t.Errorf("netns %s: %d packets attributed to either or both rules of port 9005, their counters sum to %d", ns.Name, ambiguous, ambiguousWant)
		}
	}
	t.Logf("attributor: %+v, %d events, %d summaries, %d occurrences missed by the kernel", h.a.Stats(), len(out), summaries, missed)
	if held := h.a.Stats().Held; held != 0 {
		t.Errorf("%d events still held after Close", held)
	}
}

// unreported is how many of a rule's n counted packets the kernel may
// leave out of the kfree_skb tracepoint. Measured on 6.18 with both cores
// saturated: about once in 30 runs, 1 to 4 TCP SYNs (IPv4 and IPv6 alike,
// never UDP) were counted by their DROP rule while neither kdrop nor a
// bpftrace witness on skb:kfree_skb, skb:consume_skb and
// net:netif_receive_skb saw them, with no recursion misses in any program.
// kdrop cannot report a drop the tracepoint never shows; the README's
// limits say so. Anything beyond 1% is kdrop's fault.
func unreported(n uint64) uint64 { return n / 100 }

func keys(m map[uint16]bool) []uint16 {
	var k []uint16
	for p := range m {
		k = append(k, p)
	}
	sort.Slice(k, func(i, j int) bool { return k[i] < k[j] })
	return k
}

func dump(out []attributed) string {
	var b strings.Builder
	for i, x := range out {
		if i > 40 {
			fmt.Fprintf(&b, "… %d more\n", len(out)-i)
			break
		}
		rule := "no rule"
		if x.rule != nil {
			rule = fmt.Sprintf("%+v", *x.rule)
		}
		if x.ct != nil {
			rule += fmt.Sprintf(" conntrack %+v", *x.ct)
		}
		fmt.Fprintf(&b, "netns %d %v→%v at %s count %d summary %v: %s\n", x.ev.Netns, x.ev.Src, x.ev.Dst, x.ev.Location, x.ev.Count, x.ev.Summary, rule)
	}
	return b.String()
}

// needLegacy skips unless iptables-legacy's tools are installed and the
// kernel has ip_tables (loaded from ns, if a module).
func needLegacy(t *testing.T, ns *nstest.NS) {
	t.Helper()
	needNft(t)
	for _, b := range []string{"iptables-legacy", "ip6tables-legacy", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
	exec.Command("ip", "netns", "exec", ns.Name, "iptables-legacy", "-L", "-n").Run() // loads ip_tables if a module
	if _, err := os.Stat("/proc/net/ip_tables_names"); err != nil {
		t.Skip("this kernel has no iptables-legacy (ip_tables): kdrop says so in rule.unknown")
	}
}

// iptables-legacy, where the kernel has it: rules named by table, chain
// and position (a user chain included), counts equal to their counters.
func TestLegacyRulesNamedAndCounted(t *testing.T) {
	client, nsL := nstest.New(t, "nflc"), nstest.New(t, "nfl")
	needLegacy(t, nsL)
	devL, _ := nstest.Veth(t, client, "198.18.12.1/24", "fd00:18:12::1/64", nsL, "198.18.12.2/24", "fd00:18:12::2/64")
	guard(t, client, devL)
	in := func(args ...string) {
		t.Helper()
		nstest.Run(t, "ip", append([]string{"netns", "exec", nsL.Name}, args...)...)
	}
	in("iptables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "9201", "-m", "comment", "--comment", "L udp drop", "-j", "DROP")
	in("iptables-legacy", "-N", "KDROP")
	in("iptables-legacy", "-A", "INPUT", "-j", "KDROP")
	in("iptables-legacy", "-A", "KDROP", "-p", "tcp", "--dport", "9202", "-m", "comment", "--comment", "L tcp reject", "-j", "REJECT", "--reject-with", "tcp-reset")
	in("ip6tables-legacy", "-A", "INPUT", "-p", "udp", "--dport", "9203", "-m", "comment", "--comment", "L udp6 reject", "-j", "REJECT")

	h := startHarness(t, Config{Interval: 100 * time.Millisecond, SummarySpan: 400 * time.Millisecond},
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, RateLimit: 5, SweepInterval: 200 * time.Millisecond})
	stop := load(t, client, []target{{"udp", ap("198.18.12.2", 9201)}, {"tcp", ap("198.18.12.2", 9202)}, {"udp", ap("fd00:18:12::2", 9203)}}, 10*time.Millisecond)
	want := map[string]Ref{
		"L udp drop":    {Family: "ip", Table: "filter", Chain: "INPUT", Position: 1, Comment: "L udp drop", Verdict: "DROP"},
		"L tcp reject":  {Family: "ip", Table: "filter", Chain: "KDROP", Position: 1, Comment: "L tcp reject", Verdict: "REJECT tcp-reset"},
		"L udp6 reject": {Family: "ip6", Table: "filter", Chain: "INPUT", Position: 1, Comment: "L udp6 reject", Verdict: "REJECT icmp6-port-unreachable"},
	}
	time.Sleep(2 * time.Second) // the load runs meanwhile
	out, missed := h.finish(t, stop)
	got := map[string]uint64{}
	for _, x := range out {
		if x.ev.Netns != nsL.Inode {
			continue
		}
		r := x.rule
		w, ok := want[r.Comment]
		if !r.Known() || !ok || r.Backend != BackendLegacy || r.How != HowCounter {
			t.Errorf("event to %v: rule %+v", x.ev.Dst, *r)
			continue
		}
		w.Packets = r.Packets
		if r.Ref != w {
			t.Errorf("event to %v: got %+v, want %+v", x.ev.Dst, r.Ref, w)
		}
		got[r.Comment] += x.ev.Count
	}
	// the rules' own counters: [packets:bytes] ... --comment "..."
	for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
		for _, l := range strings.Split(nstest.Run(t, "ip", "netns", "exec", nsL.Name, save, "-c"), "\n") {
			_, c, ok := strings.Cut(l, `--comment "`)
			if !ok || !strings.HasPrefix(l, "[") {
				continue
			}
			c, _, _ = strings.Cut(c, `"`)
			var n uint64
			fmt.Sscanf(l, "[%d:", &n)
			t.Logf("%s: counter %d, kdrop %d", c, n, got[c])
			if got[c] > n || got[c]+missed < n || n == 0 {
				t.Errorf("%s: kdrop counted %d, the rule's counter %d (missed by the kernel: %d)", c, got[c], n, missed)
			}
		}
	}
}
