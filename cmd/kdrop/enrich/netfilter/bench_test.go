package netfilter

// `make bench`: what naming rules costs. A 10k/s UDP storm to a port that
// the last of 500 iptables-nft rules drops, run twice per rate limit in the
// same namespace: the tracer alone (baseline), then the tracer with the
// Attributor. Reported: this process's CPU (user+system, the netlink reads
// included) per second and per event, the ratio to the baseline, the added
// cost per NETFILTER_DROP event, reads per second, and whether the
// occurrences attributed to the storm's rule equal its counter.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/tracer"
	"github.com/kdrop/kdrop/tracer/nstest"
)

const (
	benchRules    = 500
	benchRate     = 10000 // datagrams per second
	benchDuration = 5 * time.Second
	benchPort     = 9999
)

// The sender runs as a child inside the namespace: its CPU is not ours.
func init() {
	if d := os.Getenv("KDROP_NF_SENDER"); d != "" {
		dur, _ := time.ParseDuration(d)
		fmt.Println(send(dur))
		os.Exit(0)
	}
}

// send paces benchRate datagrams a second to 127.0.0.1:benchPort, in
// batches every millisecond, for d; it returns how many it sent.
func send(d time.Duration) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		panic(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: benchPort}); err != nil {
		panic(err)
	}
	start, sent := time.Now(), 0
	for el := time.Duration(0); el < d; el = time.Since(start) {
		for due := int(el.Seconds() * benchRate); sent < due; sent++ {
			unix.Write(fd, []byte("kdrop"))
		}
		time.Sleep(time.Millisecond)
	}
	return sent
}

func cpuNow() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type stormResult struct {
	cpu                 time.Duration // this process, over the storm
	events, occurrences uint64        // NETFILTER_DROP lines and what they stand for
	named               uint64        // occurrences attributed to the storm's rule
	reads, unknown      uint64
	sent                int
}

func runStorm(b *testing.B, ns *nstest.NS, rateLimit uint32, attribute bool) stormResult {
	b.Helper()
	nstest.Run(b, "ip", "netns", "exec", ns.Name, "iptables", "-Z", "INPUT")
	var r stormResult
	var events, occ, named atomic.Uint64
	var a *Attributor[tracer.Event]
	if attribute {
		a = New(Config{}, func(ev *tracer.Event, rule *Rule, _ *conntrack.Drop) {
			if rule.Comment == "storm" {
				named.Add(ev.Count)
			}
		})
	}
	tr, err := tracer.New(tracer.Options{Filter: tracer.Filter{Netns: ns.Inode, Types: []tracer.EventType{tracer.Drop}},
		RateLimit: rateLimit})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tr.Run(ctx, func(e *tracer.Event) {
			if !Wants(e) {
				return
			}
			events.Add(1)
			occ.Add(e.Count)
			if a != nil {
				if rule := a.Submit(e, *e); rule != nil && rule.Comment == "storm" {
					named.Add(e.Count)
				}
			}
		})
	}()
	time.Sleep(200 * time.Millisecond)
	self, _ := os.Executable()
	gen := exec.Command("ip", "netns", "exec", ns.Name, self)
	gen.Env = append(os.Environ(), "KDROP_NF_SENDER="+benchDuration.String())
	c0 := cpuNow()
	out, err := gen.Output()
	r.cpu = cpuNow() - c0
	if err != nil {
		b.Fatalf("sender: %v", err)
	}
	r.sent, _ = strconv.Atoi(strings.TrimSpace(string(out)))
	time.Sleep(300 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if a != nil {
		a.Close()
		r.reads, r.unknown = a.Stats().Reads, a.Stats().Unknown
	}
	r.events, r.occurrences, r.named = events.Load(), occ.Load(), named.Load()
	return r
}

// storm's rule counter, by iptables -L -v -x (its comment is "storm").
func stormCounter(b *testing.B, ns *nstest.NS) uint64 {
	out := nstest.Run(b, "ip", "netns", "exec", ns.Name, "iptables", "-L", "INPUT", "-v", "-x", "-n")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "/* storm */") {
			n, _ := strconv.ParseUint(strings.Fields(l)[0], 10, 64)
			return n
		}
	}
	b.Fatalf("no storm rule in\n%s", out)
	return 0
}

func BenchmarkRuleStorm(b *testing.B) {
	needNft(b)
	ns := nstest.New(b, "nfstorm")
	var rules strings.Builder
	rules.WriteString("*filter\n:INPUT ACCEPT [0:0]\n")
	for i := 0; i < benchRules-1; i++ {
		fmt.Fprintf(&rules, "-A INPUT -p udp --dport %d -m comment --comment \"rule %d\" -j DROP\n", 20000+i, i)
	}
	fmt.Fprintf(&rules, "-A INPUT -p udp --dport %d -m comment --comment \"storm\" -j DROP\nCOMMIT\n", benchPort)
	restore := exec.Command("ip", "netns", "exec", ns.Name, "iptables-restore")
	restore.Stdin = strings.NewReader(rules.String())
	if out, err := restore.CombinedOutput(); err != nil {
		b.Fatalf("iptables-restore: %v\n%s", err, out)
	}
	for i := 0; i < b.N; i++ {
		for _, rl := range []uint32{100, 0} {
			base := runStorm(b, ns, rl, false)
			with := runStorm(b, ns, rl, true)
			counter := stormCounter(b, ns)
			perSec := func(r stormResult) float64 { return r.cpu.Seconds() / benchDuration.Seconds() * 100 }
			added := float64(with.cpu-base.cpu) / float64(max(with.events, 1))
			fmt.Printf("RULESTORM rate-limit %d: %d rules, %d datagrams/s; baseline CPU %.1f%% of a core (%d events); with rules %.1f%% (%d events), ratio %.2f, added %.1f µs per NETFILTER_DROP event, %.1f reads/s; named %d of the rule's %d (unknown: %d events)\n",
				rl, benchRules, with.sent/int(benchDuration.Seconds()), perSec(base), base.events, perSec(with), with.events,
				with.cpu.Seconds()/max(base.cpu.Seconds(), 1e-9), added/1e3, float64(with.reads)/benchDuration.Seconds(),
				with.named, counter, with.unknown)
			if with.named != counter {
				b.Errorf("rate limit %d: %d occurrences named the storm's rule, its counter says %d", rl, with.named, counter)
			}
		}
	}
}

// BenchmarkRead500 is one read of a namespace with 500 drop rules:
// discovery included (the first read), then reads of the known chains.
func BenchmarkRead500(b *testing.B) {
	needNft(b)
	ns := nstest.New(b, "nfread")
	var rules strings.Builder
	rules.WriteString("*filter\n:INPUT ACCEPT [0:0]\n")
	for i := 0; i < benchRules; i++ {
		fmt.Fprintf(&rules, "-A INPUT -p udp --dport %d -m comment --comment \"rule %d\" -j DROP\n", 20000+i, i)
	}
	rules.WriteString("COMMIT\n")
	restore := exec.Command("ip", "netns", "exec", ns.Name, "iptables-restore")
	restore.Stdin = strings.NewReader(rules.String())
	if out, err := restore.CombinedOutput(); err != nil {
		b.Fatalf("iptables-restore: %v\n%s", err, out)
	}
	r := netnsReader{ino: ns.Inode}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rs, err := r.read("/run/netns/" + ns.Name)
		if err != nil {
			b.Fatal(err)
		}
		if len(rs.rules) != benchRules {
			b.Fatalf("read %d rules, want %d", len(rs.rules), benchRules)
		}
	}
}
