package tracer

import (
	"strings"
	"testing"
)

// Every program kdrop carries passes the verifier of every kernel it runs
// on: a hook may fall back because the kernel forbids a kind of tracing or
// lacks a function, never because the verifier refused kdrop's own code (an
// fentry program must return 0: the syn_recv_sock hooks returned 1 with
// syncookies on, were refused on 5.10 and 7, and fell back to kprobes that
// lost accept-queue overflows under load).
//
// Each stays far below the verifier's limit of 1M processed instructions
// (BPF_COMPLEXITY_LIMIT_INSNS): another kernel's verifier may walk more
// paths and refuse a program near it, and the walk's time is every agent's
// start-up (a plain load of skb->head made the kfree_skb and icmp_send
// tp_btf programs cost 595k and 562k, 6 s per load under emulation; 8k
// after).
func TestNoProgramRefusedByTheVerifier(t *testing.T) {
	const budget = 100_000 // a tenth of the limit
	c := startTracer(t, Options{})
	for _, h := range c.tr.Hooks() {
		for _, f := range h.Failed {
			if strings.Contains(f, "rejected by the verifier") {
				t.Errorf("hook %s: %s", h.Hook, f)
			}
		}
	}
	for _, a := range c.tr.attached {
		info, err := a.prog.Info()
		if err != nil {
			t.Fatalf("program of hook %s: %v", a.hook.name, err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok { // the kernel reports it since 5.16
			t.Logf("hook %s: this kernel does not say how many instructions its verifier processed", a.hook.name)
			continue
		}
		t.Logf("hook %s: the verifier processed %d instructions", a.hook.name, n)
		if n > budget {
			t.Errorf("hook %s: the verifier processed %d instructions, over kdrop's budget of %d (its limit is 1M)", a.hook.name, n, budget)
		}
	}
	c.stop(t)
}
