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
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(kdropBin, "watch", "-o", "json", "--type", "drop", "--netns", "/run/netns/"+r.Router.Name,
		"--duration", "60s", "--count", "1", "--ready-file", ready)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFile(t, ready, 60*time.Second)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the load keeps running while the line is read
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				r.Client.SendUDP(t, "198.19.131.5", 9, 1)
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
		ev := &l.Event
		if ev.Route == nil || ev.Route.String() != "blackhole 198.19.131.0/24" || !strings.HasPrefix(ev.Location, "ip_error+") {
			t.Fatalf("want a drop at ip_error naming blackhole 198.19.131.0/24:\n%s", sc.Text())
		}
		if row := ev.TableRow(); !strings.Contains(row, "route: blackhole 198.19.131.0/24") {
			t.Errorf("RULE column: %s", row)
		}
		return
	}
	t.Fatalf("kdrop watch ended without a line: %v", sc.Err())
}
