package tracer

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// Two listeners of one namespace overflow at once, each its own queue: one
// never accepts (its accept queue full), the other never sees a handshake
// complete (its SYN queue full, syncookies off). Every overflow names its
// listener and its queue, in every mode: through sock_diag, where only the
// namespace counts which kind and only each listener how many, each
// listener's own queues tell which it was (adversary #14: all 11 SYN-queue
// and 7 of 37 accept-queue overflows named no listener).
func TestTwoListenersOverflowAtOnce(t *testing.T) {
	const accepting, halfOpen = 8101, 8102
	srv := nstest.New(t, "two")
	srv.Sysctl(t, "net.ipv4.tcp_syncookies", "0")
	// the handshakes to halfOpen never complete: all but the clients' SYNs
	// are dropped (a FIN at close would complete one, and overflow its
	// accept queue)
	srv.Sh(t, "iptables -A OUTPUT -o lo -p tcp --dport 8102 ! --syn -j DROP")
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{ListenOverflow}, Netns: srv.Inode}})
	a := srv.ListenNoAccept(t, "127.0.0.1", accepting, 1)
	defer a.Close()
	b := srv.ListenNoAccept(t, "127.0.0.1", halfOpen, 4)
	defer b.Close()
	base := srv.Counters(t)
	kernel := func(name string) func() uint64 {
		return func() uint64 { return srv.Counters(t)[name] - base[name] }
	}
	at := func(port uint16, q Queue) func(*Event) bool {
		return func(e *Event) bool {
			return e.Type == ListenOverflow && e.Dst.Port() == port && e.Queue.String() == q.String()
		}
	}
	// pending connects retransmit their SYNs until stop closes them
	stop := pacedConnects(t, srv, 100*time.Millisecond, nil,
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), accepting), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), halfOpen))
	seen := func(keep func(*Event) bool) func() uint64 {
		return func() uint64 { n, _, _ := c.snapshot(keep); return n }
	}
	var wg sync.WaitGroup
	for _, w := range []struct {
		what, counter string
		keep          func(*Event) bool
	}{
		{"accept-queue overflows of :8101", "TcpExtListenOverflows", at(accepting, QueueAccept)},
		{"SYN-queue drops of :8102", "TcpExtTCPReqQFullDrop", at(halfOpen, QueueSYN)},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nstest.WhileRunning(t, w.what, nstest.For(4*time.Second), 500*time.Millisecond, 5*time.Second, seen(w.keep), kernel(w.counter))
		}()
	}
	wg.Wait()
	stop()
	time.Sleep(time.Second) // sock_diag mode reads once a second
	overflows, synDrops := kernel("TcpExtListenOverflows")(), kernel("TcpExtTCPReqQFullDrop")()
	evs := c.stop(t)
	gotA, _ := sum(evs, at(accepting, QueueAccept))
	gotB, _ := sum(evs, at(halfOpen, QueueSYN))
	all, _ := sum(evs, func(e *Event) bool { return e.Type == ListenOverflow })
	t.Logf("mode %s: TcpExtListenOverflows +%d, :8101's accept-queue overflows %d; TcpExtTCPReqQFullDrop +%d, :8102's SYN-queue drops %d; %d in all",
		c.hook("tcp_conn_request").Mode, overflows, gotA, synDrops, gotB, all)
	if overflows == 0 || synDrops == 0 || gotA != overflows || gotB != synDrops || all != overflows+synDrops {
		_, others := sum(evs, func(e *Event) bool { return !at(accepting, QueueAccept)(e) && !at(halfOpen, QueueSYN)(e) })
		t.Errorf("each overflow should name its listener and queue: kernel %d accept-queue + %d SYN-queue, kdrop %d at :8101 + %d at :8102 of %d; the others:\n%s",
			overflows, synDrops, gotA, gotB, all, dump(others))
	}
}
