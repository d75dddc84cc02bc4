package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// The image-server incident, recorded and reported: a listener asking for a
// backlog of 4096 in a namespace whose somaxconn is 128. The report must say
// the limit is somaxconn and how to raise it, with the server's backlog.
func TestRecordAndReportSomaxconn(t *testing.T) {
	ns := nstest.New(t, "rec")
	ns.Sysctl(t, "net.core.somaxconn", "128")
	dir := t.TempDir()
	file, ready := filepath.Join(dir, "incident.jsonl.gz"), filepath.Join(dir, "ready")
	rec := exec.Command(kdropBin, "record", "-o", file, "--netns", "/run/netns/"+ns.Name, "--identity", "off", "--ready-file", ready)
	var stderr syncBuffer
	rec.Stderr = &stderr
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Process.Kill(); rec.Wait() })
	waitFile(t, ready, 30*time.Second)

	ln := ns.ListenNoAccept(t, "127.0.0.1", 8080, 4096)
	conns := ns.ConnectMany(t, "127.0.0.1", 8080, 300)
	time.Sleep(1500 * time.Millisecond)
	conns.Close()
	ln.Close()
	time.Sleep(500 * time.Millisecond)
	rec.Process.Signal(syscall.SIGINT)
	if err := rec.Wait(); err != nil {
		t.Fatalf("kdrop record: %v\n%s", err, stderr.String())
	}

	html := filepath.Join(dir, "incident.html")
	out, err := exec.Command(kdropBin, "report", file, "--html", html, "--markdown", "-").CombinedOutput()
	if err != nil {
		t.Fatalf("kdrop report: %v\n%s", err, out)
	}
	md := string(out)
	for _, want := range []string{"somaxconn", "128", "backlog", "securityContext", "tuning"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if b, err := os.ReadFile(html); err != nil || !strings.Contains(string(b), "<svg") {
		t.Errorf("HTML report missing or without its chart: %v", err)
	}
	// A bad file gets a clear error.
	os.WriteFile(filepath.Join(dir, "bad"), []byte("not gzip"), 0o644)
	if out, err := exec.Command(kdropBin, "report", filepath.Join(dir, "bad")).CombinedOutput(); err == nil || !strings.Contains(string(out), "bad") {
		t.Errorf("report of a bad file: err %v, %s", err, out)
	}
}
