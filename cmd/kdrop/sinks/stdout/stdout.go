// Package stdout writes lines where a terminal or `kubectl logs` reads
// them: JSON lines (package line) or table rows, buffered, flushed when a
// sweep's summaries have come and whenever the caller asks (a quiet stream
// still shows within its flush interval).
package stdout

import (
	"bufio"
	"fmt"
	"io"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
)

// Writer writes events. Not safe for concurrent use: the pipeline's emit
// path and its Every loops take turns (enrich.Pipeline.Every).
type Writer struct {
	w     *bufio.Writer
	table bool
	max   uint64 // most events written; 0: no limit
	n     uint64
	full  func() // called once max events are written
	buf   []byte
}

// New writes to w: table rows under line.TableHeader (written now), or
// JSON lines. After max events (0: no limit) it writes no more and calls
// full.
func New(w io.Writer, table bool, max uint64, full func()) *Writer {
	s := &Writer{w: bufio.NewWriterSize(w, 64<<10), table: table, max: max, full: full}
	if table {
		fmt.Fprintln(s.w, line.TableHeader)
	}
	return s
}

// Event writes ev.
func (s *Writer) Event(ev *line.Event) {
	if s.max > 0 && s.n >= s.max {
		return
	}
	if s.table {
		fmt.Fprintln(s.w, line.Printable(ev.TableRow()))
	} else {
		s.buf = append(line.AppendEvent(s.buf[:0], ev), '\n')
		s.w.Write(s.buf)
	}
	s.n++
	if s.max > 0 && s.n >= s.max && s.full != nil {
		s.full()
	}
	s.after(ev)
}

// Encoded writes ev's line, already encoded (without newline).
func (s *Writer) Encoded(ev *line.Event, b []byte) {
	s.w.Write(b)
	s.w.WriteByte('\n')
	s.after(ev)
}

// after flushes at the end of a sweep (summaries come then) or when much
// is buffered.
func (s *Writer) after(ev *line.Event) {
	if ev.Summary || s.w.Buffered() > 32<<10 {
		s.w.Flush()
	}
}

// Flush writes what is buffered.
func (s *Writer) Flush() error { return s.w.Flush() }
