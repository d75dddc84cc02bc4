package recording

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// What Writer writes, Scan reads back: header, events, notices, trailer
// with the counts; the file appears under its name only once finished.
func TestWriteScan(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rec.jsonl.gz")
	w, err := Create(path, line.Header{Version: "test", From: "watch", Nodes: []line.Node{{Name: "n1", Kernel: "6.12"}}, RateLimit: 100})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for i := range 3 {
		w.Event(&line.Event{Event: tracer.Event{Time: at.Add(time.Duration(i) * time.Second), Type: tracer.Drop, Count: 2, Reason: "NO_SOCKET"}, Node: "n1"})
	}
	var st tracer.Stats
	st.LostLines[tracer.Drop], st.Missed = 5, 3
	w.LossNotices("n1", st)
	// under its name from the start: what was flushed reads before Finish
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if f, err := os.Open(path); err != nil {
		t.Errorf("the recording is not under its name before Finish: %v", err)
	} else {
		var n int
		if _, err := Scan(f, func(int, *line.Line) error { n++; return nil }); err != nil || n != 6 {
			t.Errorf("before Finish, %d lines read from %s (want the header, 3 events, 2 notices): %v", n, path, err)
		}
		f.Close()
	}
	if _, err := Create(path, line.Header{}); err == nil || !strings.Contains(err.Error(), "never replaces") {
		t.Errorf("a second Create at %s: %v, want a refusal", path, err)
	}
	if err := w.Finish(""); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Dir(path)); len(left) != 1 {
		t.Errorf("files beside the recording: %v", left)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kinds []line.Kind
	var events, lost, missed uint64
	var trailer line.Trailer
	sc, err := Scan(f, func(n int, l *line.Line) error {
		kinds = append(kinds, l.Kind)
		switch l.Kind {
		case line.KindHeader:
			if l.Header.Version != "test" || l.Header.From != "watch" || l.Header.RateLimit != 100 || l.Header.Nodes[0].Kernel != "6.12" || l.Header.Started.IsZero() {
				t.Errorf("header %+v", l.Header)
			}
		case line.KindEvent:
			events += l.Event.Count
		case line.KindNotice:
			lost += l.Notice.Lost
			missed += l.Notice.Missed
		case line.KindTrailer:
			trailer = l.Trailer
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(kinds) != 7 || sc.Lines != 7 || sc.CutOff || len(sc.Notes) != 0 {
		t.Errorf("kinds %v, scanned %+v", kinds, sc)
	}
	if events != 6 || lost != 5 || missed != 3 || trailer.Events != 3 || trailer.Lost != 5 || trailer.Missed != 3 {
		t.Errorf("events %d lost %d missed %d, trailer %+v", events, lost, missed, trailer)
	}
}

// A recording from kdrop's first release reads.
func TestScanVersion1(t *testing.T) {
	f, err := os.Open("../report/testdata/v1-lost-only.jsonl.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	if _, err := Scan(f, func(int, *line.Line) error { n++; return nil }); err != nil || n == 0 {
		t.Fatalf("%d lines, %v", n, err)
	}
}

func gz(s string) []byte {
	var b bytes.Buffer
	z := gzip.NewWriter(&b)
	z.Write([]byte(s))
	z.Close()
	return b.Bytes()
}

// FuzzScan: no file panics the reader or makes it pass a line of another
// kind than it decoded; a file it accepts starts with a header.
func FuzzScan(f *testing.F) {
	f.Add([]byte(`{"kdrop_record":1,"started":"2026-01-01T00:00:00Z"}` + "\n" + `{"time":"2026-01-01T00:00:01Z","type":"drop","count":1}` + "\n" + `{"kdrop_record_end":1,"ended":"2026-01-01T00:00:02Z"}`))
	f.Add([]byte(`{"kdrop_record":1,"started":"2026-01-01T00:00:00Z"}` + "\n" + `{"time":"x","type":"verdict"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		first := true
		Scan(bytes.NewReader(gz(string(b))), func(n int, l *line.Line) error {
			if first && l.Kind != line.KindHeader {
				t.Fatalf("line %d passed before a header: kind %d", n, l.Kind)
			}
			first = false
			return nil
		})
		if _, err := Scan(bytes.NewReader(b), func(int, *line.Line) error { return nil }); err == nil && !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Fatal("a file that is not gzip was accepted")
		}
	})
}

// A line over MaxLine is read past and named in a note, wherever it is
// after the header, the last line included; as the first line, the file is
// not a recording.
func TestScanLongLines(t *testing.T) {
	const head = `{"kdrop_record":1,"started":"2026-01-01T00:00:00Z"}`
	const ev = `{"time":"2026-01-01T00:00:01Z","type":"drop","count":1}`
	long := `{"time":"2026-01-01T00:00:01Z","type":"drop","count":1,"node":"` + strings.Repeat("x", MaxLine) + `"}`
	for _, c := range []struct {
		name, data string
		events     int
		err        string
	}{
		{"middle", head + "\n" + ev + "\n" + long + "\n" + ev + "\n", 2, ""},
		{"last, no newline", head + "\n" + ev + "\n" + long, 1, ""},
		{"first", long + "\n" + head + "\n", 0, "line 1: longer than 16 MiB"},
	} {
		events := 0
		sc, err := Scan(bytes.NewReader(gz(c.data)), func(n int, l *line.Line) error {
			if l.Kind == line.KindEvent {
				events++
			}
			return nil
		})
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want %q", c.name, err, c.err)
			}
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
		case events != c.events || sc.Skipped != 1 || len(sc.Notes) != 1 || !strings.Contains(sc.Notes[0], "longer than 16 MiB"):
			t.Errorf("%s: %d events, scanned %+v", c.name, events, sc)
		}
	}
}

// A damaged file (a bad checksum at its end, a corrupt block inside) keeps
// the lines before the damage, with a note; it is not refused whole.
func TestScanDamaged(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"kdrop_record":1,"started":"2026-01-01T00:00:00Z"}` + "\n")
	for i := range 5000 {
		fmt.Fprintf(&sb, `{"time":"2026-01-01T00:00:01Z","type":"drop","count":1,"dport":%d,"reason":"NO_SOCKET"}`+"\n", i)
	}
	good := gz(sb.String())
	badCRC := bytes.Clone(good)
	badCRC[len(badCRC)-8] ^= 0xff // the CRC-32 of the gzip trailer
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x55
	for _, c := range []struct {
		name      string
		data      []byte
		allEvents bool
	}{{"bad checksum", badCRC, true}, {"a flipped byte mid-file", flipped, false}} {
		events := 0
		sc, err := Scan(bytes.NewReader(c.data), func(n int, l *line.Line) error {
			if l.Kind == line.KindEvent {
				events++
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: refused whole: %v", c.name, err)
			continue
		}
		if events == 0 || (c.allEvents && events != 5000) || events > 5000 || !sc.CutOff || !strings.Contains(strings.Join(sc.Notes, "\n"), "the compressed data is damaged after line") {
			t.Errorf("%s: %d events kept, %+v", c.name, events, sc)
		}
	}
}
