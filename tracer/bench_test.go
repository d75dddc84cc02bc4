package tracer

// `make bench`: what kdrop's programs cost the kernel, per invocation
// (kernel.bpf_stats: run_time_ns / run_cnt), on the fast path (nothing to
// report) and on the event path, each beside an empty program of the same
// attach type on the same hook, run by the same packets. Only the ratio
// means much: absolute numbers depend on the machine (and on emulation in
// a VM, where the fentry/kprobe hooks are measured).

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// baseline attaches the empty program of a mode to target.
func baseline(b *testing.B, mode Mode, target string) *ebpf.Program {
	spec, err := loadKdrop()
	if err != nil {
		b.Fatal(err)
	}
	name := "baseline_" + string(mode)
	ps := spec.Programs[name]
	if mode == ModeFentry || mode == ModeTPBTF {
		ps.AttachTo = target
	}
	prog, err := loadProgram(spec, name, nil)
	if err != nil {
		b.Fatalf("loading %s for %s: %v", name, target, err)
	}
	b.Cleanup(func() { prog.Close() })
	l, err := attach(candidate{mode, name, target}, prog)
	if err != nil {
		b.Fatalf("attaching %s to %s: %v", name, target, err)
	}
	b.Cleanup(func() { l.Close() })
	return prog
}

func perRun(b *testing.B, p *ebpf.Program) (float64, uint64) {
	st, err := p.Stats()
	if err != nil {
		b.Fatal(err)
	}
	if st.RunCount == 0 {
		return 0, 0
	}
	return float64(st.Runtime.Nanoseconds()) / float64(st.RunCount), st.RunCount
}

// measure runs load with stats on and reports kdrop's program against the
// baseline program, both attached at the same hook.
func measure(b *testing.B, tr *Tracer, hook string, mode Mode, target string, load func(n int)) {
	prog := tr.program(hook)
	if prog == nil {
		b.Fatalf("hook %s did not attach: %v", hook, tr.Hooks())
	}
	for _, h := range tr.Hooks() {
		if h.Hook == hook && h.Mode != mode {
			b.Fatalf("hook %s attached as %s, benchmark wants %s", hook, h.Mode, mode)
		}
	}
	base := baseline(b, mode, target)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enabling kernel.bpf_stats: %v", err)
	}
	defer stats.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, func(*Event) {}) }() // drain the ring buffer
	b.ResetTimer()
	load(b.N)
	b.StopTimer()
	cancel()
	<-done
	ns, runs := perRun(b, prog)
	baseNs, baseRuns := perRun(b, base)
	if runs == 0 || baseRuns == 0 {
		b.Fatalf("no program runs recorded (kdrop %d, baseline %d)", runs, baseRuns)
	}
	b.ReportMetric(ns, "ns/run")
	b.ReportMetric(baseNs, "empty-ns/run")
	b.ReportMetric(ns/baseNs, "x-empty")
	if b.N < 100 { // the framework's first, calibrating run
		return
	}
	kernel := os.Getenv("KDROP_VM_KERNEL")
	if kernel == "" {
		kernel = "host"
	}
	fmt.Printf("BPFCOST kernel=%s hook=%s mode=%s path=%s ns/run=%.1f empty=%.1f ratio=%.2f runs=%d\n",
		kernel, hook, mode, strings.TrimPrefix(b.Name(), "Benchmark"), ns, baseNs, ns/baseNs, runs)
}

func benchTracer(b *testing.B, opts Options) *Tracer {
	if opts.Modes == nil {
		opts.Modes = testModes(b)
	}
	tr, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { tr.Close() })
	return tr
}

func dropTarget(b *testing.B) (*nstest.NS, func(n int)) {
	ns := nstest.New(b, "bench")
	ns.Sh(b, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	return ns, func(n int) { ns.SendUDP(b, "127.0.0.1", 9999, n) }
}

// kfree_skb, fast path: every drop has a reason kdrop was told to skip.
func BenchmarkKfreeSkbFastPath(b *testing.B) {
	for _, mode := range []Mode{ModeTPBTF, ModeRawTP} {
		b.Run(string(mode), func(b *testing.B) {
			ns, load := dropTarget(b)
			tr := benchTracer(b, Options{Modes: []Mode{mode}, Filter: Filter{Types: []EventType{Drop}, Reasons: []string{"TCP_CSUM"}, Netns: ns.Inode}})
			measure(b, tr, "kfree_skb", mode, "kfree_skb", load)
		})
	}
}

// kfree_skb, counted-only path: every drop is counted in its flow, and the
// rate limit (1 per interval) keeps all but the first from the ring buffer:
// what kdrop costs at its defaults in a storm.
func BenchmarkKfreeSkbCountedPath(b *testing.B) {
	for _, mode := range []Mode{ModeTPBTF, ModeRawTP} {
		b.Run(string(mode), func(b *testing.B) {
			ns, load := dropTarget(b)
			tr := benchTracer(b, Options{Modes: []Mode{mode}, RateLimit: 1, Filter: Filter{Types: []EventType{Drop}, Netns: ns.Inode}})
			measure(b, tr, "kfree_skb", mode, "kfree_skb", load)
		})
	}
}

// kfree_skb, event path: every drop is reported (no rate limit).
func BenchmarkKfreeSkbEventPath(b *testing.B) {
	for _, mode := range []Mode{ModeTPBTF, ModeRawTP} {
		b.Run(string(mode), func(b *testing.B) {
			ns, load := dropTarget(b)
			tr := benchTracer(b, Options{Modes: []Mode{mode}, Filter: Filter{Types: []EventType{Drop}, Netns: ns.Inode}})
			measure(b, tr, "kfree_skb", mode, "kfree_skb", load)
		})
	}
}

// icmp_send: every call is an event (UDP to a closed port). What is
// measured is the cost of an error sent, so the limits that would keep most
// of them from being sent are lifted here, and only here.
func BenchmarkIcmpSendEventPath(b *testing.B) {
	ns := nstest.New(b, "bench")
	ns.Sysctl(b, "net.ipv4.icmp_ratelimit", "0", "net.ipv4.icmp_msgs_per_sec", "10000000")
	tr := benchTracer(b, Options{Filter: Filter{Types: []EventType{Unreachable}}})
	h := tr.hooks[0]
	measure(b, tr, "icmp_send", h.Mode, h.Target, func(n int) { ns.SendUDP(b, "127.0.0.1", 7777, n) })
}

// net_dev_queue, fast path: where it carries the ICMP errors (no function
// tracing), kdrop's program runs for every packet any device queues; here
// ordinary UDP packets, none of them an ICMP error.
func BenchmarkNetDevQueueFastPath(b *testing.B) {
	_, load := dropTarget(b)
	tr := benchTracer(b, Options{Filter: Filter{Types: []EventType{Unreachable}}})
	h := tr.hooks[0]
	if h.Target != "net_dev_queue" {
		b.Skipf("ICMP errors are caught at %s here, not net_dev_queue", h.Target)
	}
	measure(b, tr, "icmp_send", h.Mode, h.Target, load)
}

// tcp_conn_request, fast path: SYNs to a listener whose queues have room
// (every connection is accepted and closed).
func BenchmarkTcpConnRequestFastPath(b *testing.B) {
	ns := nstest.New(b, "bench")
	tr := benchTracer(b, Options{Filter: Filter{Types: []EventType{ListenOverflow}}})
	h := tr.hooks[0]
	if h.Mode == ModeSockDiag || h.Mode == "" {
		b.Skipf("tcp_conn_request cannot be hooked on this kernel (%s): measured in a VM by make bench", strings.Join(h.Failed, "; "))
	}
	ln := ns.ListenNoAccept(b, "127.0.0.1", 8080, 1024)
	measure(b, tr, "tcp_conn_request", h.Mode, h.Target, func(n int) {
		for i := 0; i < n; i++ {
			c := ns.ConnectMany(b, "127.0.0.1", 8080, 1)
			fd, _, err := unix.Accept(ln.FDs[0])
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
			c.Close()
		}
	})
}

// tcp_conn_request, event path: every SYN finds the accept queue full.
func BenchmarkTcpConnRequestEventPath(b *testing.B) {
	ns := nstest.New(b, "bench")
	tr := benchTracer(b, Options{Filter: Filter{Types: []EventType{ListenOverflow}}})
	h := tr.hooks[0]
	if h.Mode == ModeSockDiag || h.Mode == "" {
		b.Skipf("tcp_conn_request cannot be hooked on this kernel (%s): measured in a VM by make bench", strings.Join(h.Failed, "; "))
	}
	ns.ListenNoAccept(b, "127.0.0.1", 8080, 1)
	measure(b, tr, "tcp_conn_request", h.Mode, h.Target, func(n int) {
		// each connect's SYN is refused once (retransmissions come later);
		// in batches, to stay under the open files limit
		for n > 0 {
			batch := min(n, 500)
			ns.ConnectMany(b, "127.0.0.1", 8080, batch).Close()
			n -= batch
		}
	})
}
