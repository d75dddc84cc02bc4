package tail

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/tracer"
)

// An /events client is told of lost lines, of kernel misses, and of the
// occurrences its own stream had no room for; tail shows each in its own
// words, and the count it sees plus what it was told it missed is what was
// published.
func TestStreamLossNotices(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := stream.NewHub("node-a", nil, 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.Serve(ctx, w, r) }))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	if hello, err := br.ReadBytes('\n'); err != nil || !bytes.Contains(hello, []byte(`"type":"hello"`)) {
		t.Fatalf("no hello line: %q %v", hello, err)
	}

	// The client does not read while the agent publishes far more than its
	// queue and the sockets hold: the rest is dropped for it, and counted.
	const published = 30000
	ev := &line.Event{Event: tracer.Event{Type: tracer.Drop, Count: 2, Reason: "NO_SOCKET"}}
	encoded := []byte(`{"time":"2026-11-27T11:50:00Z","type":"drop","count":2,"reason":"NO_SOCKET","pad":"` + strings.Repeat("x", 2000) + `"}`)
	for i := 0; i < published; i++ {
		h.Publish(ev, encoded)
	}
	h.Loss(4, 7)

	// Read until the stream has been quiet for a while after the notices:
	// queued events may still follow them.
	read := make(chan []byte, 1024)
	go func() {
		defer close(read)
		for {
			l, err := br.ReadBytes('\n')
			if err != nil {
				return
			}
			read <- l
		}
	}()
	var dec line.Decoder
	var got, kernel, stream, lost uint64
	var lines []byte
	deadline := time.After(20 * time.Second)
	for {
		var l []byte
		select {
		case got, ok := <-read:
			if !ok {
				t.Fatalf("the stream ended:\n%s", lines)
			}
			l = got
		case <-deadline:
			t.Fatalf("notices: %d lost lines, %d missed by the kernel, %d by the stream after 20 s:\n%s", lost, kernel, stream, lines)
		case <-time.After(2 * time.Second):
		}
		if l == nil {
			if kernel > 0 && stream > 0 && lost > 0 {
				break
			}
			continue
		}
		var head line.Line
		if err := dec.Decode(l, &head); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		switch head.Type {
		case "drop":
			got += head.Event.Count
			continue
		case "lost":
			lost += head.Notice.Lost
		case "missed":
			switch head.Notice.Cause {
			case line.MissedByKernel:
				kernel += head.Notice.Missed
			case line.MissedByStream:
				stream += head.Notice.Missed
			default:
				t.Errorf("missed notice with cause %q: %s", head.Notice.Cause, l)
			}
		}
		lines = append(lines, l...)
	}
	if lost != 4 || kernel != 7 || stream == 0 {
		t.Fatalf("notices: %d lost lines, %d missed by the kernel, %d by the stream; want 4, 7 and some:\n%s", lost, kernel, stream, lines)
	}
	if got+stream != 2*published {
		t.Errorf("the client saw %d occurrences and was told it missed %d: %d, want the %d published", got, stream, got+stream, 2*published)
	}
	t.Logf("%d occurrences through, %d missed by the stream", got, stream)

	// tail's words for each notice, and the numbers it carries on
	tl := &Tailer{lines: make(chan Line, 16)}
	if err := tl.read(bytes.NewReader(lines), "kdrop-a", "node-a"); err != nil {
		t.Fatal(err)
	}
	close(tl.lines)
	var table []string
	var sumLost, sumMissed uint64
	var l line.Line
	for tl := range tl.lines {
		sumLost += tl.Lost
		sumMissed += tl.Missed
		if err := dec.Decode(tl.Raw, &l); err != nil || l.Kind != line.KindNotice {
			t.Fatalf("%v: %s", err, tl.Raw)
		}
		table = append(table, l.Notice.ClusterRow())
	}
	if sumLost != 4 || sumMissed != 7+stream {
		t.Errorf("tail lines carry %d lost and %d missed, want 4 and %d", sumLost, sumMissed, 7+stream)
	}
	text := strings.Join(table, "\n")
	for _, want := range []string{
		"** 4 event lines lost on this node: the ring buffer was full (their counts arrive in later summary lines)",
		"** 7 occurrences missed on this node: counts may be short by up to 7 (the kernel skipped kdrop's program, already running on that CPU, e.g. a drop nested in softirq)",
		"occurrences missed on this node: counts are short by", "(this stream fell behind and the agent dropped lines for it; narrow the filters",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("tail lacks %q:\n%s", want, text)
		}
	}
	for _, row := range table {
		if strings.Contains(row, "missed") && (strings.Contains(row, "exact") || strings.Contains(row, "summary lines")) {
			t.Errorf("a missed row says its counts are kept: %s", row)
		}
	}
}
