package main

import (
	"errors"
	"io/fs"
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
	file := filepath.Join(dir, "incident.jsonl.gz")
	rec, stderr := startRecord(t, file, "--netns", "/run/netns/"+ns.Name)

	ln := ns.ListenNoAccept(t, "127.0.0.1", 8080, 4096)
	conns := ns.ConnectMany(t, "127.0.0.1", 8080, 300)
	time.Sleep(1500 * time.Millisecond)
	conns.Close()
	ln.Close()
	time.Sleep(500 * time.Millisecond)
	stopRecord(t, rec, stderr)

	md, page := reportPages(t, file)
	for _, want := range []string{"somaxconn", "128", "backlog", "securityContext", "tuning"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if !strings.Contains(page, "<svg") {
		t.Error("HTML report without its chart")
	}
	// A bad file gets a clear error.
	os.WriteFile(filepath.Join(dir, "bad"), []byte("not gzip"), 0o644)
	if out, err := exec.Command(kdropBin, "report", filepath.Join(dir, "bad")).CombinedOutput(); err == nil || !strings.Contains(string(out), "bad") {
		t.Errorf("report of a bad file: err %v, %s", err, out)
	}
}

// startRecord starts kdrop record into file (identity off, and args) and
// waits until it traces.
func startRecord(t *testing.T, file string, args ...string) (rec *exec.Cmd, stderr *syncBuffer) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	rec = exec.Command(kdropBin, append([]string{"record", "-o", file, "--identity", "off", "--ready-file", ready}, args...)...)
	stderr = new(syncBuffer)
	rec.Stderr = stderr
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Process.Kill(); rec.Wait() })
	waitFile(t, ready, 30*time.Second)
	return rec, stderr
}

// stopRecord ends kdrop record as Ctrl-C does and fails the test unless it
// exits cleanly.
func stopRecord(t *testing.T, rec *exec.Cmd, stderr *syncBuffer) {
	t.Helper()
	rec.Process.Signal(syscall.SIGINT)
	if err := rec.Wait(); err != nil {
		t.Fatalf("kdrop record: %v\n%s", err, stderr.String())
	}
}

// A path MTU black hole, recorded and reported: a router whose link to the
// server has MTU 1280 answers the client's 1400-byte packets with
// frag-needed / packet-too-big, and the client's firewall drops those
// errors. The report must say which router told the client what MTU, that
// the error was dropped at the client by that rule, and how to fix it:
// from the router's own errors where the recording has them, else (the
// router beyond the node: only the client's namespace recorded) from the
// errors that were dropped.
func TestRecordAndReportPMTUBlackHole(t *testing.T) {
	r := nstest.NewRouted(t)
	r.Router.IP(t, "link set dev "+r.RouterToServer+" mtu 1280")
	r.Client.Sh(t, "iptables -A INPUT -p icmp --icmp-type fragmentation-needed -m comment --comment no-pmtu -j DROP")
	r.Client.Sh(t, "ip6tables -A INPUT -p icmpv6 --icmpv6-type packet-too-big -m comment --comment no-pmtu -j DROP")
	for _, tc := range []struct {
		name  string
		scope []string
	}{
		{"router recorded", []string{"--cidr", nstest.ClientIP, "--cidr", nstest.ClientIP6}},
		{"router beyond sight", []string{"--netns", "/run/netns/" + r.Client.Name}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "pmtu.jsonl.gz")
			rec, stderr := startRecord(t, file, tc.scope...)
			stopLoad := nstest.Paced(t, 100*time.Millisecond, func() { // keeps running while kdrop names the rules
				r.Client.SendDF(t, nstest.ServerIP, 9, 1400, 1)
				r.Client.SendDF(t, nstest.ServerIP6, 9, 1400, 1)
			})
			defer stopLoad()
			time.Sleep(4 * time.Second) // a drop's line waits up to 2 s for its rule
			stopRecord(t, rec, stderr)
			out, err := exec.Command(kdropBin, "report", file, "--markdown", "-").CombinedOutput()
			if err != nil {
				t.Fatalf("kdrop report: %v\n%s", err, out)
			}
			md := string(out)
			for _, want := range []string{
				"Path MTU black hole", "told " + nstest.ClientIP + " the path MTU is 1280", "told " + nstest.ClientIP6 + " the path MTU is 1280",
				"dropped the ICMP error by rule filter/INPUT#", `DROP "no-pmtu"`, "fragmentation-needed", "clamp-mss-to-pmtu",
			} {
				if !strings.Contains(md, want) {
					t.Errorf("report lacks %q:\n%s", want, md)
				}
			}
		})
	}
}

// kdrop record onto a filesystem that fills up (a 256 KiB tmpfs): it says
// so at once, exits non-zero, and leaves under its name a file kdrop report
// reads, saying the recording was cut off.
func TestRecordDiskFull(t *testing.T) {
	ns := nstest.New(t, "full")
	ns.Sh(t, "iptables -A INPUT -p udp -j DROP")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "kdrop-full", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a small tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	file := filepath.Join(dir, "incident.jsonl.gz")
	rec, stderr := startRecord(t, file, "--netns", "/run/netns/"+ns.Name, "--rate-limit", "0")
	ports := make([]int, 4096)
	for i := range ports {
		ports[i] = 10000 + i
	}
	stop := ns.Flood(t, "127.0.0.1", ports) // keeps running while the disk fills
	defer stop()
	exited := make(chan error, 1)
	go func() { exited <- rec.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("kdrop record still running 60 s into a full disk:\n%s", stderr.String())
	}
	if err == nil {
		t.Errorf("kdrop record exited 0 on a full disk:\n%s", stderr.String())
	}
	for _, want := range []string{"the recording cannot be written", "no space left on device"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	out, rerr := exec.Command(kdropBin, "report", file).CombinedOutput()
	if rerr != nil {
		t.Fatalf("kdrop report of the file left behind: %v\n%s", rerr, out)
	}
	if !strings.Contains(string(out), "cut off") && !strings.Contains(string(out), "ended early") {
		t.Errorf("the report does not say the recording was cut off:\n%s", out)
	}

	// The recording is not replaced by another kdrop record.
	again, err := exec.Command(kdropBin, "record", "-o", file, "--netns", "/run/netns/"+ns.Name, "--identity", "off", "--duration", "1s").CombinedOutput()
	if err == nil || !strings.Contains(string(again), "exists: kdrop record never replaces a file") {
		t.Errorf("kdrop record onto an existing recording: %v\n%s", err, again)
	}
	// A disk full from the start: told, non-zero, and no empty file left.
	if out, err := exec.Command("sh", "-c", "cat /dev/zero > "+filepath.Join(dir, "filler")).CombinedOutput(); err == nil {
		t.Fatalf("filling the tmpfs: %s", out)
	}
	empty := filepath.Join(dir, "second.jsonl.gz")
	full, err := exec.Command(kdropBin, "record", "-o", empty, "--netns", "/run/netns/"+ns.Name, "--identity", "off", "--duration", "3s").CombinedOutput()
	if err == nil || !strings.Contains(string(full), "no space left on device") {
		t.Errorf("kdrop record onto a full disk: %v\n%s", err, full)
	}
	if _, serr := os.Stat(empty); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("kdrop record onto a full disk left %s (%v)", empty, serr)
	}
}

// A recorder killed mid-way (SIGKILL, a crash, a reboot) leaves what it
// had flushed (every second) under the name asked for, and it reads.
func TestRecordKilledKeepsItsFile(t *testing.T) {
	ns := nstest.New(t, "kill")
	ns.Sh(t, "iptables -A INPUT -p udp -j DROP")
	file := filepath.Join(t.TempDir(), "killed.jsonl.gz")
	rec, stderr := startRecord(t, file, "--netns", "/run/netns/"+ns.Name)
	stop := ns.Flood(t, "127.0.0.1", []int{9000, 9001})
	defer stop()
	time.Sleep(2500 * time.Millisecond)
	rec.Process.Kill()
	rec.Wait()
	out, err := exec.Command(kdropBin, "report", file).CombinedOutput()
	if err != nil {
		t.Fatalf("kdrop report of a killed recording: %v\n%s\nrecord's stderr:\n%s", err, out, stderr.String())
	}
	if !strings.Contains(string(out), "NETFILTER_DROP") {
		t.Errorf("the killed recording's report names no NETFILTER_DROP:\n%s", out)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(file), ".*")); len(left) != 0 {
		t.Errorf("hidden files beside the recording: %v", left)
	}
}

// Drops by named rules, recorded and reported: an iptables-nft rule, native
// nft rejects in an ip and an ip6 table (named as nft names them: code 1 is
// host-unreachable in ICMP, admin-prohibited in ICMPv6), and an
// iptables-legacy rule. The report has one finding per rule, with its
// comment and the command that shows it.
func TestRecordAndReportRules(t *testing.T) {
	ns := nstest.New(t, "rules")
	in := func(cmdline string) { nstest.Run(t, "ip", "netns", "exec", ns.Name, "sh", "-c", cmdline) }
	in(`iptables -A INPUT -p udp --dport 9001 -m comment --comment "a1 udp drop" -j DROP`)
	in(`nft add table ip kd && nft add chain ip kd in '{ type filter hook input priority 10; }' && ` +
		`nft add rule ip kd in udp dport 9002 counter reject with icmp host-unreachable comment '"nth drop"'`)
	in(`nft add table ip6 kd6 && nft add chain ip6 kd6 in '{ type filter hook input priority 10; }' && ` +
		`nft add rule ip6 kd6 in udp dport 9004 counter reject with icmpv6 admin-prohibited comment '"v6 reject"'`)
	in(`iptables-legacy -A INPUT -p udp --dport 9003 -m comment --comment "legacy rule" -j DROP`)
	dir := t.TempDir()
	file := filepath.Join(dir, "incident.jsonl.gz")
	rec, stderr := startRecord(t, file, "--netns", "/run/netns/"+ns.Name, "--reason", "NETFILTER_DROP")
	for _, port := range []int{9001, 9002, 9003} {
		ns.SendUDP(t, "127.0.0.1", port, 5)
	}
	ns.SendUDP(t, "::1", 9004, 5)
	time.Sleep(3 * time.Second) // each drop's line waits for its rule (up to 2 s)
	stopRecord(t, rec, stderr)
	md, page := reportPages(t, file)
	for _, want := range []string{
		`ip filter/INPUT#`, `DROP "a1 udp drop" dropped 5 packets`, "`nft -a list chain ip filter INPUT`", "`iptables-save -t filter | grep -n -- 'a1 udp drop'`",
		`ip kd/in#`, `REJECT icmp-host-unreachable "nth drop"`, "`nft -a list chain ip kd in`",
		`ip6 kd6/in#`, `REJECT icmpv6-admin-prohibited "v6 reject"`, "at network namespace ",
		`ip filter/INPUT:1 DROP "legacy rule"`, "`iptables-legacy -t filter -S INPUT 1`", "`iptables-legacy-save -t filter | grep -n -- 'legacy rule'`",
		"If this rule should not drop this traffic",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the Markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "iptables-save -t kd") {
		t.Errorf("a native nft table's rule is offered to iptables-save:\n%s", md)
	}
	for _, c := range []string{"a1 udp drop", "nth drop", "v6 reject", "legacy rule"} {
		if !strings.Contains(page, c) {
			t.Errorf("the HTML lacks %q", c)
		}
	}
}

// reportPages runs kdrop report on a recording and returns its Markdown and
// its HTML page.
func reportPages(t *testing.T, file string) (md, page string) {
	t.Helper()
	html := file + ".html"
	out, err := exec.Command(kdropBin, "report", file, "--html", html, "--markdown", "-").CombinedOutput()
	if err != nil {
		t.Fatalf("kdrop report: %v\n%s", err, out)
	}
	b, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), string(b)
}
