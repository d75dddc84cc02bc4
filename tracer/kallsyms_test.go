package tracer

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// The running kernel's kallsyms reads as a plain split of each line does:
// every text symbol, by address, names whole (a module's too).
func TestParseKallsymsReadsThisKernel(t *testing.T) {
	raw, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	addrs, names, err := parseKallsyms(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && (f[1] == "t" || f[1] == "T") && !strings.HasPrefix(f[0], "0000000000000000") {
			want[f[0]+" "+f[2]] = true
		}
	}
	read := map[string]bool{}
	for i := range names {
		k := fmt.Sprintf("%016x %s", addrs[i], names[i])
		if !want[k] {
			t.Fatalf("symbol %d read as %q, not a line of the file", i, k)
		}
		read[k] = true
		if i > 0 && addrs[i] < addrs[i-1] {
			t.Fatalf("symbols not sorted at %d: %x after %x", i, addrs[i], addrs[i-1])
		}
	}
	if len(read) != len(want) {
		t.Fatalf("%d text symbols read, the file has %d", len(read), len(want))
	}
	t.Logf("%d text symbols", len(names))
}

// A tracer started again in the process reuses the table while the same
// modules are loaded at the same addresses, and reads it again otherwise.
func TestKallsymsReusedWhileModulesStay(t *testing.T) {
	a := NewSymbolizer("")
	start, end, ok := a.Range("tcp_v4_rcv")
	if !ok || end <= start {
		t.Fatalf("no tcp_v4_rcv in kallsyms: %v", a.Err())
	}
	b := NewSymbolizer("")
	if b.Resolve(start+1) != a.Resolve(start+1) {
		t.Fatalf("two symbolizers disagree: %s, %s", b.Resolve(start+1), a.Resolve(start+1))
	}
	if &a.addrs[0] != &b.addrs[0] {
		t.Errorf("the second symbolizer read kallsyms again with the same modules loaded")
	}
	lastKallsyms.Lock()
	lastKallsyms.modules += "a module that came\n"
	lastKallsyms.Unlock()
	c := NewSymbolizer("")
	c.Resolve(start)
	if &c.addrs[0] == &a.addrs[0] {
		t.Errorf("kallsyms not read again after the modules changed")
	}
}

// Whatever kallsyms holds, parsing keeps to its lines: sorted addresses,
// names without blanks, nothing made up.
func FuzzParseKallsyms(f *testing.F) {
	f.Add("ffffffff81000000 T _stext\nffffffffc0a01000 t nft_do_chain\t[nf_tables]\n")
	f.Add("0000000000000000 T hidden\nffffffff81000010 D data\nxyz T bad\n")
	f.Add("ffffffff81000000 t  \nffffffff81000000 T a")
	f.Fuzz(func(t *testing.T, in string) {
		addrs, names, err := parseKallsyms(strings.NewReader(in))
		if err != nil {
			return
		}
		for i, n := range names {
			if n == "" || strings.ContainsAny(n, " \t\n") || !strings.Contains(in, " "+n) {
				t.Fatalf("name %q read from %q", n, in)
			}
			if addrs[i] == 0 || (i > 0 && addrs[i] < addrs[i-1]) {
				t.Fatalf("addresses %x not sorted and non-zero", addrs)
			}
		}
	})
}
