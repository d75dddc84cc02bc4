package report

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// A recording made before kdrop told lost lines from missed occurrences:
// its notices and trailer carry only "lost". It reads as it always did, its
// "lost" being lost lines and nothing missed; the golden Markdown pins the
// whole report. (testdata/v1-lost-only.jsonl.gz is in the format kdrop
// record wrote then, from tail, with a gap; regenerate the golden file with
// go test -run TestOldRecording -update.)
func TestOldRecording(t *testing.T) {
	const file = "testdata/v1-lost-only"
	f, err := os.Open(file + ".jsonl.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rec, err := Read(f)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if rec.Lost() != 421 || len(rec.Losses) != 2 || rec.Trailer == nil || rec.Trailer.Lost != 421 {
		t.Errorf("lost %d in %d notices, trailer %+v: want 421 in 2, trailer lost 421", rec.Lost(), len(rec.Losses), rec.Trailer)
	}
	if rec.Missed() != 0 || len(rec.Misses) != 0 || rec.Trailer.Missed != 0 {
		t.Errorf("missed %d (%d notices, trailer %d): an old recording has none", rec.Missed(), len(rec.Misses), rec.Trailer.Missed)
	}
	if rec.Total() != 645 || rec.EventLines != 4 || len(rec.Gaps) != 1 || len(rec.Notes) != 0 {
		t.Errorf("total %d in %d event lines, %d gaps, notes %q", rec.Total(), rec.EventLines, len(rec.Gaps), rec.Notes)
	}
	fs := rec.Findings()
	if got := findKind(fs, "missed"); len(got) != 0 {
		t.Errorf("a missed finding from a recording without misses:\n%s", dumpFindings(got))
	}
	lost := findKind(fs, "lost")
	if len(lost) != 1 || lost[0].Count != 421 || !strings.Contains(lost[0].Title, "counts are still exact") {
		t.Errorf("want one lost finding of 421 with exact counts:\n%s", dumpFindings(fs))
	}

	var md bytes.Buffer
	if err := WriteMarkdown(&md, rec); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(file+".md", md.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file + ".md")
	if err != nil {
		t.Fatalf("%v (run go test -run TestOldRecording -update to create it)", err)
	}
	if md.String() != string(want) {
		t.Errorf("the report of %s.jsonl.gz differs from %s.md (if the change is meant, rerun with -update and review the diff):\n%s", file, file, md.String())
	}
}
