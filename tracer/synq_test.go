package tracer

import (
	"fmt"
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
			before := srv.Counters(t)
			halfOpen := []int{41000, 41001, 41002, 41003, 41004, 41005, 41006, 41007}
			defer srv.ConnectFrom(t, "127.0.0.1", port, halfOpen).Close()
			time.Sleep(200 * time.Millisecond)
			// SYNs (and their retransmissions) to a full SYN queue
			defer srv.ConnectMany(t, "127.0.0.1", port, 10).Close()
			time.Sleep(1500 * time.Millisecond)
			evs := c.stop(t)
			after := srv.Counters(t)
			want := after[tc.counter] - before[tc.counter]
			mode := c.hook("tcp_conn_request").Mode
			got, syn := sum(evs, func(e *Event) bool {
				return e.Type == ListenOverflow && e.Queue == QueueSYN && e.Syncookie == tc.cookie
			})
			t.Logf("mode %s: %s +%d, %d SYN-queue events (cookie %v)", mode, tc.counter, want, got, tc.cookie)
			if want == 0 || !countAgrees(t, mode, got, want) {
				t.Fatalf("mode %s: %s rose by %d, kdrop counted %d\n%s", mode, tc.counter, want, got, dump(evs))
			}
			for _, e := range syn {
				if e.Dst.Port() != port || e.Netns != srv.Inode {
					t.Errorf("SYN-queue event without its listener:\n%s", dump([]Event{e}))
				}
			}
		})
	}
}
