package netfilter

// What kdrop remembers of a namespace is keyed by its inode number, which
// the kernel gives to the next namespace once one is gone. A new
// namespace under a known number starts afresh: its rules are read from
// it, not compared with the old one's.

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// reuseInode creates namespaces until one gets inode ino (the kernel
// hands out the lowest free number), deleting the others.
func reuseInode(t *testing.T, ino uint32) *nstest.NS {
	t.Helper()
	deadline := time.Now().Add(slow(20 * time.Second))
	for time.Now().Before(deadline) {
		ns := nstest.New(t, "nfre2")
		if ns.Inode == ino {
			return ns
		}
		exec.Command("ip", "netns", "del", ns.Name).Run()
		time.Sleep(50 * time.Millisecond) // the old namespace is freed asynchronously
	}
	t.Fatalf("no new namespace got inode %d within 20 s", ino)
	return nil
}

func TestReusedNetnsInode(t *testing.T) {
	needNft(t)
	h := startHarness(t, Config{Interval: 100 * time.Millisecond},
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})

	ns1 := nstest.New(t, "nfre1")
	nstest.Run(t, "ip", "netns", "exec", ns1.Name, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "1111", "-j", "DROP")
	ino := ns1.Inode
	ns1.SendUDP(t, "127.0.0.1", 1111, 1)
	waitFor(t, h, func(x attributed) bool { return x.ev.Netns == ino && x.rule.Known() }, "the first namespace's drop")
	nstest.Run(t, "ip", "netns", "del", ns1.Name)

	ns2 := reuseInode(t, ino)
	nstest.Run(t, "ip", "netns", "exec", ns2.Name, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "2222",
		"-m", "comment", "--comment", "X2 rule", "-j", "DROP")
	start := len(h.snapshot())
	// traffic keeps running: one datagram every 300 ms, checked as it goes
	for i := range 8 {
		ns2.SendUDP(t, "127.0.0.1", 2222, 1)
		waitFor(t, h, func(x attributed) bool {
			return x.ev.Netns == ino && x.ev.Dst.Port() == 2222 && countTo(h, ino, 2222) > i
		},
			"drop %d in the new namespace", i+1)
		time.Sleep(300 * time.Millisecond)
	}
	out, _ := h.finish(t, func() {})
	var named uint64
	for _, x := range out[start:] {
		if x.ev.Netns != ino || x.ev.Dst.Port() != 2222 {
			continue
		}
		if r := x.rule; !r.Known() || r.Comment != "X2 rule" || len(r.Candidates) > 0 || r.Packets != x.ev.Count {
			t.Errorf("drop in the new namespace under inode %d: %+v", ino, *r)
			continue
		}
		named += x.ev.Count
	}
	c := iptCounter(t, ns2, "iptables-save", "X2 rule")
	t.Logf("new namespace under inode %d: rule counter %d, kdrop named it for %d", ino, c, named)
	if named != c || c != 8 {
		t.Errorf("rule \"X2 rule\": counter %d, kdrop named it for %d, 8 sent", c, named)
	}
}

// waitFor waits (up to 10 s) for an event that ok accepts.
func waitFor(t *testing.T, h *harness, ok func(attributed) bool, what string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(slow(10 * time.Second))
	for time.Now().Before(deadline) {
		for _, x := range h.snapshot() {
			if ok(x) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("waiting for "+what+": not within 10 s\n%s", append(args, dump(h.snapshot()))...)
}

// countTo is how many drops to port came out in namespace ino.
func countTo(h *harness, ino uint32, port uint16) int {
	n := 0
	for _, x := range h.snapshot() {
		if x.ev.Netns == ino && x.ev.Dst.Port() == port {
			n += int(x.ev.Count)
		}
	}
	return n
}

// iptCounter is the packets of the rule with the comment, read with
// save -c (iptables-save, iptables-legacy-save…) in the namespace.
func iptCounter(t *testing.T, ns *nstest.NS, save, comment string) uint64 {
	t.Helper()
	for _, l := range strings.Split(nstest.Run(t, "ip", "netns", "exec", ns.Name, save, "-c"), "\n") {
		_, c, ok := strings.Cut(l, `--comment `)
		if !ok || !strings.HasPrefix(l, "[") {
			continue
		}
		if q, ok := strings.CutPrefix(c, `"`); ok {
			c, _, _ = strings.Cut(q, `"`)
		} else {
			c = strings.Fields(c)[0]
		}
		if c != comment {
			continue
		}
		var n uint64
		fmt.Sscanf(l, "[%d:", &n)
		return n
	}
	t.Fatalf("%s: no rule with comment %q", save, comment)
	return 0
}

// sporadic drops a rule, one after each quiet spell longer than Keep: every
// one names that rule, moved by one packet, though both rules' lifetime
// counters are not zero (the baseline is kept, and taken when the
// namespace is first seen, before its first drop).
func TestBaselineAcrossQuietSpells(t *testing.T) {
	needNft(t)
	ns := quietRules(t)
	h := startHarness(t, Config{Interval: 100 * time.Millisecond, Keep: 300 * time.Millisecond, Baseline: 200 * time.Millisecond},
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})
	time.Sleep(600 * time.Millisecond) // a baseline scan finds the namespace
	for i, port := range []uint16{7001, 7001, 7002, 7001} {
		n := countTo(h, ns.Inode, port)
		ns.SendUDP(t, "127.0.0.1", int(port), 1)
		waitFor(t, h, func(attributed) bool { return countTo(h, ns.Inode, port) > n }, "drop %d", i+1)
		time.Sleep(time.Second) // quiet, longer than Keep
	}
	out, _ := h.finish(t, func() {})
	checkQuiet(t, ns, out, map[string]uint64{"Q a": 5, "Q b": 5}, 3, 1)
}

// Without a baseline (none taken), a namespace's first drop ever is
// attributed by lifetime counters, and says so; the next by what moved.
func TestFirstDropLifetime(t *testing.T) {
	needNft(t)
	ns := quietRules(t)
	h := startHarness(t, Config{Interval: 100 * time.Millisecond, Baseline: -1},
		tracer.Options{Filter: tracer.Filter{Types: []tracer.EventType{tracer.Drop}}, SweepInterval: 200 * time.Millisecond})
	ns.SendUDP(t, "127.0.0.1", 7001, 1)
	waitFor(t, h, func(x attributed) bool { return x.ev.Netns == ns.Inode }, "the first drop")
	first := h.snapshot()
	var r *Rule
	for _, x := range first {
		if x.ev.Netns == ns.Inode {
			r = x.rule
		}
	}
	if r.How != HowLifetime || r.Comment != "Q a" || r.Packets != 6 {
		t.Errorf("first drop ever, no baseline: want how %q, rule \"Q a\" with its lifetime count 6, got %+v", HowLifetime, *r)
	}
	time.Sleep(time.Second)
	ns.SendUDP(t, "127.0.0.1", 7001, 1)
	waitFor(t, h, func(attributed) bool { return countTo(h, ns.Inode, 7001) > 1 }, "the second drop")
	out, _ := h.finish(t, func() {})
	checkQuiet(t, ns, out[len(first):], map[string]uint64{"Q a": 6, "Q b": 5}, 1, 0)
}

// quietRules: a namespace with two iptables-nft DROP rules whose counters
// are 5 each before kdrop starts.
func quietRules(t *testing.T) *nstest.NS {
	ns := nstest.New(t, "nfq")
	for _, r := range [][]string{{"7001", "Q a"}, {"7002", "Q b"}} {
		nstest.Run(t, "ip", "netns", "exec", ns.Name, "iptables", "-A", "INPUT", "-p", "udp", "--dport", r[0],
			"-m", "comment", "--comment", r[1], "-j", "DROP")
	}
	ns.SendUDP(t, "127.0.0.1", 7001, 5)
	ns.SendUDP(t, "127.0.0.1", 7002, 5)
	return ns
}

// checkQuiet: every drop of out in ns names its rule by counter, one
// packet; the counts per rule are the counters' moves since base.
func checkQuiet(t *testing.T, ns *nstest.NS, out []attributed, base map[string]uint64, wantA, wantB uint64) {
	t.Helper()
	got := map[string]uint64{}
	for _, x := range out {
		if x.ev.Netns != ns.Inode {
			continue
		}
		want := map[uint16]string{7001: "Q a", 7002: "Q b"}[x.ev.Dst.Port()]
		if r := x.rule; r.How != HowCounter || r.Comment != want || r.Packets != 1 {
			t.Errorf("drop to %v: want %q by counter, 1 packet; got %+v", x.ev.Dst, want, *r)
			continue
		}
		got[x.rule.Comment] += x.ev.Count
	}
	for c, w := range map[string]uint64{"Q a": wantA, "Q b": wantB} {
		n := iptCounter(t, ns, "iptables-save", c) - base[c]
		t.Logf("%s: counter moved %d, kdrop %d", c, n, got[c])
		if got[c] != n || n != w {
			t.Errorf("%s: counter moved %d (%d sent), kdrop named it for %d", c, n, w, got[c])
		}
	}
}

// iptables-legacy rules have no handle: a rule inserted first moves the
// others down, and each is still known by what it is. One datagram to the
// new rule names it alone, one packet; the old rule, now second (and
// matching every datagram, as far as kdrop can tell), did not move.
func TestLegacyRuleInsertedBefore(t *testing.T) {
	ns := nstest.New(t, "nflins")
	needLegacy(t, ns)
	in := func(args ...string) { nstest.Run(t, "ip", append([]string{"netns", "exec", ns.Name}, args...)...) }
	// every datagram (statistic: kdrop cannot rule it out by matching)
	in("iptables-legacy", "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode", "nth", "--every", "1", "--packet", "0",
		"-m", "comment", "--comment", "L drop A", "-j", "DROP")
	ns.SendUDP(t, "127.0.0.1", 7100, 5)
	h := baselined(t)
	in("iptables-legacy", "-I", "INPUT", "1", "-p", "udp", "--dport", "7101", "-m", "comment", "--comment", "new first", "-j", "REJECT")
	time.Sleep(300 * time.Millisecond)
	for i, port := range []uint16{7101, 7100, 7101, 7100} {
		n := countTo(h, ns.Inode, port)
		ns.SendUDP(t, "127.0.0.1", int(port), 1)
		waitFor(t, h, func(attributed) bool { return countTo(h, ns.Inode, port) > n }, "drop %d", i+1)
		time.Sleep(300 * time.Millisecond)
	}
	out, _ := h.finish(t, func() {})
	got := map[string]uint64{}
	for _, x := range out {
		if x.ev.Netns != ns.Inode {
			continue
		}
		want := map[uint16]Ref{
			7101: {Family: "ip", Table: "filter", Chain: "INPUT", Position: 1, Comment: "new first", Verdict: "REJECT icmp-port-unreachable", Packets: 1},
			7100: {Family: "ip", Table: "filter", Chain: "INPUT", Position: 2, Comment: "L drop A", Verdict: "DROP", Packets: 1},
		}[x.ev.Dst.Port()]
		if r := x.rule; r.How != HowCounter || r.Ref != want || r.Backend != BackendLegacy {
			t.Errorf("drop to %v: want %+v by counter, got %+v", x.ev.Dst, want, *r)
			continue
		}
		got[x.rule.Comment] += x.ev.Count
	}
	for c, base := range map[string]uint64{"new first": 0, "L drop A": 5} {
		n := iptCounter(t, ns, "iptables-legacy-save", c) - base
		t.Logf("%s: counter moved %d, kdrop %d", c, n, got[c])
		if got[c] != n || n != 2 {
			t.Errorf("%s: counter moved %d (2 sent), kdrop named it for %d", c, n, got[c])
		}
	}
}
