package tracer

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// A client that closes first leaves a TIME_WAIT socket; the server's FIN,
// reaching it, is ACKed and freed with NOT_SPECIFIED at tcp_v4_rcv or
// tcp_v6_rcv: a normal close, one per connection. On a kernel that names
// TCP_RFC7323_TW_PAWS the default filter hides these frees while the
// connections keep coming, and IncludeBenign shows them; before that
// reason, PAWS in TIME_WAIT is one of them, and they are all shown.
func TestTimeWaitFINHidden(t *testing.T) {
	r := nstest.NewRouted(t)
	var accepted atomic.Uint64
	for _, addr := range []string{net.JoinHostPort(nstest.ServerIP, "8090"), net.JoinHostPort(nstest.ServerIP6, "8090")} {
		var ln net.Listener
		r.Server.In(t, func() {
			var err error
			if ln, err = net.Listen("tcp", addr); err != nil {
				t.Fatal(err)
			}
		})
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				time.AfterFunc(200*time.Millisecond, func() { c.Close() }) // after the client's close
			}
		}()
	}
	var closed atomic.Uint64
	closes := func() {
		r.Client.In(t, func() {
			for _, ip := range []string{nstest.ServerIP, nstest.ServerIP6} {
				if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "8090"), time.Second); err == nil {
					c.Close()
					closed.Add(1)
				}
			}
		})
	}
	twFIN := func(e *Event) bool {
		fn, _, _ := strings.Cut(e.Location, "+")
		return e.Type == Drop && (e.Reason == "NOT_SPECIFIED" || e.Reason == reasonUnknown) &&
			(fn == "tcp_v4_rcv" || fn == "tcp_v6_rcv") && e.Src.Port() == 8090
	}
	// Three seconds of closes; the frees seen, sampled while they go on.
	run := func(c *capture) (seen, done uint64) {
		before := closed.Load()
		stop := nstest.Paced(t, 50*time.Millisecond, closes)
		for begin := time.Now(); time.Since(begin) < 3*time.Second; {
			time.Sleep(500 * time.Millisecond)
			n, _, _ := c.snapshot(twFIN)
			seen = max(seen, n)
		}
		stop()
		time.Sleep(500 * time.Millisecond) // the last FINs
		n, _ := sum(c.stop(t), twFIN)
		return max(seen, n), closed.Load() - before
	}

	c := startTracer(t, Options{Filter: Filter{Netns: r.Client.Inode, Types: []EventType{Drop}}})
	_, given := c.tr.Reasons.Lookup("TCP_RFC7323_TW_PAWS")
	hidden, n := run(c)
	t.Logf("default filter: %d frees of FINs at TIME_WAIT sockets shown for %d closes (kernel names TCP_RFC7323_TW_PAWS: %v)", hidden, n, given)
	if n < 20 {
		t.Fatalf("only %d connections closed in 3 s", n)
	}
	switch {
	case given && hidden != 0:
		t.Errorf("default filter: %d NOT_SPECIFIED frees at tcp_v4_rcv/tcp_v6_rcv shown for %d normal closes, want none", hidden, n)
	case !given && hidden < n/2:
		t.Errorf("default filter on a kernel without TCP_RFC7323_TW_PAWS: %d frees shown for %d closes, want them all shown (PAWS in TIME_WAIT is among them)", hidden, n)
	}

	c = startTracer(t, Options{Filter: Filter{Netns: r.Client.Inode, Types: []EventType{Drop}, IncludeBenign: true}})
	shown, n := run(c)
	t.Logf("IncludeBenign: %d frees shown for %d closes", shown, n)
	if shown < n/2 {
		t.Errorf("IncludeBenign: %d NOT_SPECIFIED frees at tcp_v4_rcv/tcp_v6_rcv shown for %d closes, want about one per close", shown, n)
	}
}
