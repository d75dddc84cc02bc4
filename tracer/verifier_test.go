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
func TestNoProgramRefusedByTheVerifier(t *testing.T) {
	c := startTracer(t, Options{})
	for _, h := range c.tr.Hooks() {
		for _, f := range h.Failed {
			if strings.Contains(f, "rejected by the verifier") {
				t.Errorf("hook %s: %s", h.Hook, f)
			}
		}
	}
	c.stop(t)
}
