// Package report reads a recording made by `kdrop record` and turns it into
// an incident report: a timeline, the listeners, destinations and drop
// reasons involved, and findings that say in plain words what went wrong
// and how to fix it. It writes the report as one self-contained HTML page
// or as Markdown for an incident ticket.
package report

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
)

// FormatVersion is the recording format (the header's "kdrop_record") this
// package reads.
const FormatVersion = 1

// maxLine bounds one JSON line; a longer one means the file is not what it
// claims to be.
const maxLine = 16 << 20

// Recording is a recording, read and folded: events with the same identity
// add up into one Flow, so a long storm costs memory per flow, not per line.
type Recording struct {
	Header  Header
	Trailer *Trailer // nil: the file ends without the end-of-recording line
	Flows   []*Flow  // in order of first appearance
	Losses  []Loss   // lost-lines notices, in file order
	Misses  []Miss   // missed notices, in file order
	Gaps    []Gap    // windows a node's agent was not streaming (from tail)
	// Notes are problems met while reading that did not stop it (a gzip
	// stream cut off, lines of a type this version does not know, ...).
	Notes []string
	// Lines counts the file's lines, header and trailer included; EventLines
	// the event lines among them.
	Lines, EventLines int

	firstEvent, lastEvent time.Time
	perSecond             map[slotKey]uint64 // occurrences per series and second
	cutOff                bool               // the gzip stream ended mid-way
}

// Header is the first line of a recording.
type Header struct {
	Format    int // "kdrop_record"
	Started   time.Time
	Version   string // kdrop's version
	Cluster   string
	Nodes     []Node
	Filters   Filters
	RateLimit uint32 // events per second per flow before folding; 0: none
	From      string // "watch" (one machine) or "tail" (the cluster's agents)
}

// Node is a node the recording covers.
type Node struct {
	Name   string `json:"name"`
	Kernel string `json:"kernel"`
}

// Filters are the filters the recording was made with.
type Filters struct {
	Types     []string `json:"types"`
	Reasons   []string `json:"reasons"`
	CIDRs     []string `json:"cidrs"`
	Port      uint16   `json:"port"`
	Netns     uint64   `json:"netns"`
	Namespace string   `json:"namespace"`
	Pod       string   `json:"pod"`
	Selector  string   `json:"selector"`
}

// Trailer is the last line, written when the recorder stops cleanly.
type Trailer struct {
	Ended  time.Time
	Events uint64
	Lost   uint64 // lost lines (see Loss)
	Missed uint64 // missed occurrences (see Miss); 0 in files from before kdrop told them apart
}

// Loss is a "lost" notice: events whose lines found no room in the ring
// buffer. Their occurrences still arrive in later summary lines, so counts
// stay exact; only those events' own lines are missing.
type Loss struct {
	Time time.Time
	Node string
	Lost uint64
}

// Miss is a "missed" notice: occurrences that are in no line at all, so
// every count is short by Missed. Cause says why (MissedByKernel,
// MissedByStream; anything else is a cause this kdrop does not know).
type Miss struct {
	Time   time.Time
	Node   string
	Missed uint64
	Cause  string
}

// Causes of a Miss.
const (
	// MissedByKernel: the kernel skipped kdrop's program for a hook
	// invocation because the program was already running on that CPU
	// (recursion protection, e.g. a drop nested in softirq).
	MissedByKernel = "kernel"
	// MissedByStream: an agent's /events client (kdrop tail, record --from
	// tail) fell behind, and the agent dropped lines for it.
	MissedByStream = "stream"
)

// Gap is a window in which a recording made from the agents (record --from
// tail) had no stream from one node: an agent restarted or went away.
// Nothing of that node in that window is in the recording, counts included.
type Gap struct {
	Node     string
	From, To time.Time
	Message  string
}

// K8s is the Kubernetes identity of one end of an event, or of the owner of
// the network namespace where the kernel acted.
type K8s struct {
	Kind         string   `json:"kind"` // pod, service or node
	Namespace    string   `json:"namespace"`
	Name         string   `json:"name"`
	WorkloadKind string   `json:"workload_kind"`
	WorkloadName string   `json:"workload_name"`
	Node         string   `json:"node"`
	Services     []string `json:"services"`
	Ready        *bool    `json:"ready"`
	Terminating  bool     `json:"terminating"`
	HostNetwork  bool     `json:"host_network"`
	// DeletedAgoMs > 0: the pod had been deleted that long before the
	// event, so the address was stale.
	DeletedAgoMs int64 `json:"deleted_ago_ms"`
	// ReadyEndpoints is, for a service, how many ready endpoints it had;
	// nil when unknown.
	ReadyEndpoints *int  `json:"ready_endpoints"`
	Previous       []K8s `json:"previous"`
	Unresolved     bool  `json:"unresolved"`
}

// FlowID is what makes events the same flow: everything but the time, the
// count, the source port and the queue lengths.
type FlowID struct {
	Type               string // drop, overflow or unreach
	Node               string
	Netns              uint64
	Ifindex            uint32
	Proto              string
	Src, Dst           netip.Addr
	Dport              uint16
	TCPFlags           string
	Reason             string
	ReasonCode         uint32
	Location           string
	ICMP               string
	ICMPType, ICMPCode uint8
	Queue              string
	QueueMax           uint32
	Somaxconn          uint32
	SrcK8s, DstK8s     *K8s
	WhereK8s           *K8s
}

// Flow is the sum of the events with one FlowID.
type Flow struct {
	FlowID
	Count       uint64 // occurrences: the sum of the lines' count
	Lines       int    // event lines folded in
	First, Last time.Time
	// MaxQueueLen and MaxSynQueueLen are the largest queue lengths seen.
	MaxQueueLen, MaxSynQueueLen uint32
	// Syncookies counts the occurrences answered with a SYN cookie.
	Syncookies uint64
	// Sources counts the hooks that saw it (fentry, kprobe, ...).
	Sources map[string]uint64

	series string
}

type slotKey struct {
	series string
	sec    int64
}

// Window is the time the recording covers: from the header's start to the
// trailer's end, or to the last event when the trailer is missing.
func (rec *Recording) Window() (start, end time.Time) {
	start, end = rec.Header.Started, rec.lastEvent
	if !rec.firstEvent.IsZero() && (start.IsZero() || rec.firstEvent.Before(start)) {
		start = rec.firstEvent
	}
	if rec.Trailer != nil && rec.Trailer.Ended.After(end) {
		end = rec.Trailer.Ended
	}
	if end.Before(start) {
		end = start
	}
	return start, end
}

// Truncated says the file ends without the end-of-recording line.
func (rec *Recording) Truncated() bool { return rec.Trailer == nil }

// Lost is how many events lost their lines (counts still exact): the
// trailer's total, or the sum of the "lost" notices without a trailer.
func (rec *Recording) Lost() uint64 {
	var sum uint64
	for _, l := range rec.Losses {
		sum += l.Lost
	}
	if rec.Trailer != nil && rec.Trailer.Lost > sum {
		return rec.Trailer.Lost
	}
	return sum
}

// Missed is how many occurrences no line counts, so that counts are short
// by that much: the trailer's total, or the sum of the "missed" notices
// without a trailer.
func (rec *Recording) Missed() uint64 {
	var sum uint64
	for _, m := range rec.Misses {
		sum += m.Missed
	}
	if rec.Trailer != nil && rec.Trailer.Missed > sum {
		return rec.Trailer.Missed
	}
	return sum
}

// Total is the number of occurrences of every kind.
func (rec *Recording) Total() uint64 {
	var n uint64
	for _, f := range rec.Flows {
		n += f.Count
	}
	return n
}

// Read reads a recording: the gzip-compressed JSON lines `kdrop record`
// writes. Errors name the line and what is wrong with it. A file cut off
// mid-way (the recorder was killed) is read up to its last whole line.
func Read(r io.Reader) (*Recording, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(2)
	switch {
	case len(magic) == 0 && (err == io.EOF || err == nil):
		return nil, errors.New("not a kdrop recording: the file is empty")
	case err != nil && err != io.EOF:
		return nil, fmt.Errorf("reading the recording: %w", err)
	case len(magic) < 2 || magic[0] != 0x1f || magic[1] != 0x8b:
		if bytes.HasPrefix(bytes.TrimLeft(magic, " \t\r\n"), []byte("{")) {
			return nil, errors.New("not a kdrop recording: the file is plain text (JSON?), not gzip-compressed; kdrop record writes gzip, compress it with gzip first if it is a recording")
		}
		return nil, errors.New("not a kdrop recording: the file is not gzip-compressed")
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("not a kdrop recording: bad gzip header: %w", err)
	}
	p := parser{
		rec:  &Recording{perSecond: map[slotKey]uint64{}},
		k8s:  map[string]*K8s{},
		flow: map[FlowID]*Flow{},
	}
	lr := bufio.NewReaderSize(zr, 256<<10)
	var buf []byte
	for n := 1; ; n++ {
		line, err := readLine(lr, &buf)
		if err == errLineTooLong {
			return nil, fmt.Errorf("line %d: longer than %d MiB: not a kdrop recording line", n, maxLine>>20)
		}
		if err != nil && err != io.EOF && len(line) > 0 {
			// the stream broke inside this line: whatever came of it is
			// incomplete
			line = nil
		}
		if len(line) > 0 {
			if perr := p.line(n, line); perr != nil {
				return nil, perr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				p.rec.cutOff = true
				p.rec.Notes = append(p.rec.Notes, fmt.Sprintf("the compressed data ends abruptly after line %d (the file was cut off while it was written); the last, partial line was ignored", n-1))
				break
			}
			return nil, fmt.Errorf("line %d: reading the compressed data: %w (the file is damaged)", n, err)
		}
	}
	if !p.sawHeader {
		return nil, errors.New("not a kdrop recording: the file holds no header line")
	}
	p.finish()
	return p.rec, nil
}

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its newline, using buf as scratch
// space. At the end of the data it returns the last line (if any) with
// io.EOF; on a read error, what it had with the error.
func readLine(r *bufio.Reader, buf *[]byte) ([]byte, error) {
	*buf = (*buf)[:0]
	for {
		chunk, err := r.ReadSlice('\n')
		if len(*buf)+len(chunk) > maxLine {
			return nil, errLineTooLong
		}
		if err == bufio.ErrBufferFull {
			*buf = append(*buf, chunk...)
			continue
		}
		if len(*buf) > 0 {
			*buf = append(*buf, chunk...)
			chunk = *buf
		}
		return bytes.TrimSuffix(chunk, []byte("\n")), err
	}
}

type parser struct {
	rec         *Recording
	sawHeader   bool
	trailerLine int
	k8s         map[string]*K8s
	flow        map[FlowID]*Flow
	unknown     map[string]int // lines of unknown types, by type
	unknownAt   map[string]int // first line of each
}

// wireHeader is the first line as written.
type wireHeader struct {
	Format    *int    `json:"kdrop_record"`
	Started   string  `json:"started"`
	Version   string  `json:"version"`
	Cluster   string  `json:"cluster"`
	Nodes     []Node  `json:"nodes"`
	Filters   Filters `json:"filters"`
	RateLimit uint32  `json:"rate_limit"`
	From      string  `json:"from"`
	Type      string  `json:"type"`
}

// wireLine is any line after the header: an event, a loss notice ("lost"
// or "missed") or the trailer. Unknown fields are ignored.
type wireLine struct {
	Format *int `json:"kdrop_record"`
	End    *int `json:"kdrop_record_end"`
	Ended  string
	Events uint64 `json:"events"`
	Lost   *uint64
	Missed *uint64 `json:"missed"`
	Cause  string  `json:"cause"`

	Time        string          `json:"time"`
	Type        string          `json:"type"`
	Message     string          `json:"message"`
	GapFrom     string          `json:"gap_from"`
	GapTo       string          `json:"gap_to"`
	Count       *uint64         `json:"count"`
	Summary     bool            `json:"summary"`
	Source      string          `json:"source"`
	Node        string          `json:"node"`
	Netns       uint64          `json:"netns"`
	Ifindex     uint32          `json:"ifindex"`
	Proto       string          `json:"proto"`
	Src         netip.Addr      `json:"src"`
	Sport       uint16          `json:"sport"`
	Dst         netip.Addr      `json:"dst"`
	Dport       uint16          `json:"dport"`
	TCPFlags    string          `json:"tcp_flags"`
	Reason      string          `json:"reason"`
	ReasonCode  uint32          `json:"reason_code"`
	Location    string          `json:"location"`
	ICMP        string          `json:"icmp"`
	ICMPType    uint8           `json:"icmp_type"`
	ICMPCode    uint8           `json:"icmp_code"`
	Queue       string          `json:"queue"`
	QueueLen    uint32          `json:"queue_len"`
	QueueMax    uint32          `json:"queue_max"`
	SynQueueLen uint32          `json:"syn_queue_len"`
	Syncookie   bool            `json:"syncookie"`
	Somaxconn   uint32          `json:"somaxconn"`
	SrcK8s      json.RawMessage `json:"src_k8s"`
	DstK8s      json.RawMessage `json:"dst_k8s"`
	WhereK8s    json.RawMessage `json:"where_k8s"`
}

// jsonError words a decoding error for a person.
func jsonError(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		if strings.Contains(se.Error(), "unexpected end of JSON input") {
			return "the line ends in the middle of its JSON object (cut off?)"
		}
		return fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return fmt.Sprintf("the line is a JSON %s, not an object", te.Value)
		}
		return fmt.Sprintf("field %q: a JSON %s where %s is expected", te.Field, te.Value, typeWord(te.Type.String()))
	}
	s := strings.TrimPrefix(err.Error(), "json: ")
	if strings.HasPrefix(s, "ParseAddr(") {
		return "not an IP address: " + s
	}
	return strings.ReplaceAll(s, "Go struct field wireLine.", "field ")
}

func typeWord(t string) string {
	t = strings.TrimPrefix(t, "*")
	switch {
	case strings.HasPrefix(t, "uint"):
		return "a whole number, 0 or more"
	case strings.HasPrefix(t, "int"):
		return "a whole number"
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	}
	return t
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, fmt.Errorf("no %q time", field)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time: %q", field, s)
	}
	return t, nil
}

func (p *parser) line(n int, b []byte) error {
	p.rec.Lines = n
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil
	}
	if !p.sawHeader {
		return p.header(n, b)
	}
	if p.trailerLine > 0 {
		return fmt.Errorf("line %d: data after the end-of-recording line (line %d): two recordings joined together?", n, p.trailerLine)
	}
	var w wireLine
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("line %d: %s", n, jsonError(err))
	}
	switch {
	case w.End != nil:
		return p.trailer(n, &w)
	case w.Format != nil:
		return fmt.Errorf("line %d: a second header: two recordings joined together?", n)
	}
	switch w.Type {
	case "":
		return fmt.Errorf("line %d: no \"type\" field (an event is drop, overflow or unreach; \"lost\" and \"missed\" are loss notices)", n)
	case "lost":
		t, err := parseTime("time", w.Time)
		if err != nil {
			return fmt.Errorf("line %d: loss notice: %v", n, err)
		}
		if w.Lost == nil {
			return fmt.Errorf("line %d: loss notice without \"lost\"", n)
		}
		p.rec.Losses = append(p.rec.Losses, Loss{Time: t, Node: w.Node, Lost: *w.Lost})
		p.seen(t)
		return nil
	case "missed":
		t, err := parseTime("time", w.Time)
		if err != nil {
			return fmt.Errorf("line %d: missed notice: %v", n, err)
		}
		if w.Missed == nil {
			return fmt.Errorf("line %d: missed notice without \"missed\"", n)
		}
		p.rec.Misses = append(p.rec.Misses, Miss{Time: t, Node: w.Node, Missed: *w.Missed, Cause: w.Cause})
		p.seen(t)
		return nil
	case "drop", "overflow", "unreach":
		return p.event(n, &w)
	case "notice": // from kdrop tail; only gaps matter to a report
		if w.GapFrom == "" {
			return nil
		}
		from, err := parseTime("gap_from", w.GapFrom)
		if err != nil {
			return fmt.Errorf("line %d: gap notice: %v", n, err)
		}
		to, err := parseTime("gap_to", w.GapTo)
		if err != nil {
			return fmt.Errorf("line %d: gap notice: %v", n, err)
		}
		p.rec.Gaps = append(p.rec.Gaps, Gap{Node: w.Node, From: from, To: to, Message: w.Message})
		return nil
	}
	// a type from a newer kdrop: say so, but read the rest
	if p.unknown == nil {
		p.unknown, p.unknownAt = map[string]int{}, map[string]int{}
	}
	if p.unknown[w.Type] == 0 {
		p.unknownAt[w.Type] = n
	}
	p.unknown[w.Type]++
	return nil
}

func (p *parser) header(n int, b []byte) error {
	var h wireHeader
	if err := json.Unmarshal(b, &h); err != nil {
		if bytes.HasPrefix(b, []byte("{")) {
			return fmt.Errorf("line %d: not a kdrop recording header: %s", n, jsonError(err))
		}
		return fmt.Errorf("line %d: not a kdrop recording: the first line is not JSON", n)
	}
	if h.Format == nil {
		if h.Type != "" {
			return fmt.Errorf("line %d: the header is missing: the file starts with an event; a recording starts with a {\"kdrop_record\":%d,...} line", n, FormatVersion)
		}
		return fmt.Errorf("line %d: not a kdrop recording header: no \"kdrop_record\" field", n)
	}
	if *h.Format != FormatVersion {
		if *h.Format > FormatVersion {
			return fmt.Errorf("line %d: recording format %d is newer than this kdrop reads (%d): use a newer kdrop to read it", n, *h.Format, FormatVersion)
		}
		return fmt.Errorf("line %d: unknown recording format %d (this kdrop reads %d)", n, *h.Format, FormatVersion)
	}
	started, err := parseTime("started", h.Started)
	if err != nil {
		return fmt.Errorf("line %d: header: %v", n, err)
	}
	p.rec.Header = Header{
		Format: *h.Format, Started: started, Version: h.Version, Cluster: h.Cluster,
		Nodes: h.Nodes, Filters: h.Filters, RateLimit: h.RateLimit, From: h.From,
	}
	p.sawHeader = true
	return nil
}

func (p *parser) trailer(n int, w *wireLine) error {
	if *w.End != FormatVersion {
		return fmt.Errorf("line %d: end-of-recording line of unknown format %d (this kdrop reads %d)", n, *w.End, FormatVersion)
	}
	ended, err := parseTime("ended", w.Ended)
	if err != nil {
		return fmt.Errorf("line %d: end-of-recording line: %v", n, err)
	}
	t := &Trailer{Ended: ended, Events: w.Events}
	if w.Lost != nil {
		t.Lost = *w.Lost
	}
	if w.Missed != nil {
		t.Missed = *w.Missed
	}
	p.rec.Trailer = t
	p.trailerLine = n
	return nil
}

func (p *parser) identity(n int, field string, raw json.RawMessage) (*K8s, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if k, ok := p.k8s[string(raw)]; ok {
		return k, nil
	}
	k := new(K8s)
	if err := json.Unmarshal(raw, k); err != nil {
		return nil, fmt.Errorf("line %d: %s: %s", n, field, strings.ReplaceAll(jsonError(err), "Go struct field K8s.", "field "))
	}
	p.k8s[string(raw)] = k
	return k, nil
}

func (p *parser) seen(t time.Time) {
	if p.rec.firstEvent.IsZero() || t.Before(p.rec.firstEvent) {
		p.rec.firstEvent = t
	}
	if t.After(p.rec.lastEvent) {
		p.rec.lastEvent = t
	}
}

func (p *parser) event(n int, w *wireLine) error {
	t, err := parseTime("time", w.Time)
	if err != nil {
		return fmt.Errorf("line %d: %s event: %v", n, w.Type, err)
	}
	if w.Count == nil {
		return fmt.Errorf("line %d: %s event without \"count\"", n, w.Type)
	}
	id := FlowID{
		Type: w.Type, Node: w.Node, Netns: w.Netns, Ifindex: w.Ifindex, Proto: w.Proto,
		Src: w.Src, Dst: w.Dst, Dport: w.Dport, TCPFlags: w.TCPFlags,
	}
	switch w.Type {
	case "drop":
		id.Reason, id.ReasonCode, id.Location = w.Reason, w.ReasonCode, w.Location
		if id.Reason == "" {
			id.Reason = "unknown"
		}
	case "unreach":
		id.ICMP, id.ICMPType, id.ICMPCode = w.ICMP, w.ICMPType, w.ICMPCode
		if id.ICMP == "" {
			id.ICMP = fmt.Sprintf("icmp %d/%d", w.ICMPType, w.ICMPCode)
		}
	case "overflow":
		id.Queue, id.QueueMax, id.Somaxconn = w.Queue, w.QueueMax, w.Somaxconn
		if id.Queue == "" {
			id.Queue = "accept"
		}
	}
	if id.SrcK8s, err = p.identity(n, "src_k8s", w.SrcK8s); err != nil {
		return err
	}
	if id.DstK8s, err = p.identity(n, "dst_k8s", w.DstK8s); err != nil {
		return err
	}
	if id.WhereK8s, err = p.identity(n, "where_k8s", w.WhereK8s); err != nil {
		return err
	}
	f := p.flow[id]
	if f == nil {
		f = &Flow{FlowID: id, First: t, Last: t, series: seriesOf(&id)}
		p.flow[id] = f
		p.rec.Flows = append(p.rec.Flows, f)
	}
	c := *w.Count
	f.Count += c
	f.Lines++
	if t.Before(f.First) {
		f.First = t
	}
	if t.After(f.Last) {
		f.Last = t
	}
	f.MaxQueueLen = max(f.MaxQueueLen, w.QueueLen)
	f.MaxSynQueueLen = max(f.MaxSynQueueLen, w.SynQueueLen)
	if w.Syncookie {
		f.Syncookies += c
	}
	if w.Source != "" {
		if f.Sources == nil {
			f.Sources = map[string]uint64{}
		}
		f.Sources[w.Source] += c
	}
	p.rec.EventLines++
	p.rec.perSecond[slotKey{f.series, t.Unix()}] += c
	p.seen(t)
	return nil
}

func (p *parser) finish() {
	rec := p.rec
	for typ, lines := range p.unknown {
		rec.Notes = append(rec.Notes, fmt.Sprintf("%d lines of type %q (first on line %d) were skipped: this kdrop does not know that type (recorded by a newer kdrop?)", lines, typ, p.unknownAt[typ]))
	}
	if t := rec.Trailer; t != nil && t.Events != 0 {
		if total := rec.Total(); t.Events != uint64(rec.EventLines) && t.Events != total {
			rec.Notes = append(rec.Notes, fmt.Sprintf("the end-of-recording line counts %d events, the file holds %d event lines (%d occurrences)", t.Events, rec.EventLines, total))
		}
	}
}

// seriesOf names the timeline series of a flow: the drop reason, the queue
// that overflowed, or the ICMP error sent.
func seriesOf(id *FlowID) string {
	switch id.Type {
	case "drop":
		return id.Reason
	case "overflow":
		if id.Queue == "syn" {
			return "SYN queue overflow"
		}
		return "accept queue overflow"
	case "unreach":
		return "ICMP " + id.ICMP
	}
	return id.Type
}
