package line

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/route"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// Kind says what a decoded line is.
type Kind uint8

const (
	// KindOther is a line of a type this kdrop does not know (written by a
	// newer one): Line.Type says which. Readers skip it and may say so.
	KindOther Kind = iota
	KindEvent
	KindNotice
	KindHeader
	KindTrailer
)

// Line is any decoded line. Kind says which of Event, Notice, Header and
// Trailer is filled in.
type Line struct {
	Kind    Kind
	Type    string    // the "type" field ("" for a header or trailer)
	Time    time.Time // the line's time: event or notice time, header's start, trailer's end
	Event   Event
	Notice  Notice
	Header  Header
	Trailer Trailer
}

// Decoder decodes lines. It keeps one copy of each distinct identity it
// meets, so equal identities decode to the same *k8s.Endpoint (a reader
// that folds millions of events keeps one per pod, and may compare them
// by pointer). A Decoder is not safe for concurrent use.
type Decoder struct {
	endpoints map[string]*k8s.Endpoint
	kept      int               // bytes of JSON kept as keys of endpoints
	interned  map[string]string // fast.go
	protos    map[string]uint8  // parseProto's answers
	flags     map[string]uint8  // parseTCPFlags' answers
	slowOnly  bool              // tests: encoding/json only
	scratch   *scratch
}

// A Decoder keeps at most maxEndpointBytes of identities, none longer than
// maxEndpointLen (a real one is a few hundred bytes); others are decoded
// afresh each time.
const (
	maxEndpointBytes = 32 << 20
	maxEndpointLen   = 4 << 10
)

// wire is any line as written; unknown fields are ignored.
type wire struct {
	Format *int `json:"kdrop_record"`
	End    *int `json:"kdrop_record_end"`

	// header
	Started   string  `json:"started"`
	Version   string  `json:"version"`
	From      string  `json:"from"`
	Cluster   string  `json:"cluster"`
	Nodes     []Node  `json:"nodes"`
	Filters   Filters `json:"filters"`
	RateLimit uint32  `json:"rate_limit"`

	// trailer
	Ended  string `json:"ended"`
	Events uint64 `json:"events"`
	Error  string `json:"error"`

	// notices
	Lost    *uint64 `json:"lost"`
	Missed  *uint64 `json:"missed"`
	Cause   string  `json:"cause"`
	Message string  `json:"message"`
	GapFrom string  `json:"gap_from"`
	GapTo   string  `json:"gap_to"`

	// events
	Time        string          `json:"time"`
	Type        string          `json:"type"`
	Count       *uint64         `json:"count"`
	Summary     bool            `json:"summary"`
	Source      string          `json:"source"`
	Coarse      string          `json:"coarse"`
	Node        string          `json:"node"`
	Netns       uint32          `json:"netns"`
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
	ICMPType    uint8           `json:"icmp_type"`
	ICMPCode    uint8           `json:"icmp_code"`
	ICMPMTU     uint32          `json:"icmp_mtu"`
	ICMPPointer uint32          `json:"icmp_pointer"`
	ICMPGateway netip.Addr      `json:"icmp_gateway"`
	Queue       string          `json:"queue"`
	QueueLen    uint32          `json:"queue_len"`
	QueueMax    uint32          `json:"queue_max"`
	SynQueueLen uint32          `json:"syn_queue_len"`
	Syncookie   bool            `json:"syncookie"`
	Somaxconn   uint32          `json:"somaxconn"`
	SrcK8s      json.RawMessage `json:"src_k8s"`
	DstK8s      json.RawMessage `json:"dst_k8s"`
	WhereK8s    json.RawMessage `json:"where_k8s"`
	Rule        *wireRule       `json:"rule"`
	Route       *wireRoute      `json:"route"`
	Conntrack   *wireConntrack  `json:"conntrack"`
	Probe       *wireProbe      `json:"probe"`
}

// wireConntrack is a conntrack drop as written.
type wireConntrack struct {
	Cause string `json:"cause"`
	Count uint32 `json:"count"`
	Max   uint32 `json:"max"`
}

// wireProbe is a probe as written (appendProbe).
type wireProbe struct {
	Kind      string   `json:"kind"`
	Also      []string `json:"also"`
	Port      uint16   `json:"port"`
	Handler   string   `json:"handler"`
	Container string   `json:"container"`
	HTTPS     bool     `json:"https"`
}

// probe is the decoded probe; kinds this kdrop does not know (a newer
// one's) are left out.
func (w *wireProbe) probe() *k8s.Probe {
	p := &k8s.Probe{Port: w.Port, Handler: w.Handler, Container: w.Container, HTTPS: w.HTTPS, Kinds: k8s.ParseProbeKind(w.Kind)}
	for _, k := range w.Also {
		p.Kinds |= k8s.ParseProbeKind(k)
	}
	return p
}

// wireRoute is a route as written.
type wireRoute struct {
	Type  string       `json:"type"`
	Dst   netip.Prefix `json:"dst"`
	Table int          `json:"table"`
}

// wireRule is a netfilter rule as written (appendRule).
type wireRule struct {
	Backend    string       `json:"backend"`
	How        string       `json:"how"`
	Candidates []wireRef    `json:"candidates"`
	Unknown    string       `json:"unknown"`
	K8s        *wireMeaning `json:"k8s"`
	wireRef
}

// wireMeaning is a rule's Kubernetes meaning as written (appendMeaning).
type wireMeaning struct {
	Meaning       string `json:"meaning"`
	Engine        string `json:"engine"`
	Service       string `json:"service"`
	NetworkPolicy []struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"network_policy"`
	Direction  string       `json:"direction"`
	Pod        string       `json:"pod"`
	Evaluation string       `json:"evaluation"`
	Evaluated  *wireMeaning `json:"evaluated"`
	Text       string       `json:"text"`
}

func (k *wireMeaning) meaning() *netfilter.Meaning {
	if k == nil {
		return nil
	}
	m := &netfilter.Meaning{Kind: k.Meaning, Engine: k.Engine, Service: k.Service, Direction: k.Direction, Pod: k.Pod,
		Evaluation: k.Evaluation, Evaluated: k.Evaluated.meaning(), Text: k.Text}
	for _, p := range k.NetworkPolicy {
		m.NetworkPolicies = append(m.NetworkPolicies, netfilter.PolicyRef{Namespace: p.Namespace, Name: p.Name})
	}
	return m
}

type wireRef struct {
	Family   string `json:"family"`
	Table    string `json:"table"`
	Chain    string `json:"chain"`
	Handle   uint64 `json:"handle"`
	Position int    `json:"position"`
	Comment  string `json:"comment"`
	Verdict  string `json:"verdict"`
	Packets  uint64 `json:"packets"`
}

func (w *wireRef) ref() netfilter.Ref {
	return netfilter.Ref{Family: w.Family, Table: w.Table, Chain: w.Chain, Handle: w.Handle, Position: w.Position,
		Comment: w.Comment, Verdict: w.Verdict, Packets: w.Packets}
}

func (w *wireRule) rule() *netfilter.Rule {
	r := &netfilter.Rule{Backend: w.Backend, Ref: w.ref(), How: w.How, Unknown: w.Unknown}
	for i := range w.Candidates {
		r.Candidates = append(r.Candidates, w.Candidates[i].ref())
	}
	r.K8s = w.K8s.meaning()
	return r
}

// wireEndpoint is an identity as written.
type wireEndpoint struct {
	Kind           string         `json:"kind"`
	Namespace      string         `json:"namespace"`
	Name           string         `json:"name"`
	WorkloadKind   string         `json:"workload_kind"`
	WorkloadName   string         `json:"workload_name"`
	Node           string         `json:"node"`
	Services       []string       `json:"services"`
	Ready          bool           `json:"ready"`
	ReadyEndpoints *int           `json:"ready_endpoints"`
	Terminating    bool           `json:"terminating"`
	HostNetwork    bool           `json:"host_network"`
	DeletedAgoMs   int64          `json:"deleted_ago_ms"`
	Previous       []wireEndpoint `json:"previous"`
	Unresolved     bool           `json:"unresolved"`
}

func (w *wireEndpoint) endpoint() k8s.Endpoint {
	e := k8s.Endpoint{Kind: w.Kind, Namespace: w.Namespace, Name: w.Name, WorkloadKind: w.WorkloadKind,
		WorkloadName: w.WorkloadName, Node: w.Node, Services: w.Services, Ready: w.Ready,
		ReadyEndpoints: -1, Terminating: w.Terminating, HostNetwork: w.HostNetwork,
		DeletedAgo: msDuration(w.DeletedAgoMs), Unresolved: w.Unresolved}
	if w.ReadyEndpoints != nil {
		e.ReadyEndpoints = *w.ReadyEndpoints
	}
	for i := range w.Previous {
		e.Previous = append(e.Previous, w.Previous[i].endpoint())
	}
	return e
}

// ErrNoType: the line is a JSON object without "type" (and not a header
// or trailer).
var ErrNoType = errors.New(`no "type" field`)

// msDuration is ms milliseconds, clamped to what a Duration holds.
func msDuration(ms int64) time.Duration {
	const most = int64(math.MaxInt64 / int64(time.Millisecond))
	return time.Duration(max(-most, min(ms, most))) * time.Millisecond
}

// Decode decodes one line (without its newline) into l. Errors say, for a
// person, what is wrong with the line; the caller adds where it is.
func (d *Decoder) Decode(b []byte, l *Line) error {
	b = bytes.TrimSpace(b)
	if d.scratch == nil {
		d.scratch = new(scratch)
	}
	w := &d.scratch.w
	if !d.slowOnly {
		*w = wire{}
		if d.fastWire(b, w, &d.scratch.r) {
			*l = Line{}
			if err := d.fromWire(w, l); err == nil {
				return nil
			}
			// encoding/json words the error
		}
	}
	*w = wire{}
	*l = Line{}
	if err := json.Unmarshal(b, w); err != nil {
		return errors.New(jsonError(err))
	}
	return d.fromWire(w, l)
}

// scratch is what Decode reads a line into, kept from line to line.
type scratch struct {
	w wire
	r fastReader
}

// fromWire decodes a line read into w.
func (d *Decoder) fromWire(w *wire, l *Line) error {
	switch {
	case w.Format != nil:
		return d.header(w, l)
	case w.End != nil:
		return d.trailer(w, l)
	}
	// Type, Time and Kind are set even when the rest is wrong, so a
	// reader that only orders or passes lines on may still do so.
	l.Type = w.Type
	if t, err := time.Parse(time.RFC3339Nano, w.Time); err == nil {
		l.Time = t
	}
	if w.Type == "" {
		return fmt.Errorf(`%w (an event is drop, overflow or unreach; a notice is hello, heartbeat, notice, lost or missed)`, ErrNoType)
	}
	if _, err := tracer.ParseEventType(w.Type); err == nil {
		l.Kind = KindEvent
		return d.event(w, l)
	}
	switch w.Type {
	case NoticeHello, NoticeHeartbeat, NoticeMessage, NoticeLost, NoticeMissed:
		l.Kind = KindNotice
		return d.notice(w, l)
	}
	l.Kind = KindOther
	return nil
}

func (d *Decoder) header(w *wire, l *Line) error {
	l.Kind = KindHeader
	if f := *w.Format; f != FormatVersion {
		if f > FormatVersion {
			return fmt.Errorf("recording format %d is newer than this kdrop reads (%d): use a newer kdrop to read it", f, FormatVersion)
		}
		return fmt.Errorf("unknown recording format %d (this kdrop reads %d)", f, FormatVersion)
	}
	started, err := parseTime("started", w.Started)
	if err != nil {
		return fmt.Errorf("header: %v", err)
	}
	l.Time = started
	l.Header = Header{Format: *w.Format, Started: started, Version: w.Version, From: w.From, Cluster: w.Cluster,
		Nodes: w.Nodes, Filters: w.Filters, RateLimit: w.RateLimit}
	return nil
}

func (d *Decoder) trailer(w *wire, l *Line) error {
	l.Kind = KindTrailer
	if *w.End != FormatVersion {
		return fmt.Errorf("end-of-recording line of unknown format %d (this kdrop reads %d)", *w.End, FormatVersion)
	}
	ended, err := parseTime("ended", w.Ended)
	if err != nil {
		return fmt.Errorf("end-of-recording line: %v", err)
	}
	l.Time = ended
	l.Trailer = Trailer{Format: *w.End, Ended: ended, Events: w.Events, Error: w.Error}
	if w.Lost != nil {
		l.Trailer.Lost = *w.Lost
	}
	if w.Missed != nil {
		l.Trailer.Missed = *w.Missed
	}
	return nil
}

func (d *Decoder) notice(w *wire, l *Line) error {
	t, err := parseTime("time", w.Time)
	if err != nil {
		return fmt.Errorf("%s notice: %v", w.Type, err)
	}
	l.Time = t
	n := Notice{Time: t, Type: w.Type, Node: w.Node, Message: w.Message, Cause: w.Cause}
	switch w.Type {
	case NoticeLost:
		if w.Lost == nil {
			return errors.New(`loss notice without "lost"`)
		}
		n.Lost = *w.Lost
	case NoticeMissed:
		if w.Missed == nil {
			return errors.New(`missed notice without "missed"`)
		}
		n.Missed = *w.Missed
	case NoticeMessage:
		if w.GapFrom != "" || w.GapTo != "" {
			if n.GapFrom, err = parseTime("gap_from", w.GapFrom); err != nil {
				return fmt.Errorf("gap notice: %v", err)
			}
			if n.GapTo, err = parseTime("gap_to", w.GapTo); err != nil {
				return fmt.Errorf("gap notice: %v", err)
			}
			if n.GapTo.Before(n.GapFrom) {
				return fmt.Errorf("gap notice: gap_to %s is before gap_from %s", w.GapTo, w.GapFrom)
			}
		}
	}
	l.Notice = n
	return nil
}

func (d *Decoder) event(w *wire, l *Line) error {
	t, err := parseTime("time", w.Time)
	if err != nil {
		return fmt.Errorf("%s event: %v", w.Type, err)
	}
	if w.Count == nil {
		return fmt.Errorf(`%s event without "count"`, w.Type)
	}
	l.Time = t
	e := &l.Event
	e.Type, _ = tracer.ParseEventType(w.Type) // one of the three, checked by the caller
	e.Time, e.Count, e.Summary, e.Source, e.Coarse = t, *w.Count, w.Summary, w.Source, w.Coarse
	e.Netns, e.Ifindex, e.Node = w.Netns, w.Ifindex, w.Node
	e.Proto = d.parseProto(w.Proto)
	if w.Src.IsValid() {
		e.Src = netip.AddrPortFrom(w.Src, w.Sport)
	}
	if w.Dst.IsValid() {
		e.Dst = netip.AddrPortFrom(w.Dst, w.Dport)
	}
	a := e.Dst.Addr()
	if !a.IsValid() {
		a = e.Src.Addr()
	}
	if a.Is4() {
		e.Family = 4
	} else if a.Is6() {
		e.Family = 6
	}
	e.TCPFlags = d.parseTCPFlags(w.TCPFlags)
	switch e.Type {
	case tracer.Drop:
		e.Reason, e.ReasonCode, e.Location = w.Reason, w.ReasonCode, w.Location
		if w.Rule != nil {
			e.Rule = w.Rule.rule()
		}
		if w.Route != nil {
			e.Route = &route.Route{Type: w.Route.Type, Dst: w.Route.Dst, Table: w.Route.Table}
		}
		if isICMP(e.Proto) {
			e.ICMPType, e.ICMPCode = w.ICMPType, w.ICMPCode
			e.ICMPInfo = tracer.ICMPInfoOf(e.Proto == protoICMPv6, e.ICMPType, e.ICMPCode, w.ICMPMTU, w.ICMPPointer, w.ICMPGateway)
		}
		if c := w.Conntrack; c != nil {
			e.Conntrack = &conntrack.Drop{Cause: c.Cause, Count: c.Count, Max: c.Max}
		}
	case tracer.Unreachable:
		e.ICMPType, e.ICMPCode = w.ICMPType, w.ICMPCode
		e.ICMPInfo = tracer.ICMPInfoOf(e.Family == 6, e.ICMPType, e.ICMPCode, w.ICMPMTU, w.ICMPPointer, w.ICMPGateway)
	case tracer.ListenOverflow:
		e.Queue = tracer.ParseQueue(w.Queue)
		e.QueueLen, e.QueueMax, e.SynQueueLen = w.QueueLen, w.QueueMax, w.SynQueueLen
		e.Syncookie, e.Somaxconn = w.Syncookie, w.Somaxconn
	}
	if w.Probe != nil {
		e.Probe = w.Probe.probe()
	}
	for _, x := range []struct {
		field string
		raw   json.RawMessage
		to    **k8s.Endpoint
	}{{"src_k8s", w.SrcK8s, &e.SrcK8s}, {"dst_k8s", w.DstK8s, &e.DstK8s}, {"where_k8s", w.WhereK8s, &e.WhereK8s}} {
		if *x.to, err = d.endpoint(x.raw); err != nil {
			return fmt.Errorf("%s: %v", x.field, err)
		}
	}
	return nil
}

func (d *Decoder) endpoint(raw json.RawMessage) (*k8s.Endpoint, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if e, ok := d.endpoints[string(raw)]; ok {
		return e, nil
	}
	var w wireEndpoint
	if err := json.Unmarshal(raw, &w); err != nil {
		return nil, errors.New(jsonError(err))
	}
	e := w.endpoint()
	if d.endpoints == nil {
		d.endpoints = map[string]*k8s.Endpoint{}
	}
	if len(raw) <= maxEndpointLen && d.kept+len(raw) <= maxEndpointBytes {
		d.endpoints[string(raw)] = &e
		d.kept += len(raw)
	}
	return &e, nil
}

// parseProto reads ProtoName's names and numbers; a name this kdrop does
// not know (a newer one's) reads as 0, unknown, rather than failing the line.
func (d *Decoder) parseProto(s string) uint8 {
	return remember(&d.protos, s, func(s string) uint8 {
		p, _ := tracer.ParseProto(s) // 0 for "" and unknown names
		return p
	})
}

// parseTCPFlags reads TCPFlagString's SYN|ACK; names it does not know are
// ignored.
func (d *Decoder) parseTCPFlags(s string) uint8 {
	return remember(&d.flags, s, parseTCPFlags)
}

// remember returns fn(s), keeping the answers for the first few distinct
// strings: a recording repeats a handful of protocols and flag sets on
// every line, and parsing them is a loop over every name.
func remember(m *map[string]uint8, s string, fn func(string) uint8) uint8 {
	if v, ok := (*m)[s]; ok {
		return v
	}
	v := fn(s)
	if len(s) <= maxInternedLen && len(*m) < 256 {
		if *m == nil {
			*m = map[string]uint8{}
		}
		(*m)[s] = v
	}
	return v
}

func parseTCPFlags(s string) uint8 {
	var f uint8
	for _, n := range strings.Split(s, "|") {
		for bit := 0; bit < 8; bit++ {
			if n != "" && tracer.TCPFlagString(1<<bit) == n {
				f |= 1 << bit
			}
		}
	}
	return f
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
	s = strings.ReplaceAll(s, "Go struct field wire.", "field ")
	return strings.ReplaceAll(s, "Go struct field wireEndpoint.", "field ")
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
