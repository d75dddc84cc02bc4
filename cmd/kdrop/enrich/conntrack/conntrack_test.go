package conntrack

import (
	"testing"
	"time"

	"github.com/kdrop/kdrop/tracer/nstest"
)

// Budgets: a window's insert failures, other drops and invalid packets are
// given out once each, to drops inside it; a summary takes its whole count
// or nothing; a rule's drop (not conntrack's own) takes no own budget; a
// state rule's drop takes invalid first.
func TestTake(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	var w Windows
	if w.ReadAfter(at(0)) {
		t.Fatal("ReadAfter before any read")
	}
	w.Add(Stats{InsertFailed: 5, Drop: 5, Invalid: 1, Count: 10, Max: 64}, at(0), at(10))     // history: budget since the start
	w.Add(Stats{InsertFailed: 8, Drop: 10, Invalid: 3, Count: 64, Max: 64}, at(200), at(210)) // +3 insert failed, +2 other (full), +2 invalid
	w.Add(Stats{InsertFailed: 8, Drop: 11, Invalid: 3, Count: 20, Max: 64}, at(400), at(410)) // +1 other, full at its start
	w.Add(Stats{InsertFailed: 8, Drop: 12, Invalid: 3, Count: 20, Max: 64}, at(600), at(610)) // +1 other, not full
	if !w.ReadAfter(at(599)) || w.ReadAfter(at(600)) {
		t.Fatal("ReadAfter: the last read started at 600 ms")
	}
	take := func(ms int, n uint64, own, state bool) string {
		d := w.Take(at(ms-1), at(ms+1), n, own, state)
		if d == nil {
			return ""
		}
		return d.String()
	}
	for i, c := range []struct {
		ms        int
		n         uint64
		own, rule bool
		want      string
	}{
		{100, 1, false, false, ""}, // a rule's drop: no own budget
		{100, 4, true, false, ""},  // a summary of 4: only 3 insert failures, and 2 others: nothing
		{100, 3, true, false, "conntrack: insert failed (NAT port clash)"},
		{100, 1, true, false, "conntrack: table full 64/64"},
		{100, 1, true, true, "conntrack: invalid state"},
		{100, 1, true, true, "conntrack: invalid state"},
		{100, 1, false, true, ""}, // invalid spent
		{100, 1, true, false, "conntrack: table full 64/64"},
		{100, 1, true, false, ""}, // all spent
		{300, 1, true, false, "conntrack: table full 64/64"},
		{300, 1, true, false, ""},
		{500, 1, true, false, "conntrack: dropped"},
	} {
		if got := take(c.ms, c.n, c.own, c.rule); got != c.want {
			t.Errorf("take %d (%d at %d ms, own %v, state rule %v) = %q, want %q", i, c.n, c.ms, c.own, c.rule, got, c.want)
		}
	}
	w.Prune(at(500))
	if len(w.ws) != 1 {
		t.Errorf("after Prune: %d windows, want the last one", len(w.ws))
	}
	// a namespace forgotten for a while keeps its last read: the next
	// window holds what moved since, not everything since the start
	b := w.Baseline()
	b.Add(Stats{InsertFailed: 9, Drop: 13, Invalid: 3, Count: 20, Max: 64}, at(90000), at(90010))
	if len(b.ws) != 1 || b.ws[0].from != at(600) || b.ws[0].insertFailed != 1 || b.ws[0].otherDrop != 0 {
		t.Errorf("after Baseline: %+v, want one window from 600 ms with one insert failure", b.ws)
	}
}

// Read in a namespace the test makes: its own statistics, and the global
// limit; a namespace that is not there is an error that says so.
func TestReadInNamespace(t *testing.T) {
	ns := nstest.New(t, "ctr")
	nstest.Run(t, "ip", "netns", "exec", ns.Name, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	s, err := Read("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	if s.Max == 0 || s.InsertFailed != 0 || s.Drop != 0 || s.Invalid != 0 {
		t.Errorf("a fresh namespace: %+v, want no drops and a limit", s)
	}
	if _, err := Read("/run/netns/kdrop-none-such"); err == nil {
		t.Error("no error for a namespace that does not exist")
	}
}
