package main

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// kdrop watch names the route behind a route drop: traffic a router
// forwards into a blackhole route comes out as NOT_SPECIFIED at ip_error
// with the route, in JSON and in the table's RULE column, while it keeps
// coming.
func TestWatchNamesTheRoute(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Router.IP(t, "route add blackhole 198.19.131.0/24")
	ev, raw := watchFirst(t, r.Router, func() { r.Client.SendUDP(t, "198.19.131.5", 9, 1) }, 50*time.Millisecond)
	if ev.Route == nil || ev.Route.String() != "blackhole 198.19.131.0/24" || !strings.HasPrefix(ev.Location, "ip_error+") {
		t.Fatalf("want a drop at ip_error naming blackhole 198.19.131.0/24:\n%s", raw)
	}
	if row := ev.TableRow(); !strings.Contains(row, "route: blackhole 198.19.131.0/24") {
		t.Errorf("RULE column: %s", row)
	}
}

// IPv6 frees a packet it forwards into a blackhole route at
// dst_discard_out (the route's output), not ip6_pkt_drop: named too.
func TestWatchNamesTheIPv6BlackholeRoute(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Router.IP(t, "-6 route add blackhole fd00:19:131::/64")
	ev, raw := watchFirst(t, r.Router, func() { r.Client.SendUDP(t, "fd00:19:131::5", 9, 1) }, 50*time.Millisecond)
	if ev.Route == nil || ev.Route.String() != "blackhole fd00:19:131::/64" {
		t.Fatalf("want a drop naming blackhole fd00:19:131::/64:\n%s", raw)
	}
}

// watchFirst runs kdrop watch -o json on ns's drops (and args), calls
// load every period until it returns, and returns the first event line,
// decoded and as written: the load keeps running while it is read.
func watchFirst(t *testing.T, ns *nstest.NS, load func(), period time.Duration, args ...string) (*line.Event, string) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(kdropBin, append([]string{"watch", "-o", "json", "--type", "drop", "--netns", "/run/netns/" + ns.Name,
		"--duration", "60s", "--count", "1", "--ready-file", ready}, args...)...)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFile(t, ready, 60*time.Second)
	stop, done := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-done }()
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(period):
				load()
			}
		}
	}()
	sc := bufio.NewScanner(stdout)
	var d line.Decoder
	for sc.Scan() {
		var l line.Line
		if err := d.Decode(sc.Bytes(), &l); err != nil || l.Kind != line.KindEvent {
			continue
		}
		return &l.Event, sc.Text()
	}
	t.Fatalf("kdrop watch ended without a line: %v", sc.Err())
	return nil, ""
}
