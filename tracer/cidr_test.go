package tracer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// A listener bound to 0.0.0.0 overflows while a CIDR filter selects the
// server's address: every overflow passes, in every mode. Where overflows
// are read through sock_diag (no function tracing) the event knows neither
// the peer nor the address the SYN was for, only the listener's wildcard,
// and a CIDR test on addresses alone lost them all (adversary #14: 0 of 20
// shown with --cidr).
func TestCIDRKeepsWildcardListenerOverflows(t *testing.T) {
	r := nstest.NewRouted(t)
	ln := r.Server.ListenNoAccept(t, "0.0.0.0", 8091, 1)
	defer ln.Close()
	c := startTracer(t, Options{Filter: Filter{Types: []EventType{ListenOverflow}, CIDRs: []netip.Prefix{netip.MustParsePrefix(nstest.ServerIP + "/32")}}})
	isServer := func(e *Event) bool {
		return e.Type == ListenOverflow && e.Netns == r.Server.Inode && e.Dst.Port() == 8091
	}
	base := r.Server.Counters(t)["TcpExtListenOverflows"]
	overflows := func() uint64 { return r.Server.Counters(t)["TcpExtListenOverflows"] - base }

	// pending connects retransmit their SYNs until stop closes them
	stop := pacedConnects(t, r.Client, 50*time.Millisecond, nil, netip.MustParseAddrPort(nstest.ServerIP+":8091"))
	seen := func() uint64 { n, _, _ := c.snapshot(isServer); return n }
	nstest.WhileRunning(t, "overflows of a 0.0.0.0 listener under --cidr "+nstest.ServerIP+"/32", nstest.For(3*time.Second), 500*time.Millisecond, 5*time.Second, seen, overflows)
	stop()
	time.Sleep(time.Second) // sock_diag mode reads once a second
	want := overflows()
	got, lines := sum(c.stop(t), isServer)
	t.Logf("TcpExtListenOverflows +%d, kdrop %d in %d lines (source %q)", want, got, len(lines), func() string {
		if len(lines) > 0 {
			return lines[0].Source
		}
		return ""
	}())
	if want == 0 || got != want {
		t.Errorf("a 0.0.0.0 listener under a CIDR filter on its address: the kernel counted %d overflows, kdrop %d", want, got)
	}
}
