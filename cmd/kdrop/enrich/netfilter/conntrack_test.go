package netfilter

// Real kernel, real packets: drops conntrack caused, told apart from a
// rule's, counted against the kernel's own conntrack statistics
// (/proc/net/stat/nf_conntrack of the namespace, what `conntrack -S`
// prints), read with no code under test. The traffic keeps running while
// the test compares: the statistics are read in a quiet moment between
// two of its bursts, and kdrop's events up to that moment are counted.

import (
	"encoding/binary"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// ctStats reads /proc/net/stat/nf_conntrack inside ns, each column summed
// over CPUs ("entries" is the namespace's count, the same on every line).
func ctStats(t *testing.T, ns *nstest.NS) map[string]uint64 {
	t.Helper()
	var b []byte
	ns.In(t, func() {
		var err error
		if b, err = os.ReadFile("/proc/thread-self/net/stat/nf_conntrack"); err != nil {
			t.Fatalf("conntrack statistics of %s: %v", ns.Name, err)
		}
	})
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	head := strings.Fields(lines[0])
	sum := map[string]uint64{}
	for _, l := range lines[1:] {
		for i, f := range strings.Fields(l) {
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil || i >= len(head) {
				t.Fatalf("conntrack statistics of %s: bad line %q", ns.Name, l)
			}
			if head[i] == "entries" {
				sum[head[i]] = v
			} else {
				sum[head[i]] += v
			}
		}
	}
	return sum
}

// ctNamed sums the occurrences of ns's events up to before that kdrop
// named conntrack cause, and returns the other NETFILTER_DROP events.
func ctNamed(out []attributed, ns *nstest.NS, before time.Time, cause string) (n uint64, named, others []attributed) {
	for _, x := range out {
		if x.ev.Netns != ns.Inode || !x.ev.Time.Before(before) {
			continue
		}
		if x.ct != nil && x.ct.Cause == cause {
			n += x.ev.Count
			named = append(named, x)
		} else {
			others = append(others, x)
		}
	}
	return n, named, others
}

// ctConfig is the attributor's configuration in these tests: reads every
// 100 ms, and ctnetlink loaded beforehand, so that a first read does not
// wait for the kernel to load a module (seconds under emulation).
func ctConfig() Config {
	exec.Command("modprobe", "nf_conntrack_netlink").Run() // built in, or loaded on demand anyway
	return Config{Interval: 100 * time.Millisecond, MaxWait: slow(2 * time.Second)}
}

// quietRead waits until at, then reads the counters (read) until two
// reads in a row agree on every drop counter: nothing was dropped between
// them, so every drop before readAt (taken between the two) is in the
// counters and none after it, however the traffic is timed (SYNs are
// retransmitted every second on kernels with tcp_syn_linear_timeouts,
// at 1, 3, 7 s before). It gives the attributor time to give out what
// came before readAt, and returns the counters, readAt and kdrop's events
// so far. The traffic keeps running throughout.
func quietRead(t *testing.T, h *harness, at time.Time, read func() map[string]uint64) (map[string]uint64, time.Time, []attributed) {
	t.Helper()
	time.Sleep(time.Until(at))
	deadline := time.Now().Add(slow(20 * time.Second))
	for prev := read(); ; {
		readAt := time.Now()
		cur := read()
		same := true
		for _, k := range []string{"insert_failed", "drop", "early_drop", "invalid", "rule"} {
			same = same && prev[k] == cur[k]
		}
		if same {
			time.Sleep(slow(700 * time.Millisecond)) // reads every 100 ms: each event before readAt is out
			return prev, readAt, h.snapshot()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the counters never held still for two reads in 20 s: %v, then %v", prev, cur)
		}
		prev = cur
	}
}

// The SNAT port race: a router masquerades to two ports only, a client
// opens eight connections at once; six lose the race to enter the router's
// conntrack table at every SYN and its retransmissions (insert_failed; the
// 1 s connect delays). kdrop names each of those drops insert-failed,
// with no rule, and its count equals the router's insert_failed, twice
// while the retransmissions go on.
func TestConntrackInsertFailed(t *testing.T) {
	needNft(t)
	r := nstest.NewRouted(t)
	nstest.Run(t, "ip", "netns", "exec", r.Router.Name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", r.RouterToServer,
		"-p", "tcp", "-j", "MASQUERADE", "--to-ports", "40000-40001")
	r.Server.ListenNoAccept(t, nstest.ServerIP, 80, 128)
	h := startHarness(t, ctConfig(),
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})
	before := ctStats(t, r.Router)
	start := time.Now()
	r.Client.ConnectMany(t, nstest.ServerIP, 80, 8) // SYNs retransmitted from 1 s on
	for i, at := range []time.Duration{2 * time.Second, 5 * time.Second} {
		st, readAt, out := quietRead(t, h, start.Add(at), func() map[string]uint64 { return ctStats(t, r.Router) })
		want := st["insert_failed"] - before["insert_failed"]
		got, named, others := ctNamed(out, r.Router, readAt, conntrack.CauseInsertFailed)
		t.Logf("read %d: router insert_failed +%d, drop +%d; kdrop named insert-failed %d times (%d events), %d other events",
			i+1, want, st["drop"]-before["drop"], got, len(named), len(others))
		if want < 6*uint64(i+2) {
			t.Fatalf("read %d: insert_failed moved by %d, want at least %d (6 losers a burst): the race did not happen", i+1, want, 6*(i+2))
		}
		if got != want {
			t.Errorf("read %d: kdrop named %d drops insert-failed, the router's insert_failed moved by %d\n%s", i+1, got, want, dump(inNetns(out, r.Router)))
		}
		for _, x := range named {
			if x.rule != nil {
				t.Errorf("insert-failed drop with a rule: %+v", x.rule)
			}
			if x.ev.Dst != ap(nstest.ServerIP, 80) || x.ct.Max == 0 {
				t.Errorf("insert-failed drop: %v, conntrack %+v", x.ev.Dst, x.ct)
			}
		}
		for _, x := range others {
			t.Errorf("a drop in the router not named insert-failed: %+v rule %+v conntrack %+v", x.ev, x.rule, x.ct)
		}
	}
}

// Both moved: in the same router, a rule drops every second SYN to the
// server before NAT (statistic nth), and the SYNs it lets through race for
// two masquerade ports. Conntrack's drops are named insert-failed exactly
// as often as insert_failed moved, and the rule, whose counter moved in
// the same windows, is shown beside conntrack's cause rather than hidden;
// every other drop is the rule's alone, as often as its counter moved.
func TestConntrackAndRuleBothMoved(t *testing.T) {
	needNft(t)
	r := nstest.NewRouted(t)
	for _, args := range [][]string{
		{"-t", "nat", "-A", "POSTROUTING", "-o", r.RouterToServer, "-p", "tcp", "-j", "MASQUERADE", "--to-ports", "40000-40001"},
		{"-A", "FORWARD", "-p", "tcp", "--dport", "80", "--syn", "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0",
			"-m", "comment", "--comment", "every 2nd SYN", "-j", "DROP"},
	} {
		nstest.Run(t, "ip", append([]string{"netns", "exec", r.Router.Name, "iptables"}, args...)...)
	}
	r.Server.ListenNoAccept(t, nstest.ServerIP, 80, 128)
	h := startHarness(t, ctConfig(),
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})
	ruleDrops := func() uint64 {
		var n uint64
		for k, v := range counters(t, r.Router) {
			if strings.Contains(k, "/FORWARD#") {
				n += v
			}
		}
		return n
	}
	before, ruleBefore := ctStats(t, r.Router), ruleDrops() // no traffic yet
	start := time.Now()
	r.Client.ConnectMany(t, nstest.ServerIP, 80, 12) // SYNs at 0 s, retransmitted at 1, 3, 7 s
	st, readAt, out := quietRead(t, h, start.Add(2*time.Second), func() map[string]uint64 {
		m := ctStats(t, r.Router)
		m["rule"] = ruleDrops()
		return m
	})
	ruleMoved := st["rule"] - ruleBefore
	want := st["insert_failed"] - before["insert_failed"]
	got, named, others := ctNamed(out, r.Router, readAt, conntrack.CauseInsertFailed)
	both, ruleOnly := 0, uint64(0)
	for _, x := range named {
		if x.rule.Known() {
			both++
			if c := append([]Ref{x.rule.Ref}, x.rule.Candidates...); !slices.ContainsFunc(c, func(r Ref) bool { return r.Comment == "every 2nd SYN" }) {
				t.Errorf("insert-failed drop with another rule: %+v", x.rule)
			}
		}
	}
	for _, x := range others {
		if x.ct != nil || !x.rule.Known() || x.rule.Comment != "every 2nd SYN" {
			t.Errorf("a drop neither conntrack's nor the rule's: %+v rule %+v conntrack %+v", x.ev, x.rule, x.ct)
		}
		ruleOnly += x.ev.Count
	}
	t.Logf("router insert_failed +%d, rule +%d; kdrop: insert-failed %d (%d with the rule beside), the rule's alone %d; attributor %+v",
		want, ruleMoved, got, both, ruleOnly, h.a.Stats())
	if want == 0 || ruleMoved == 0 {
		t.Fatalf("insert_failed moved by %d, the rule by %d: want both", want, ruleMoved)
	}
	if got != want || ruleOnly != ruleMoved {
		t.Errorf("kdrop named %d insert-failed (insert_failed +%d) and %d the rule's alone (its counter +%d)\n%s", got, want, ruleOnly, ruleMoved, dump(inNetns(out, r.Router)))
	}
	if both == 0 {
		t.Errorf("no insert-failed drop shows the rule that moved in its window beside it\n%s", dump(inNetns(out, r.Router)))
	}
}

// rawTCP sends a TCP segment with the given flags from ns to dst:dport,
// by a raw socket (the kernel writes the IPv4 header), checksum right.
func rawTCP(t *testing.T, fd int, src, dst [4]byte, sport, dport uint16, flags byte) {
	seg := make([]byte, 20)
	be := binary.BigEndian
	be.PutUint16(seg[0:], sport)
	be.PutUint16(seg[2:], dport)
	be.PutUint32(seg[4:], 1000)
	seg[12] = 5 << 4
	seg[13] = flags
	be.PutUint16(seg[14:], 65535)
	sum := uint32(0)
	pseudo := append(append(append([]byte{}, src[:]...), dst[:]...), 0, unix.IPPROTO_TCP, 0, 20)
	for _, b := range [][]byte{pseudo, seg} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(be.Uint16(b[i:]))
		}
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	be.PutUint16(seg[16:], ^uint16(sum))
	if err := unix.Sendto(fd, seg, 0, &unix.SockaddrInet4{Addr: dst}); err != nil {
		t.Errorf("raw send: %v", err)
	}
}

// kube-proxy's INVALID drop: a router with kube-proxy's KUBE-FORWARD rule
// (-m conntrack --ctstate INVALID -j DROP) forwards TCP segments with
// SYN and FIN set, which conntrack calls INVALID. Both moved: the rule's
// counter and the router's invalid statistic; kdrop names both on every
// drop (the rule, with its Kubernetes meaning, and conntrack cause
// invalid), and its count equals both, while the segments keep coming.
func TestConntrackInvalidRule(t *testing.T) {
	needNft(t)
	r := nstest.NewRouted(t)
	for _, args := range [][]string{{"-N", "KUBE-FORWARD"}, {"-A", "FORWARD", "-j", "KUBE-FORWARD"},
		{"-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}} {
		nstest.Run(t, "ip", append([]string{"netns", "exec", r.Router.Name, "iptables"}, args...)...)
	}
	h := startHarness(t, ctConfig(),
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})
	var fd int
	r.Client.In(t, func() {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP); err != nil {
			t.Fatal(err)
		}
	})
	src, dst := ap(nstest.ClientIP, 0).Addr().As4(), ap(nstest.ServerIP, 0).Addr().As4()
	// bursts of 5 segments every 200 ms until the test ends; the test holds
	// mu to read the counters between two bursts
	var mu sync.Mutex
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Millisecond):
			}
			mu.Lock()
			for j := 0; j < 5; j++ {
				rawTCP(t, fd, src, dst, uint16(41000+j), 9300, 0x03) // SYN|FIN
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(quit); <-done; unix.Close(fd) })
	mu.Lock() // both baselines between the same two bursts
	before, ruleBefore := ctStats(t, r.Router), forwardDrops(t, r.Router)
	mu.Unlock()
	for i := 0; i < 2; i++ {
		time.Sleep(slow(1500 * time.Millisecond))
		mu.Lock()
		// Every burst before the lock is through the router 100 ms later;
		// the next one follows the unlock, after the reads. The middle of
		// that gap parts them, far from both (event times are the kernel's
		// clock on the wall clock, a few ms off under emulation: the next
		// burst, sent right at the unlock, once counted as before it).
		readAt := time.Now().Add(slow(50 * time.Millisecond))
		time.Sleep(slow(100 * time.Millisecond))
		st, rule := ctStats(t, r.Router), forwardDrops(t, r.Router)
		mu.Unlock()
		time.Sleep(slow(700 * time.Millisecond))
		out := h.snapshot()
		invalid, ruleMoved := st["invalid"]-before["invalid"], rule-ruleBefore
		got, named, others := ctNamed(out, r.Router, readAt, conntrack.CauseInvalid)
		t.Logf("read %d: router invalid +%d, KUBE-FORWARD DROP counter +%d; kdrop named invalid %d times (%d events), %d other events",
			i+1, invalid, ruleMoved, got, len(named), len(others))
		if invalid < 5 || invalid != ruleMoved {
			t.Fatalf("read %d: invalid moved by %d, the rule by %d: want equal and at least one burst", i+1, invalid, ruleMoved)
		}
		if got != invalid {
			t.Errorf("read %d: kdrop named %d drops invalid, the router's invalid moved by %d\n%s", i+1, got, invalid, dump(inNetns(out, r.Router)))
		}
		for _, x := range named {
			if !x.rule.Known() || x.rule.Chain != "KUBE-FORWARD" || x.rule.Verdict != "DROP" || x.rule.K8s == nil || x.rule.K8s.Kind != MeaningInvalidConntrack {
				t.Errorf("invalid drop without kube-proxy's rule: %+v", x.rule)
			}
		}
		for _, x := range others {
			t.Errorf("a drop in the router not named invalid: %+v rule %+v conntrack %+v", x.ev, x.rule, x.ct)
		}
	}
}

// forwardDrops is the packet counter of the router's KUBE-FORWARD DROP
// rule, read with nft(8).
func forwardDrops(t *testing.T, ns *nstest.NS) uint64 {
	t.Helper()
	var n uint64
	for k, v := range counters(t, ns) {
		if strings.Contains(k, "/KUBE-FORWARD#") {
			n += v
		}
	}
	return n
}

// A full table: nf_conntrack_max is global, so only in a VM (make
// test-kernels sets KDROP_VM_KERNEL). A server namespace tracks
// connections; 16 established ones fill a table of 16 (all assured, so
// none can be evicted early), and the SYNs of four more are dropped
// ("nf_conntrack: table full, dropping packet"). kdrop names each
// table-full 16/16, with no rule, and its count equals the server's drop
// statistic, twice while the SYNs are retransmitted.
func TestConntrackTableFull(t *testing.T) {
	if os.Getenv("KDROP_VM_KERNEL") == "" {
		t.Skip("nf_conntrack_max is global to the machine: this test runs in a VM (make test-kernels, or tracer/vmtest/run.sh)")
	}
	needNft(t)
	client, server := nstest.New(t, "ctfc"), nstest.New(t, "ctfs")
	nstest.Veth(t, client, "198.18.20.1/24", "", server, "198.18.20.2/24", "")
	nstest.Run(t, "ip", "netns", "exec", server.Name, "iptables", "-A", "INPUT", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT")
	const maxPath, limit = "/proc/sys/net/netfilter/nf_conntrack_max", 16
	old, err := os.ReadFile(maxPath)
	if err != nil {
		t.Fatalf("nf_conntrack_max: %v", err)
	}
	t.Cleanup(func() { os.WriteFile(maxPath, old, 0) })
	if err := os.WriteFile(maxPath, []byte(strconv.Itoa(limit)), 0); err != nil {
		t.Fatalf("nf_conntrack_max: %v", err)
	}
	server.ListenNoAccept(t, "198.18.20.2", 80, 128)
	client.ConnectMany(t, "198.18.20.2", 80, limit)
	deadline := time.Now().Add(slow(10 * time.Second))
	for ctStats(t, server)["entries"] < limit {
		if time.Now().After(deadline) {
			t.Fatalf("the server's table has %d entries after 10 s, want %d", ctStats(t, server)["entries"], limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	h := startHarness(t, ctConfig(),
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})
	before := ctStats(t, server)
	start := time.Now()
	client.ConnectMany(t, "198.18.20.2", 80, 4) // SYNs retransmitted from 1 s on
	for i, at := range []time.Duration{2 * time.Second, 5 * time.Second} {
		st, readAt, out := quietRead(t, h, start.Add(at), func() map[string]uint64 { return ctStats(t, server) })
		want := st["drop"] - before["drop"]
		got, named, others := ctNamed(out, server, readAt, conntrack.CauseTableFull)
		t.Logf("read %d: server drop +%d, early_drop +%d, insert_failed +%d, entries %d; kdrop named table-full %d times (%d events), %d other events",
			i+1, want, st["early_drop"]-before["early_drop"], st["insert_failed"]-before["insert_failed"], st["entries"], got, len(named), len(others))
		if want < 4*uint64(i+2) {
			t.Fatalf("read %d: drop moved by %d, want at least %d: the table did not fill", i+1, want, 4*(i+2))
		}
		if got != want {
			t.Errorf("read %d: kdrop named %d drops table-full, the server's drop statistic moved by %d\n%s", i+1, got, want, dump(inNetns(out, server)))
		}
		for _, x := range named {
			if x.rule != nil || x.ct.Count != limit || x.ct.Max != limit {
				t.Errorf("table-full drop: rule %+v, conntrack %+v (want no rule, 16/16)", x.rule, x.ct)
			}
		}
		for _, x := range others {
			t.Errorf("a drop in the server not named table-full: %+v rule %+v conntrack %+v", x.ev, x.rule, x.ct)
		}
	}
}

// inNetns are the events of ns.
func inNetns(out []attributed, ns *nstest.NS) []attributed {
	var in []attributed
	for _, x := range out {
		if x.ev.Netns == ns.Inode {
			in = append(in, x)
		}
	}
	return in
}
