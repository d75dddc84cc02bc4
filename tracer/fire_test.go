package tracer

// Exact under fire: the load keeps running while the test looks, the way a
// busy node never stops. Counts are checked against iptables' own rule
// counters, read while the traffic runs and again at the end.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"github.com/kdrop/kdrop/tracer/nstest"
	"golang.org/x/sys/unix"
)

func portRange(from, n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = from + i
	}
	return p
}

// snapshot sums what the stream has said so far.
func (c *capture) snapshot(keep func(*Event) bool) (count uint64, lines, summaries int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.events {
		e := &c.events[i]
		if !keep(e) {
			continue
		}
		count += e.Count
		if e.Summary {
			summaries++
		} else {
			lines++
		}
	}
	return
}

// 40 flows, each far above the rate limit, for 10 s: summaries must come
// out every second while the traffic runs, not when it stops, so the
// stream's count trails the kernel's by at most about a second of traffic
// at any time, and equals it at the end.
func TestSummariesWhileTrafficRuns(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 10000:10039 -j DROP")
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}}, RateLimit: 5, SweepInterval: time.Second})
	isFlood := func(e *Event) bool { return e.Type == Drop && e.Dst.Port() >= 10000 && e.Dst.Port() < 10040 }

	type sample struct {
		at           time.Time
		rule, stream uint64
		summaries    int
		sweeps       uint64
	}
	var samples []sample
	stop := r.Client.Flood(t, nstest.ServerIP, portRange(10000, 40))
	start := time.Now()
	for time.Since(start) < 10*time.Second {
		time.Sleep(500 * time.Millisecond)
		rule := r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "")
		stream, _, sums := c.snapshot(isFlood)
		samples = append(samples, sample{time.Now(), rule, stream, sums, c.tr.Sweeps()})
	}
	sent := stop()
	time.Sleep(200 * time.Millisecond)
	evs := c.stop(t)
	rule := r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "")
	total, flood := sum(evs, isFlood)
	last := samples[len(samples)-1]
	t.Logf("%d datagrams sent in %v, rule counted %d, kdrop %d in %d lines (%d summaries while the traffic ran)",
		sent, last.at.Sub(start).Round(time.Millisecond), rule, total, len(flood), last.summaries)

	if rule == 0 || total != rule {
		t.Fatalf("at the end: rule counted %d, kdrop %d", rule, total)
	}
	// While the traffic ran: the count a second and a half ago (one sweep
	// interval, plus the time to read the table) is already in the stream.
	for i, s := range samples {
		var owed uint64
		for _, p := range samples[:i] {
			if s.at.Sub(p.at) >= 1500*time.Millisecond {
				owed = p.rule
			}
		}
		t.Logf("t+%4dms rule %8d stream %8d summaries %4d sweeps %d", s.at.Sub(start).Milliseconds(), s.rule, s.stream, s.summaries, s.sweeps)
		if s.stream < owed {
			t.Errorf("t+%v: the stream says %d, but the rule had counted %d 1.5 s before: summaries are late",
				s.at.Sub(start).Round(time.Millisecond), s.stream, owed)
		}
	}
	// Summaries came out all along, not only once the load stopped.
	if last.summaries < 40*5 {
		t.Errorf("only %d summary lines while 40 flows ran for 10 s above the limit (want one per flow and second)", last.summaries)
	}
	if len(flood) > 40*5*15+last.summaries*2 {
		t.Errorf("%d lines for 40 flows at 5/s over ~10 s: the rate limit did not hold", len(flood))
	}
}

// More distinct flows than the table holds (a port scan), while a storm
// hits one port: the storm stays rate-limited, counts stay exact, the
// coarsening is said, and once the scan stops the table is free again.
func TestFullFlowTableStaysRateLimited(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 20000:21999 -j DROP")
	r.Server.Sh(t, "iptables -A INPUT -p udp --dport 9999 -j DROP")
	const limit, table = 5, 256
	c := startTracer(t, Options{Filter: Filter{Netns: r.Server.Inode, Types: []EventType{Drop}},
		RateLimit: limit, SweepInterval: time.Second, FlowTableSize: table})
	isStorm := func(e *Event) bool { return e.Type == Drop && e.Dst.Port() == 9999 }

	// Only the flood's drops: the namespace's own chatter (IPv6 neighbour
	// discovery…) may be dropped too, and has no rule to count it.
	isFlood := func(e *Event) bool { return e.Type == Drop && e.Proto == unix.IPPROTO_UDP }
	// The scan runs for the first 3 s, the storm for all 6, sampled every
	// 500 ms against the rules' counters in both phases.
	var scanned, stormed uint64
	var sweepsAtScanEnd uint64
	var st Stats
	load := func() func() {
		storm := r.Client.Flood(t, nstest.ServerIP, []int{9999})
		scan := r.Client.Flood(t, nstest.ServerIP, portRange(20000, 2000))
		scanDone := make(chan struct{})
		go func() {
			defer close(scanDone)
			time.Sleep(3 * time.Second)
			scanned = scan()
			sweepsAtScanEnd = c.tr.Sweeps()
		}()
		return func() {
			<-scanDone
			stormed = storm()
			time.Sleep(200 * time.Millisecond)
			var err error
			if st, err = c.tr.Stats(); err != nil {
				t.Error(err)
			}
		}
	}
	evs, total := underLoad(t, c, "flood drops", 6*time.Second, 2*time.Second, load, isFlood, func() uint64 {
		return r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "")
	})
	sweeps := c.tr.Sweeps()
	out := r.Server.IptablesPackets(t, "iptables", "INPUT", "DROP", "")
	if other, o := sum(evs, func(e *Event) bool { return !isFlood(e) }); other > 0 {
		t.Logf("%d other drops in the namespace:\n%s", other, dump(o))
	}
	var stormLines, coarse, lines int
	var lastStorm *Event
	for i := range evs {
		e := &evs[i]
		if e.Coarse != "" {
			coarse++
		}
		if !e.Summary {
			lines++
		}
		if isStorm(e) && !e.Summary {
			stormLines++
			lastStorm = e
		}
	}
	t.Logf("scan %d datagrams over 2000 ports, storm %d to one port; rule counters %d, kdrop %d in %d lines (%d storm lines, %d coarse), %d sweeps, Stats.Coarsened %d",
		scanned, stormed, out, total, lines, stormLines, coarse, sweeps, st.Coarsened)
	if total != out {
		t.Fatalf("counts: rules %d, kdrop %d", out, total)
	}
	if st.Coarsened == 0 || coarse == 0 {
		t.Errorf("the flow table (%d) was overrun but nothing says so: Stats.Coarsened %d, %d coarse lines", table, st.Coarsened, coarse)
	}
	// The storm's flow, or the coarse key it shares when the table was full
	// first: at most the limit each, per sweep interval.
	if max := 2 * limit * int(sweeps+1); stormLines > max {
		t.Errorf("storm of %d drops gave %d lines: want at most %d (limit %d/s, %d intervals)", stormed, stormLines, max, limit, sweeps)
	}
	// Each flow the table holds, plus the coarse key, at most the limit per
	// interval: the rest only counted.
	if max := (table + 2) * limit * int(sweeps+1); lines > max {
		t.Errorf("%d lines in all, want at most %d", lines, max)
	}
	// The scan is over: the table emptied, the storm has its own flow again.
	if lastStorm == nil || lastStorm.Coarse != "" {
		t.Errorf("after the scan stopped (%d sweeps before the end), the storm is still coarsened:\n%s", sweeps-sweepsAtScanEnd, dump([]Event{*lastStorm}))
	}
}

// Event times follow the wall clock even when it moves against
// CLOCK_MONOTONIC (NTP, suspend): the offset is taken again every sweep.
func TestEventTimesReanchored(t *testing.T) {
	reasons, err := LoadReasons(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &Tracer{Reasons: reasons, Symbols: NewSymbolizer(""), somax: newSomaxconns()}
	tr.anchorClock()
	tr.bootNs.Add(int64(time.Hour)) // as if the wall clock had been stepped back an hour since
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	r := rawEvent{TsNs: uint64(ts.Nano()), Type: uint8(Drop)}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&r)), rawEventSize)
	var ev Event
	tr.decode(raw, &ev)
	if d := ev.Time.Sub(time.Now()); d < 59*time.Minute {
		t.Fatalf("test setup: the skewed clock should put the event an hour ahead, got %v", d)
	}
	tr.anchorClock() // what every sweep does
	tr.decode(raw, &ev)
	if d := time.Since(ev.Time); d < 0 || d > time.Second {
		t.Fatalf("after re-anchoring, an event of now is %v away from the wall clock", d)
	}
}

// A listen overflow in a namespace whose somaxconn is not known yet must
// not make the ring buffer's reader wait for a walk of /proc.
func TestOverflowNeverWaitsForProc(t *testing.T) {
	reasons, err := LoadReasons(nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &Tracer{Reasons: reasons, Symbols: NewSymbolizer(""), somax: newSomaxconns()}
	r := rawEvent{Type: uint8(ListenOverflow), Netns: 4026531840 + 12345, Queue: uint8(QueueAcceptSYN)}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&r)), rawEventSize)
	slow := make(chan Event, 1)
	var emitted []Event
	emit := func(e *Event) { emitted = append(emitted, *e) }
	var ev Event
	start := time.Now()
	tr.deliver(raw, &ev, slow, emit)
	tr.deliver(raw, &ev, slow, emit) // the queue is full: out now, without somaxconn
	if d := time.Since(start); d > 5*time.Millisecond {
		t.Errorf("deliver took %v", d)
	}
	if len(slow) != 1 || len(emitted) != 1 || emitted[0].Somaxconn != 0 {
		t.Fatalf("want one event queued for its somaxconn and one out at once, got %d queued, %d emitted", len(slow), len(emitted))
	}
	// A cached value goes out at once, with it.
	tr.somax.values[r.Netns] = somaxconnValue{4096, time.Now()}
	tr.deliver(raw, &ev, slow, emit)
	if len(emitted) != 2 || emitted[1].Somaxconn != 4096 {
		t.Fatalf("cached somaxconn not used: %+v", emitted)
	}
}

// An accept-queue overflow while the SYN queue is full too (half-open
// handshakes whose final ACK never comes, cookies on): tcp_conn_request
// still drops the SYN, so no syncookie flag on it.
func TestAcceptOverflowWithFullSynQueue(t *testing.T) {
	const backlog, port = 4, 8080
	srv := nstest.New(t, "srv")
	srv.Sysctl(t, "net.ipv4.tcp_syncookies", "1")
	// Handshakes from source ports 40000-40007 never complete.
	srv.Sh(t, fmt.Sprintf("iptables -A OUTPUT -o lo -p tcp --sport 40000:40007 --dport %d --tcp-flags SYN,ACK,FIN,RST ACK -j DROP", port))
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{ListenOverflow}, Netns: srv.Inode}})
	ln := srv.ListenNoAccept(t, "127.0.0.1", port, backlog)
	defer ln.Close()
	before := srv.Counters(t)
	mode := c.hook("tcp_conn_request").Mode
	isAccept := func(e *Event) bool { return e.Type == ListenOverflow && e.Queue != QueueSYN }
	load := func() func() {
		halfOpen := srv.ConnectFrom(t, "127.0.0.1", port, []int{40000, 40001, 40002, 40003, 40004, 40005, 40006, 40007})
		time.Sleep(200 * time.Millisecond)
		// cookies, then a full accept queue: a new client every 40 ms
		stop := pacedConnects(t, srv, 40*time.Millisecond, nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
		return func() { stop(); halfOpen.Close() }
	}
	evs, got := underLoadEach(t, c, 3*time.Second, 2*time.Second, load, loadCheck{
		what: "TcpExtListenOverflows", keep: isAccept, counter: counters(t, srv, "TcpExtListenOverflows"),
		agree: func(got, want uint64) bool { return countAgrees(t, overflowCountMode(c), got, want) },
	})
	after := srv.Counters(t)

	_, acc := sum(evs, isAccept)
	cookies, _ := sum(evs, func(e *Event) bool { return e.Type == ListenOverflow && e.Queue == QueueSYN && e.Syncookie })
	var synqMax uint32
	for _, e := range acc {
		synqMax = max(synqMax, e.SynQueueLen)
		if e.Syncookie {
			t.Fatalf("accept-queue overflow flagged syncookie with the SYN queue at %d/%d: the SYN was dropped\n%s", e.SynQueueLen, backlog, dump([]Event{e}))
		}
	}
	t.Logf("mode %s: TcpExtListenOverflows +%d, accept-queue overflows %d (SYN queue up to %d), SYN-queue cookies %d, SyncookiesSent +%d",
		mode, after["TcpExtListenOverflows"]-before["TcpExtListenOverflows"], got[0], synqMax, cookies, after["TcpExtSyncookiesSent"]-before["TcpExtSyncookiesSent"])
	if mode != ModeSockDiag && synqMax < backlog {
		t.Errorf("the scenario should hold the SYN queue full (%d) during the overflows, saw at most %d", backlog, synqMax)
	}
}
