package recording

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
)

// MaxLine bounds one line; a longer one is skipped and named in a note
// (before the header: the file is not a recording).
const MaxLine = 16 << 20

// Scanned is what Scan learned about a file besides its lines.
type Scanned struct {
	Lines int // lines read, header and trailer included
	// CutOff: the gzip stream ends mid-way (the recorder was killed); the
	// last, partial line was ignored.
	CutOff bool
	// Skipped counts the lines that could not be read and were left out
	// (a note names the first few).
	Skipped int
	// Notes are problems met that did not stop the reading, for a person.
	Notes []string
}

// maxSkipsNamed is how many unreadable lines a note names one by one.
const maxSkipsNamed = 5

// Scan reads a recording: it checks that the file is one (gzip, a header
// first) and passes each decoded line to fn with its number. A line that
// cannot be read (bad JSON, a field of the wrong type, a second header,
// data after the trailer, a line over MaxLine) is skipped, counted and
// named in a note, never fatal: a recording moves between people and
// tools, and one bad line must not cost the rest. Lines of types this kdrop does not know are counted in
// a note, not passed. A file cut off mid-way is read up to its last whole
// line. Errors (not a recording at all) name the line and what is wrong.
func Scan(r io.Reader, fn func(n int, l *line.Line) error) (Scanned, error) {
	var s Scanned
	// Buffers sized for throughput on big files without costing small
	// ones (a report, a test, a fuzz run) a large allocation: the gzip
	// reader keeps its own 32 KiB window.
	br := bufio.NewReaderSize(r, 16<<10)
	magic, err := br.Peek(2)
	switch {
	case len(magic) == 0 && (err == io.EOF || err == nil):
		return s, errors.New("not a kdrop recording: the file is empty")
	case err != nil && err != io.EOF:
		return s, fmt.Errorf("reading the recording: %w", err)
	case len(magic) < 2 || magic[0] != 0x1f || magic[1] != 0x8b:
		if bytes.HasPrefix(bytes.TrimLeft(magic, " \t\r\n"), []byte("{")) {
			return s, errors.New("not a kdrop recording: the file is plain text (JSON?), not gzip-compressed; kdrop record writes gzip, compress it with gzip first if it is a recording")
		}
		return s, errors.New("not a kdrop recording: the file is not gzip-compressed")
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return s, fmt.Errorf("not a kdrop recording: bad gzip header: %w", err)
	}
	sc := scanner{fn: fn}
	lr := bufio.NewReaderSize(zr, 64<<10)
	var buf []byte
	skip := func(perr error) {
		if s.Skipped++; s.Skipped <= maxSkipsNamed {
			sc.skips = append(sc.skips, perr.Error())
		}
	}
	for n := 1; ; n++ {
		b, long, err := readLine(lr, &buf)
		if long {
			// Read past, not kept: a line kdrop writes is a few hundred
			// bytes, so this one is damage or a crafted file.
			if !sc.sawHeader {
				return s, fmt.Errorf("line %d: longer than %d MiB: not a kdrop recording line", n, MaxLine>>20)
			}
			if err == nil || err == io.EOF {
				s.Lines = n
				skip(fmt.Errorf("line %d: longer than %d MiB, not a kdrop line", n, MaxLine>>20))
			}
		}
		if err != nil && err != io.EOF && len(b) > 0 {
			b = nil // the stream broke inside this line: it is incomplete
		}
		if len(b) > 0 {
			s.Lines = n
		}
		if len(bytes.TrimSpace(b)) > 0 {
			if perr := sc.line(n, b); perr != nil {
				if !sc.sawHeader {
					return s, perr
				}
				skip(perr)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				s.CutOff = true
				s.Notes = append(s.Notes, fmt.Sprintf("the compressed data ends abruptly after line %d (the file was cut off while it was written); the last, partial line was ignored", n-1))
				break
			}
			if !sc.sawHeader {
				return s, fmt.Errorf("line %d: reading the compressed data: %w (the file is damaged)", n, err)
			}
			// Damage (a bad checksum, a corrupt block): keep what came
			// before it, and say so; what follows cannot be read.
			s.CutOff = true
			s.Notes = append(s.Notes, fmt.Sprintf("the compressed data is damaged after line %d (%v): the lines before were kept, the rest of the file could not be read", n-1, err))
			break
		}
	}
	if !sc.sawHeader {
		return s, errors.New("not a kdrop recording: the file holds no header line")
	}
	if s.Skipped > 0 {
		note := fmt.Sprintf("%d lines could not be read and were left out: %s", s.Skipped, strings.Join(sc.skips, "; "))
		if s.Skipped > len(sc.skips) {
			note += fmt.Sprintf("; and %d more", s.Skipped-len(sc.skips))
		}
		s.Notes = append(s.Notes, note)
	}
	for _, typ := range sc.otherOrder {
		s.Notes = append(s.Notes, fmt.Sprintf("%d lines of type %q (first on line %d) were skipped: this kdrop does not know that type (recorded by a newer kdrop?)", sc.other[typ], typ, sc.otherAt[typ]))
	}
	return s, nil
}

type scanner struct {
	fn          func(int, *line.Line) error
	dec         line.Decoder
	l           line.Line
	sawHeader   bool
	trailerLine int
	other       map[string]int // lines of unknown types, by type
	otherAt     map[string]int // first line of each
	otherOrder  []string
	skips       []string // the first unreadable lines, named
}

func (sc *scanner) line(n int, b []byte) error {
	if sc.trailerLine > 0 {
		return fmt.Errorf("line %d: data after the end-of-recording line (line %d), two recordings joined together?", n, sc.trailerLine)
	}
	err := sc.dec.Decode(b, &sc.l)
	if !sc.sawHeader {
		switch {
		case sc.l.Kind == line.KindHeader && err != nil:
			return fmt.Errorf("line %d: %v", n, err)
		case sc.l.Kind == line.KindHeader:
			sc.sawHeader = true
			return sc.fn(n, &sc.l)
		case !bytes.HasPrefix(bytes.TrimSpace(b), []byte("{")):
			return fmt.Errorf("line %d: not a kdrop recording: the first line is not JSON", n)
		case sc.l.Type != "":
			return fmt.Errorf("line %d: the header is missing: the file starts with an event; a recording starts with a {\"kdrop_record\":%d,...} line", n, line.FormatVersion)
		case errors.Is(err, line.ErrNoType):
			return fmt.Errorf("line %d: not a kdrop recording header: no \"kdrop_record\" field", n)
		case err != nil:
			return fmt.Errorf("line %d: not a kdrop recording header: %v", n, err)
		}
		return fmt.Errorf("line %d: not a kdrop recording header: no \"kdrop_record\" field", n)
	}
	if err != nil {
		return fmt.Errorf("line %d: %v", n, err)
	}
	switch sc.l.Kind {
	case line.KindHeader:
		return fmt.Errorf("line %d: a second header, two recordings joined together?", n)
	case line.KindTrailer:
		sc.trailerLine = n
	case line.KindOther: // a type from a newer kdrop: say so, but read the rest
		if sc.other == nil {
			sc.other, sc.otherAt = map[string]int{}, map[string]int{}
		}
		if sc.other[sc.l.Type] == 0 {
			sc.otherAt[sc.l.Type] = n
			sc.otherOrder = append(sc.otherOrder, sc.l.Type)
		}
		sc.other[sc.l.Type]++
		return nil
	}
	return sc.fn(n, &sc.l)
}

// readLine returns the next line without its newline, using buf as scratch
// space. At the end of the data it returns the last line (if any) with
// io.EOF; on a read error, what it had with the error. A line longer than
// MaxLine is read to its end but not returned: long says so.
func readLine(r *bufio.Reader, buf *[]byte) (line []byte, long bool, err error) {
	*buf = (*buf)[:0]
	for {
		chunk, err := r.ReadSlice('\n')
		if !long && len(*buf)+len(chunk) > MaxLine {
			long, *buf = true, nil // let the 16 MiB go
		}
		if err == bufio.ErrBufferFull {
			if !long {
				*buf = append(*buf, chunk...)
			}
			continue
		}
		if long {
			return nil, true, err
		}
		if len(*buf) > 0 {
			*buf = append(*buf, chunk...)
			chunk = *buf
		}
		return bytes.TrimSuffix(chunk, []byte("\n")), false, err
	}
}
