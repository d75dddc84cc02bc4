package tracer

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// A full SYN queue, in every attach mode (sock_diag where function tracing
// is forbidden): half-open handshakes whose final ACK never comes fill it;
// then, with syncookies off, every further SYN is dropped (one event each,
// as TcpExtTCPReqQFullDrop counts them) and, with syncookies on, answered
// with a cookie (as TcpExtTCPReqQFullDoCookies counts them). The events
// name the listener, beside an idle one (no listener counts its cookies:
// the full SYN queue tells whose they are).
func TestSynQueueFullEveryMode(t *testing.T) {
	for _, tc := range []struct {
		cookies, counter string
		cookie           bool
	}{{"0", "TcpExtTCPReqQFullDrop", false}, {"1", "TcpExtTCPReqQFullDoCookies", true}} {
		t.Run("tcp_syncookies="+tc.cookies, func(t *testing.T) {
			const backlog, port = 4, 8081
			srv := nstest.New(t, "srv")
			srv.Sysctl(t, "net.ipv4.tcp_syncookies", tc.cookies)
			// handshakes from source ports 41000-41007 never complete
			srv.Sh(t, fmt.Sprintf("iptables -A OUTPUT -o lo -p tcp --sport 41000:41007 --dport %d --tcp-flags SYN,ACK,FIN,RST ACK -j DROP", port))
			c := startTracer(t, Options{Filter: Filter{Types: []EventType{ListenOverflow}, Netns: srv.Inode}})
			ln := srv.ListenNoAccept(t, "127.0.0.1", port, backlog)
			defer ln.Close()
			idle := srv.ListenNoAccept(t, "127.0.0.1", port+1, 128)
			defer idle.Close()
			mode := c.hook("tcp_conn_request").Mode
			isSyn := func(e *Event) bool {
				return e.Type == ListenOverflow && e.Queue == QueueSYN && e.Syncookie == tc.cookie
			}
			load := func() func() {
				halfOpen := srv.ConnectFrom(t, "127.0.0.1", port, []int{41000, 41001, 41002, 41003, 41004, 41005, 41006, 41007})
				time.Sleep(200 * time.Millisecond)
				// SYNs (and their retransmissions) to a full SYN queue, a
				// new client every 50 ms
				stop := pacedConnects(t, srv, 50*time.Millisecond, nil, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
				return func() { stop(); halfOpen.Close() }
			}
			evs, got := underLoadEach(t, c, 3*time.Second, 2*time.Second, load, loadCheck{
				what: fmt.Sprintf("mode %s: %s", mode, tc.counter), keep: isSyn, counter: counters(t, srv, tc.counter),
				agree: func(got, want uint64) bool { return countAgrees(t, mode, got, want) },
			})
			_, syn := sum(evs, isSyn)
			t.Logf("mode %s: %d SYN-queue events (cookie %v) counting %d", mode, len(syn), tc.cookie, got[0])
			for _, e := range syn {
				if e.Dst.Port() != port || e.Netns != srv.Inode {
					t.Errorf("SYN-queue event without its listener:\n%s", dump([]Event{e}))
				}
			}
		})
	}
}
