package nstest

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// WhileRunning checks a count kdrop reports against the kernel's own while
// the load that moves both is still running (a busy node never stops to be
// looked at). Every `every`, until done says so (For(d): for d), it reads seen (what kdrop has said so
// far: a stream's, a Kubernetes Event's or a metric's count), then kernel
// (the kernel's counter, as a delta since the load began). seen may never
// exceed kernel; with lag > 0 it must also have reached what kernel had
// counted lag before (the most kdrop may trail: its sweep, the sink's own
// flush interval, the reading's latency). The caller stops the load and
// checks exact equality afterwards. It returns the samples taken and the
// last one's counts; what names the count in failures.
func WhileRunning(t testing.TB, what string, done func() bool, every, lag time.Duration, seen, kernel func() uint64) (samples int, lastSeen, lastKernel uint64) {
	t.Helper()
	type sample struct {
		at           time.Time
		seen, kernel uint64
	}
	var past []sample
	begin := time.Now()
	for !done() || len(past) < 3 {
		time.Sleep(every)
		s := sample{seen: seen()}
		s.kernel, s.at = kernel(), time.Now()
		if s.seen > s.kernel {
			t.Errorf("%s at t+%v, load running: kdrop counts %d, more than the kernel's %d", what, time.Since(begin).Round(time.Millisecond), s.seen, s.kernel)
		}
		if lag > 0 {
			for i := len(past) - 1; i >= 0; i-- {
				if s.at.Sub(past[i].at) >= lag+every { // read seen before kernel: one interval of slack
					if s.seen < past[i].kernel {
						t.Errorf("%s at t+%v, load running: kdrop counts %d, but the kernel had counted %d %v before",
							what, time.Since(begin).Round(time.Millisecond), s.seen, past[i].kernel, s.at.Sub(past[i].at).Round(time.Millisecond))
					}
					break
				}
			}
		}
		past = append(past, s)
	}
	last := past[len(past)-1]
	if last.kernel == 0 {
		t.Errorf("%s: the kernel counted nothing in %v of load: the load did not reach the scenario", what, time.Since(begin).Round(time.Millisecond))
	}
	t.Logf("%s while the load ran: %d samples, last kdrop %d / kernel %d", what, len(past), last.seen, last.kernel)
	return len(past), last.seen, last.kernel
}

// For is WhileRunning's done for a load that runs at least d.
func For(d time.Duration) func() bool {
	end := time.Now().Add(d)
	return func() bool { return !time.Now().Before(end) }
}

// IptablesPackets sums the packet counters of the chain's rules (filter
// table) whose target is target and whose line says match ("" for any,
// e.g. "dpt:9999"); cmd is iptables or ip6tables.
func (n *NS) IptablesPackets(t testing.TB, cmd, chain, target, match string) uint64 {
	t.Helper()
	out := n.Sh(t, cmd+" -L "+chain+" -v -x -n")
	var total uint64
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == target && strings.Contains(line, match) {
			v, _ := strconv.ParseUint(f[0], 10, 64)
			total += v
		}
	}
	return total
}
