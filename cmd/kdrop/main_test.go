package main

// The CLI as a user meets it: the real binary, real kernel, bad input.

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

var kdropBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kdrop-cli")
	if err != nil {
		panic(err)
	}
	kdropBin = filepath.Join(dir, "kdrop")
	build := []string{"build", "-o", kdropBin, "."}
	if raceEnabled {
		// The kdrop processes the tests start write race reports to
		// files (this process has read GORACE already), checked below.
		build = []string{"build", "-race", "-o", kdropBin, "."}
		os.Setenv("GORACE", "log_path="+filepath.Join(dir, "race"))
	}
	if out, err := exec.Command("go", build...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building kdrop: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	reports, _ := filepath.Glob(filepath.Join(dir, "race.*"))
	for _, r := range reports {
		b, _ := os.ReadFile(r)
		fmt.Fprintf(os.Stderr, "data race in a kdrop process the tests ran (%s):\n%s\n", r, b)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func kdrop(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(kdropBin, args...).CombinedOutput()
	return string(out), err
}

// Bad input: a clear message and a non-zero exit, before anything loads.
func TestBadInput(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"watch", "--output", "xml"}, `--output "xml": use table or json`},
		{[]string{"watch", "--type", "drops"}, `unknown event type "drops": use one of drop, overflow, unreach`},
		{[]string{"watch", "--cidr", "10.0.0.0/33"}, `--cidr "10.0.0.0/33": not an address or CIDR`},
		{[]string{"watch", "--cidr", "bogus"}, `not an address or CIDR (examples:`},
		{[]string{"watch", "--proto", "tcpp"}, `unknown protocol "tcpp"`},
		{[]string{"watch", "--port", "70000"}, `invalid argument "70000"`},
		{[]string{"watch", "--netns", "/nonexistent"}, `--netns "/nonexistent": neither an inode number nor a readable namespace file`},
		{[]string{"watch", "--attach", "uprobe"}, `unknown attach mode "uprobe"`},
		{[]string{"watch", "--duration", "soon"}, `invalid argument "soon"`},
		{[]string{"watch", "--reason", "NO_SOKET"}, `unknown drop reason "NO_SOKET"; did you mean NO_SOCKET`},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
	} {
		out, err := kdrop(t, c.args...)
		if err == nil {
			t.Errorf("kdrop %v: exit 0, want an error", c.args)
			continue
		}
		if !strings.Contains(out, c.want) {
			t.Errorf("kdrop %v: want %q in\n%s", c.args, c.want, out)
		}
	}
}

// Without root, kdrop says what it needs instead of a raw EPERM.
func TestNotRoot(t *testing.T) {
	for _, sub := range []string{"watch", "check"} {
		cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", kdropBin, sub)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "kdrop must run as root (it needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN") {
			t.Errorf("kdrop %s as nobody: err %v, output:\n%s", sub, err, out)
		}
	}
}

// A kernel without BTF: hide /sys/kernel/btf in a private mount namespace.
func TestNoBTF(t *testing.T) {
	for _, sub := range []string{"check", "watch"} {
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
			"mount -t tmpfs none /sys/kernel/btf && exec "+kdropBin+" "+sub)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "CONFIG_DEBUG_INFO_BTF=y") {
			t.Errorf("kdrop %s without BTF: err %v, output:\n%s", sub, err, out)
		}
	}
}

func TestCheck(t *testing.T) {
	out, err := kdrop(t, "check")
	if err != nil {
		t.Fatalf("kdrop check: %v\n%s", err, out)
	}
	for _, want := range []string{"BTF          /sys/kernel/btf/vmlinux", "kfree_skb", "tcp_conn_request", "icmp_send", "drop reasons",
		"nftables          ok: ", "other namespaces  ok: CAP_SYS_ADMIN"} {
		if !strings.Contains(out, want) {
			t.Errorf("kdrop check output lacks %q:\n%s", want, out)
		}
	}
	// iptables-legacy: readable where the kernel has ip_tables, else said
	legacy := "iptables-legacy   not in this kernel"
	if _, err := os.Stat("/proc/net/ip_tables_names"); err == nil {
		legacy = "iptables-legacy   ok: read"
		if b, _ := os.ReadFile("/proc/net/ip_tables_names"); len(strings.Fields(string(b))) == 0 {
			legacy = "iptables-legacy   present, no tables loaded"
		}
	}
	if !strings.Contains(out, legacy) {
		t.Errorf("kdrop check output lacks %q:\n%s", legacy, out)
	}
	t.Logf("\n%s", out)
}

// Without CAP_NET_ADMIN (and CAP_SYS_ADMIN) kdrop still runs, and check
// says rule reading cannot work and what it needs, exit 0.
func TestCheckRulesWithoutNetAdmin(t *testing.T) {
	sh(t, "iptables-legacy -t filter -L INPUT -n >/dev/null") // ip_tables loaded, with its filter table
	cmd := exec.Command("setpriv", "--inh-caps=-net_admin,-sys_admin", "--bounding-set=-net_admin,-sys_admin", kdropBin, "check")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kdrop check without CAP_NET_ADMIN: %v\n%s", err, out)
	}
	for _, want := range []string{
		"nftables          CANNOT LIST TABLES: netlink receive: operation not permitted (needs CAP_NET_ADMIN)",
		"iptables-legacy   CANNOT READ table filter: operation not permitted (needs CAP_NET_ADMIN)",
		"other namespaces  NO CAP_SYS_ADMIN",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kdrop check output lacks %q:\n%s", want, out)
		}
	}
}

func sh(t *testing.T, cmdline string) {
	t.Helper()
	if out, err := exec.Command("sh", "-c", cmdline).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
}

// kdrop watch -o json streams JSON lines and stops after --count.
func TestWatchJSON(t *testing.T) {
	ns := fmt.Sprintf("kdrop-cli-%d", rand.Intn(1e6))
	sh(t, "ip netns add "+ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip netns exec "+ns+" ip link set lo up")
	sh(t, "ip netns exec "+ns+" iptables -A INPUT -p udp --dport 9999 -m comment --comment 'kdrop test' -j DROP")

	ready := filepath.Join(t.TempDir(), "ready")
	cmd := exec.Command(kdropBin, "watch", "-o", "json", "--netns", "/run/netns/"+ns, "--type", "drop",
		"--reason", "NETFILTER_DROP", "--count", "3", "--duration", "30s", "--ready-file", ready)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("kdrop watch did not become ready in 20s")
		}
	}
	for i := 0; i < 5; i++ {
		sh(t, "ip netns exec "+ns+" bash -c 'echo kdrop > /dev/udp/127.0.0.1/9999'")
	}
	sc := bufio.NewScanner(stdout)
	var lines []map[string]any
	for sc.Scan() {
		m, err := decodeMap(sc.Bytes())
		if err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kdrop watch exited with %v", err)
	}
	if len(lines) != 3 {
		t.Fatalf("--count 3: got %d lines", len(lines))
	}
	for _, m := range lines {
		if m["type"] != "drop" || m["reason"] != "NETFILTER_DROP" || m["dst"] != "127.0.0.1" || m["dport"] != 9999.0 || m["proto"] != "udp" {
			t.Errorf("unexpected event: %v", m)
		}
		// the rule, named by its counter (--rules is on by default)
		if m["rule"] != `ip filter INPUT "kdrop test" DROP counter` {
			t.Errorf("rule: got %q, want the iptables rule with its comment", m["rule"])
		}
	}
}

// decodeMap reads a line with kdrop's one decoder (package line) into the
// fields the tests check, keyed by their JSON names, numbers as float64 as
// a generic JSON reader has them. The line must be exactly what the encoder
// writes for what it decodes to (canonical): a field written another way
// ("UDP", a number as a string, another order) fails here.
func decodeMap(b []byte) (map[string]any, error) {
	var d line.Decoder
	var l line.Line
	if err := d.Decode(b, &l); err != nil {
		return nil, err
	}
	var again []byte
	switch l.Kind {
	case line.KindEvent:
		again = line.AppendEvent(nil, &l.Event)
	case line.KindNotice:
		again = line.AppendNotice(nil, &l.Notice)
	}
	if again != nil && !bytes.Equal(again, bytes.TrimSpace(b)) {
		return nil, fmt.Errorf("not as kdrop's encoder writes it:\n got %s\nwant %s", b, again)
	}
	m := map[string]any{"type": l.Type, "time": l.Time.Format(time.RFC3339Nano)}
	switch l.Kind {
	case line.KindNotice:
		m["node"], m["message"] = l.Notice.Node, l.Notice.Message
		if !l.Notice.GapFrom.IsZero() {
			m["gap_from"], m["gap_to"] = l.Notice.GapFrom.Format(time.RFC3339Nano), l.Notice.GapTo.Format(time.RFC3339Nano)
		}
	case line.KindEvent:
		e := &l.Event
		m["node"], m["reason"], m["proto"], m["count"] = e.Node, e.Reason, tracer.ProtoName(e.Proto), float64(e.Count)
		if e.Dst.Addr().IsValid() {
			m["dst"], m["dport"] = e.Dst.Addr().String(), float64(e.Dst.Port())
		}
		if r := e.Rule; r != nil {
			m["rule"] = fmt.Sprintf("%s %s %s %q %s %s%s", r.Family, r.Table, r.Chain, r.Comment, r.Verdict, r.How, r.Unknown)
		}
	}
	return m, nil
}

// watch --help says what --rules reads and what it needs.
func TestRulesHelp(t *testing.T) {
	out, err := kdrop(t, "watch", "--help")
	if err != nil {
		t.Fatalf("kdrop watch --help: %v\n%s", err, out)
	}
	i := strings.Index(out, "--rules")
	if i < 0 {
		t.Fatalf("no --rules in:\n%s", out)
	}
	wantAll := []string{"nftables over netlink", "iptables-legacy", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "kdrop check"}
	for _, w := range wantAll {
		if !strings.Contains(out[i:], w) {
			t.Errorf("--rules help lacks %q:\n%s", w, out[i:])
		}
	}
}
