package stdout

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

func TestWriter(t *testing.T) {
	ev := &line.Event{Event: tracer.Event{Time: time.Unix(0, 0), Type: tracer.Drop, Count: 1, Reason: "NO_SOCKET"}}
	var b bytes.Buffer
	full := 0
	w := New(&b, false, 2, func() { full++ })
	for range 3 {
		w.Event(ev)
	}
	w.Flush()
	if n := strings.Count(b.String(), `"reason":"NO_SOCKET"`); n != 2 || full != 1 {
		t.Errorf("%d lines written, full called %d times; want 2 and once:\n%s", n, full, b.String())
	}
	b.Reset()
	w = New(&b, true, 0, nil)
	w.Event(ev)
	w.Flush()
	if lines := strings.Split(strings.TrimSpace(b.String()), "\n"); len(lines) != 2 || lines[0] != line.TableHeader || !strings.Contains(lines[1], "NO_SOCKET") {
		t.Errorf("table:\n%s", b.String())
	}
}
