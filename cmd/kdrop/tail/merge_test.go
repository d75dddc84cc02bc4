package tail

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
)

// tail holds at most maxHeld lines for the merge delay: past that, the
// oldest go out early, in time order, and stderr says so once.
func TestTailMergeHoldsAtMostMaxHeld(t *testing.T) {
	var stderr bytes.Buffer // read once merge has returned
	tl := &Tailer{agents: Agents{Delay: time.Hour}, lines: make(chan Line), maxHeld: 8, stderr: &stderr}
	var mu sync.Mutex
	var out []Line
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		tl.merge(ctx, func(batch []Line) {
			mu.Lock()
			out = append(out, batch...)
			mu.Unlock()
		})
		close(done)
	}()
	base := time.Now()
	const n = 40
	for i := range n { // pairs swapped, for the merge to put back in order
		j := i ^ 1
		tl.lines <- Line{At: base.Add(time.Duration(j) * time.Millisecond), Kind: line.KindEvent, Raw: fmt.Appendf(nil, `{"i":%d}`, j)}
	}
	// Unbuffered: the last line is pushed once the next select runs.
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	early := len(out)
	mu.Unlock()
	if held := n - early; held > 8 || held < 7 {
		t.Errorf("%d lines held with a cap of 8 (%d let go early)", held, early)
	}
	cancel()
	<-done
	if got := strings.Count(stderr.String(), "more than 8 lines held for --merge-delay 1h0m0s: letting the oldest go early"); got != 1 {
		t.Errorf("stderr said it %d times, want once:\n%s", got, stderr.String())
	}
	if len(out) != n {
		t.Fatalf("%d lines out, %d in", len(out), n)
	}
	// The early ones were the oldest, and swaps within the cap are still
	// put right: all in time order.
	for i := range out {
		if want := fmt.Sprintf(`{"i":%d}`, i); string(out[i].Raw) != want {
			t.Fatalf("line %d out is %s, want %s (early: %d)", i, out[i].Raw, want, early)
		}
	}
}
