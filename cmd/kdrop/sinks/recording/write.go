// Package recording writes and reads kdrop's recordings: a gzip-compressed
// file of lines (package line), a header first, a trailer last.
package recording

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// Writer writes one recording. The file has its name from the start
// (created, never replacing one) and takes a complete gzip block at every
// Flush, so a recorder killed mid-way (SIGKILL, a crash, a node reboot)
// leaves what it recorded up to its last Flush readable under the name
// asked for. Nothing it wrote is ever deleted: a recording that fails (a
// full disk) keeps what made it to disk, its trailer saying why it ended,
// if there was room for it. Not safe for concurrent use.
type Writer struct {
	path string
	f    *os.File
	gz   *gzip.Writer
	w    *bufio.Writer
	buf  []byte
	// Events, Lost and Missed are the trailer's counts so far: event
	// lines, lost lines and missed occurrences.
	Events, Lost, Missed uint64
}

// Create starts a recording at path with header h (Format and Started are
// filled in when zero). It fails if path exists.
func Create(path string, h line.Header) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%s exists: kdrop record never replaces a file (a recording is evidence); choose another name, or remove it first", path)
	}
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", path, err)
	}
	r := &Writer{path: path, f: f, gz: gzip.NewWriter(f)}
	r.w = bufio.NewWriterSize(r.gz, 64<<10)
	if h.Started.IsZero() {
		h.Started = time.Now()
	}
	r.Raw(line.AppendHeader(nil, h))
	return r, nil
}

// Event writes an event line.
func (r *Writer) Event(ev *line.Event) {
	r.buf = line.AppendEvent(r.buf[:0], ev)
	r.Raw(r.buf)
	r.Events++
}

// Notice writes a notice line, adding lost and missed notices to the
// trailer's counts.
func (r *Writer) Notice(n *line.Notice) {
	r.Lost += n.Lost
	r.Missed += n.Missed
	r.buf = line.AppendNotice(r.buf[:0], n)
	r.Raw(r.buf)
}

// Raw writes an encoded line as it is (one from an agent's stream).
func (r *Writer) Raw(b []byte) {
	r.w.Write(b)
	r.w.WriteByte('\n')
}

// LossNotices records what the tracer's loss counters grew by, on node.
func (r *Writer) LossNotices(node string, d tracer.Stats) {
	now := time.Now()
	if d.Missed > 0 {
		r.Notice(&line.Notice{Time: now, Type: line.NoticeMissed, Node: node, Missed: d.Missed, Cause: line.MissedByKernel})
	}
	if n := d.LostLinesTotal(); n > 0 {
		r.Notice(&line.Notice{Time: now, Type: line.NoticeLost, Node: node, Lost: n})
	}
}

// Flush pushes what is buffered to the file, as a complete gzip block, so
// that what was recorded so far reads even if the recorder is killed. It
// returns the first write error met so far: call it often (every second)
// to learn of a full disk while it can still be fixed.
func (r *Writer) Flush() error {
	if err := r.w.Flush(); err != nil {
		return fmt.Errorf("writing %s: %w", r.path, err)
	}
	if err := r.gz.Flush(); err != nil {
		return fmt.Errorf("writing %s: %w", r.path, err)
	}
	return nil
}

// Finish writes the trailer and closes the file. why, if not "", says why
// the recording ended early; it goes into the trailer. On a write error
// the file keeps what reached the disk (kdrop report reads a file cut off
// mid-way), and the error says so.
func (r *Writer) Finish(why string) error {
	r.Raw(line.AppendTrailer(nil, line.Trailer{Ended: time.Now(), Events: r.Events, Lost: r.Lost, Missed: r.Missed, Error: why}))
	err := r.w.Flush()
	if cerr := r.gz.Close(); err == nil {
		err = cerr
	}
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		return nil
	}
	if fi, serr := os.Stat(r.path); serr == nil && fi.Size() == 0 {
		// Nothing reached the disk: an empty file would only puzzle.
		os.Remove(r.path)
		return fmt.Errorf("writing %s: %w; nothing could be written, so no file was left", r.path, err)
	}
	return fmt.Errorf("writing %s: %w; what reached the disk was kept there", r.path, err)
}
