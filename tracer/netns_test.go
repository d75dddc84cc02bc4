package tracer

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// The sock_diag poller finds namespaces by their paths. One bind-mounted
// outside /run/netns (as Docker keeps them) is found from the start, and
// one that no path shows for a while (between a mount and the next) goes
// on from where it was: drops from before start, or reported already,
// are never reported again, and none is lost while it was out of sight.
func TestListenNamespaceOutOfSight(t *testing.T) {
	const port = 8082
	srv := nstest.New(t, "oos")
	runPath := "/run/netns/" + srv.Name
	// overflows before start: history, not to be reported
	ln := srv.ListenNoAccept(t, "127.0.0.1", port, 2)
	conns := srv.ConnectMany(t, "127.0.0.1", port, 20)
	time.Sleep(1200 * time.Millisecond)
	conns.Close()
	ln.Close()
	before := srv.Counters(t)
	if before["TcpExtListenOverflows"] == 0 {
		t.Fatal("no overflow before start: the scenario is broken")
	}
	keep, err := os.Open(runPath) // the namespace, whatever is mounted
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	elsewhere := filepath.Join(t.TempDir(), "ns")
	if err := os.WriteFile(elsewhere, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mount := func(at string) {
		t.Helper()
		if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", keep.Fd()), at, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("bind-mount the namespace at %s: %v", at, err)
		}
	}
	unmount := func(at string) {
		t.Helper()
		if err := unix.Unmount(at, unix.MNT_DETACH); err != nil {
			t.Fatalf("unmount %s: %v", at, err)
		}
	}
	mount(elsewhere)
	t.Cleanup(func() { unix.Unmount(elsewhere, unix.MNT_DETACH) })
	unmount(runPath)
	t.Cleanup(func() { // for nstest's own cleanup, if the test stopped while hidden
		var st unix.Stat_t
		if unix.Stat(runPath, &st) == nil && uint32(st.Ino) != srv.Inode {
			unix.Mount(fmt.Sprintf("/proc/self/fd/%d", keep.Fd()), runPath, "", unix.MS_BIND, "")
		}
	})

	c := startTracer(t, Options{Modes: []Mode{ModeTPBTF, ModeRawTP, ModeSockDiag},
		Filter: Filter{Types: []EventType{ListenOverflow}, Netns: srv.Inode}})
	if h := c.hook("tcp_conn_request"); h.Mode != ModeSockDiag {
		t.Fatalf("listen overflows not by sock_diag: %s", h)
	}
	time.Sleep(1200 * time.Millisecond)
	mount(runPath) // seen in /run/netns now too
	ln = srv.ListenNoAccept(t, "127.0.0.1", port, 2)
	conns = srv.ConnectMany(t, "127.0.0.1", port, 20)
	time.Sleep(1500 * time.Millisecond)
	unmount(runPath) // out of every path while SYNs keep being refused
	unmount(elsewhere)
	time.Sleep(2500 * time.Millisecond)
	mount(runPath)
	time.Sleep(1500 * time.Millisecond)
	conns.Close()
	ln.Close()
	time.Sleep(300 * time.Millisecond)
	evs := c.stop(t)
	after := srv.Counters(t)
	want := after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
	got, _ := sum(evs, func(e *Event) bool { return e.Queue != QueueSYN })
	if got != want || want == 0 {
		t.Fatalf("TcpExtListenOverflows +%d since start (%d before), %d events\n%s", want, before["TcpExtListenOverflows"], got, dump(evs))
	}
	t.Logf("TcpExtListenOverflows +%d since start (%d before it), %d events", want, before["TcpExtListenOverflows"], got)
}

// A mount point is any path a user chose, escaped by the kernel: every
// table reads without a panic, and an escaped path reads back as it was.
func FuzzParseNsfsMounts(f *testing.F) {
	f.Add("44 43 0:4 net:[4026532177] /run/netns/a\\040b rw shared:2 - nsfs nsfs rw\n", "/run/x y")
	f.Add("45 43 0:4 net:[1] /x rw - nsfs nsfs rw\n46 1 0:5 / /proc rw - proc proc rw", "\\\n\t")
	f.Fuzz(func(t *testing.T, table, path string) {
		parseNsfsMounts([]byte(table), "/root")
		esc := strings.NewReplacer("\\", "\\134", " ", "\\040", "\t", "\\011", "\n", "\\012").Replace(path)
		if path == "" {
			return
		}
		got := parseNsfsMounts([]byte("44 43 0:4 net:[7] "+esc+" rw shared:2 - nsfs nsfs rw\n"), "/root")
		if len(got) != 1 || got[0] != "/root"+path {
			t.Fatalf("mount point %q (escaped %q) read as %q", path, esc, got)
		}
	})
}
