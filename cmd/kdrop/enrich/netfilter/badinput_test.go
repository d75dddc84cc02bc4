package netfilter

// Bad input: the rules change while kdrop reads them, a table is deleted
// mid-read, the namespace is gone. Each event still comes out, exactly
// once, with Unknown saying why. The reads are real (netlink, in the
// test's namespaces); the events are made here, as the tracer would.

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// collector is an Attributor over plain events, with a switchable read hook.
type collector struct {
	a    *Attributor[tracer.Event]
	mu   sync.Mutex
	out  []attributed
	hook func(ino uint32, stage string)
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	// reads run nft(8) from the hook: slow under -race on a busy machine,
	// slower under emulation
	c.a = New(Config{Interval: 50 * time.Millisecond, ReadTimeout: 10 * time.Second, MaxWait: slow(15 * time.Second), readHook: func(ino uint32, stage string) {
		c.mu.Lock()
		h := c.hook
		c.mu.Unlock()
		if h != nil {
			h(ino, stage)
		}
	}}, func(ev *tracer.Event, r *Rule, ct *conntrack.Drop) {
		c.mu.Lock()
		c.out = append(c.out, attributed{*ev, r, ct})
		c.mu.Unlock()
	})
	t.Cleanup(c.a.Close)
	return c
}

func (c *collector) setHook(h func(ino uint32, stage string)) {
	c.mu.Lock()
	c.hook = h
	c.mu.Unlock()
}

// submit hands over a NETFILTER_DROP event of the namespace and waits
// (up to 20 s, more in a VM) for it to come out; it fails unless it comes out once.
func (c *collector) submit(t *testing.T, ino uint32, port uint16) *Rule {
	t.Helper()
	ev := tracer.Event{Time: time.Now(), Type: tracer.Drop, Count: 1, Netns: ino, Family: 4, Proto: 17,
		Src: ap("198.18.10.1", 40000), Dst: ap(aIP, port), Reason: "NETFILTER_DROP", Location: "nf_hook_slow+0x9a"}
	if r := c.a.Submit(&ev, ev); r != nil {
		return r
	}
	deadline := time.Now().Add(slow(20 * time.Second))
	for time.Now().Before(deadline) {
		c.mu.Lock()
		var got []*Rule
		for _, x := range c.out {
			if x.ev.Netns == ino && x.ev.Dst.Port() == port && x.ev.Time.Equal(ev.Time) {
				got = append(got, x.rule)
			}
		}
		c.mu.Unlock()
		if len(got) > 1 {
			t.Fatalf("event came out %d times", len(got))
		}
		if len(got) == 1 {
			time.Sleep(100 * time.Millisecond) // and not again
			return got[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("event to port %d not given out within %v (held: %d)", port, slow(20*time.Second), c.a.Stats().Held)
	return nil
}

// slow scales a wait for QEMU's emulation (KDROP_VM_KERNEL is set there).
func slow(d time.Duration) time.Duration {
	if os.Getenv("KDROP_VM_KERNEL") != "" {
		return 5 * d
	}
	return d
}

func nftIn(t *testing.T, ns *nstest.NS, args ...string) {
	t.Helper()
	nstest.Run(t, "ip", append([]string{"netns", "exec", ns.Name, "nft"}, args...)...)
}

func tableWithDrop(t *testing.T, ns *nstest.NS) {
	nftIn(t, ns, "add", "table", "inet", "kd")
	nftIn(t, ns, "add", "chain", "inet", "kd", "in", "{ type filter hook input priority 0 ; }")
	nftIn(t, ns, "add", "rule", "inet", "kd", "in", "udp", "dport", "9001", "counter", "drop", "comment", `"d"`)
}

func TestRulesChangedWhileReading(t *testing.T) {
	needNft(t)
	ns := nstest.New(t, "nfchg")
	tableWithDrop(t, ns)
	c := newCollector(t)
	c.setHook(func(ino uint32, stage string) {
		if ino == ns.Inode && stage == "listed" { // every attempt: a change under the reader
			nftIn(t, ns, "add", "rule", "inet", "kd", "in", "udp", "dport", "7", "counter", "accept")
		}
	})
	r := c.submit(t, ns.Inode, 9001)
	if r.Unknown != errChanged.Error() {
		t.Errorf("rules changed at every read: want unknown %q, got %+v", errChanged, r)
	}
	c.setHook(nil)
	time.Sleep(60 * time.Millisecond)
	if r := c.submit(t, ns.Inode, 9001); !strings.HasPrefix(r.Unknown, whyNoRule) { // read fine: nothing moved
		t.Errorf("after the changes stopped: want unknown %q (read, no counter moved), got %+v", whyNoRule, r)
	}
}

func TestTableDeletedWhileReading(t *testing.T) {
	needNft(t)
	ns := nstest.New(t, "nfdel")
	tableWithDrop(t, ns)
	c := newCollector(t)
	c.setHook(func(ino uint32, stage string) {
		if ino != ns.Inode {
			return
		}
		switch stage {
		case "start": // the retry finds it again…
			if !strings.Contains(nstest.Run(t, "ip", "netns", "exec", ns.Name, "nft", "list", "tables"), "kd") {
				tableWithDrop(t, ns)
			}
		case "listed": // …and loses it again
			nftIn(t, ns, "delete", "table", "inet", "kd")
		}
	})
	r := c.submit(t, ns.Inode, 9001)
	if r.Unknown != errDeleted.Error() {
		t.Errorf("table deleted at every read: want unknown %q, got %+v", errDeleted, r)
	}
}

func TestNamespaceGone(t *testing.T) {
	needNft(t)
	ns := nstest.New(t, "nfgone")
	tableWithDrop(t, ns)
	ino := ns.Inode
	nstest.Run(t, "ip", "netns", "del", ns.Name)
	c := newCollector(t)
	if r := c.submit(t, ino, 9001); r.Unknown != errNetnsGone.Error() {
		t.Errorf("namespace deleted: want unknown %q, got %+v", errNetnsGone, r)
	}
	// no namespace at all, and no event lost when too many wait
	if r := c.submit(t, 0, 9001); r.Unknown != whyNoNetns {
		t.Errorf("netns 0: want %q, got %+v", whyNoNetns, r)
	}
}

// Held events are bounded: past MaxHeld, an event goes out at once.
func TestTooManyWaiting(t *testing.T) {
	var mu sync.Mutex
	n := 0
	block := make(chan struct{})
	a := New(Config{MaxHeld: 3, Interval: 10 * time.Millisecond,
		NetnsPaths: func() map[uint32]string { <-block; return nil }}, // reads stuck
		func(*tracer.Event, *Rule, *conntrack.Drop) { mu.Lock(); n++; mu.Unlock() })
	ev := tracer.Event{Time: time.Now(), Type: tracer.Drop, Count: 1, Netns: 1, Reason: "NETFILTER_DROP"}
	var now []*Rule
	for range 5 {
		if r := a.Submit(&ev, ev); r != nil {
			now = append(now, r)
		}
	}
	if len(now) != 2 || now[0].Unknown != whyTooMany {
		t.Fatalf("5 submitted, 3 may wait: want 2 out at once with %q, got %d", whyTooMany, len(now))
	}
	close(block)
	a.Close()
	if n != 3 {
		t.Errorf("Close gave out %d held events, want 3", n)
	}
}

// Without the capabilities to enter the namespace or read its rules (a
// child of this test as nobody, without capabilities), the event goes out
// unknown: permission denied.
func TestNoPermission(t *testing.T) {
	needNft(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	ns := nstest.New(t, "nfperm")
	tableWithDrop(t, ns)
	self, _ := os.Executable()
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
		self, "-test.run=^TestNoPermissionChild$")
	cmd.Env = append(os.Environ(), "KDROP_NF_PERM_NETNS="+strconv.FormatUint(uint64(ns.Inode), 10)+":/run/netns/"+ns.Name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "UNKNOWN="+errPermission.Error()) {
		t.Errorf("without capabilities: want unknown %q, got\n%s", errPermission, out)
	}
}

// TestNoPermissionChild runs as TestNoPermission's child.
func TestNoPermissionChild(t *testing.T) {
	ino, path, ok := strings.Cut(os.Getenv("KDROP_NF_PERM_NETNS"), ":")
	if !ok {
		t.Skip("run by TestNoPermission")
	}
	n, _ := strconv.ParseUint(ino, 10, 32)
	c := &collector{}
	c.a = New(Config{Interval: 50 * time.Millisecond, NetnsPaths: func() map[uint32]string { return map[uint32]string{uint32(n): path} }},
		func(ev *tracer.Event, r *Rule, ct *conntrack.Drop) {
			c.mu.Lock()
			c.out = append(c.out, attributed{*ev, r, ct})
			c.mu.Unlock()
		})
	defer c.a.Close()
	r := c.submit(t, uint32(n), 9001)
	fmt.Printf("UNKNOWN=%s\n", r.Unknown)
}
