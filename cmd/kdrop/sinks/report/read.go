// Package report reads a recording made by `kdrop record` and turns it into
// an incident report: a timeline, the listeners, destinations and drop
// reasons involved, and findings that say in plain words what went wrong
// and how to fix it. It writes the report as one self-contained HTML page
// or as Markdown for an incident ticket.
package report

import (
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/recording"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// FormatVersion is the recording format this package reads.
const FormatVersion = line.FormatVersion

// Incident is a recording, read and folded: events with the same identity
// add up into one Flow, so a long storm costs memory per flow, not per line.
type Incident struct {
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
	unslotted             uint64             // occurrences past maxSlots, in no timeline slot
	droppedIDs            int                // identities past maxIdentities, left out
	droppedRules          int                // rules past maxRules, left out
	// Folded counts the event lines whose flow came past MaxFlows and was
	// kept by kind only (type, node, reason or ICMP error or queue).
	Folded int
	cutOff bool // the gzip stream ended mid-way
	// Notices past maxNotices (loss, missed) and gaps past maxGaps are
	// kept as sums: exact in totals, in no timeline slot and by no node.
	foldedNotices        int
	foldedGaps           int
	foldedGapTime        time.Duration
	foldedFrom, foldedTo time.Time // of the folded gaps
}

// Bounds on what a report keeps of notices and the header, in detail.
const (
	maxNotices     = 10000 // loss and missed notices each
	maxGaps        = 1000
	maxHeaderNodes = 500
)

// Header, Node, Filters and Trailer are a recording's first and last
// lines (package line has the schema).
type (
	Header  = line.Header
	Node    = line.Node
	Filters = line.Filters
	Trailer = line.Trailer
)

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
	MissedByKernel = line.MissedByKernel
	MissedByStream = line.MissedByStream
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
// the network namespace where the kernel acted. Equal identities share one
// value (line.Decoder), so FlowID compares them by pointer.
type K8s = k8s.Endpoint

// FlowID is what makes events the same flow: everything but the time, the
// count, the source port and the queue lengths.
type FlowID struct {
	Type       string // drop, overflow or unreach
	Node       string
	Netns      uint64
	Ifindex    uint32
	Proto      string
	Src, Dst   netip.Addr
	Dport      uint16
	TCPFlags   string
	Reason     string
	ReasonCode uint32
	Location   string
	// ICMP is the error an unreach event sent (with its MTU: "frag-needed
	// mtu 1280"), or the ICMP error a drop threw away (its name only; ""
	// for other ICMP and in summaries, which do not say).
	ICMP               string
	ICMPType, ICMPCode uint8
	ICMPMTU            uint32 // the MTU the error told the sender (unreach), or carried (a drop)
	// Rule names the netfilter rule of a NETFILTER_DROP ("filter/INPUT#3
	// DROP"), Route the route of a route drop ("blackhole 10.0.0.0/24"),
	// each checked; "" when none is named.
	Rule, Route    string
	Queue          string
	QueueMax       uint32
	Somaxconn      uint32
	SrcK8s, DstK8s *K8s
	WhereK8s       *K8s
	// Meaning is the Kubernetes meaning of the netfilter rule that
	// dropped it (the line's rule.k8s), checked; zero when none.
	Meaning Meaning
	// Conntrack is conntrack's cause of a NETFILTER_DROP (the line's
	// conntrack.cause: insert-failed, table-full, drop, invalid; "" when
	// none or not one of those) and CtMax its table limit.
	Conntrack string
	CtMax     uint32
	// Probe is the kubelet probe the flow is a connection of (the line's
	// probe), checked; zero when none.
	Probe Probe
	// NamedRule is the netfilter rule that dropped it (the line's rule),
	// checked; nil when none. Equal rules share one value (parser.rule),
	// so FlowID compares them by pointer.
	NamedRule *RuleRef
}

// Meaning is a drop rule's Kubernetes meaning as a report keeps it (see
// netfilter.Meaning): every field checked, comparable.
type Meaning struct {
	Kind string // netfilter.Meaning* ("no-endpoints", …)
	// Service is "namespace/name" and Port the Service port's name or
	// number ("" when kube-proxy's comment named none).
	Service, Port string
	// Internal: no local endpoints under internalTrafficPolicy: Local
	// (else externalTrafficPolicy: Local).
	Internal bool
	// Policies are the NetworkPolicies, "ns/name, ns/name" (at most
	// maxPolicies), and Direction "ingress" or "egress".
	Policies, Direction string
	// Engine is who wrote the rule when known to the report: "kube-proxy"
	// (the default of kube-proxy's meanings) or "kube-router".
	Engine string
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
func (rec *Incident) Window() (start, end time.Time) {
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
func (rec *Incident) Truncated() bool { return rec.Trailer == nil }

// Lost is how many events lost their lines (counts still exact): the
// trailer's total, or the sum of the "lost" notices without a trailer.
func (rec *Incident) Lost() uint64 {
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
func (rec *Incident) Missed() uint64 {
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
func (rec *Incident) Total() uint64 {
	var n uint64
	for _, f := range rec.Flows {
		n = addCount(n, f.Count)
	}
	return n
}

// Read reads a recording: the gzip-compressed JSON lines `kdrop record`
// writes (recording.Scan). Errors name the line and what is wrong with it.
// A file cut off mid-way (the recorder was killed) is read up to its last
// whole line.
func Read(r io.Reader) (*Incident, error) {
	p := parser{rec: &Incident{perSecond: map[slotKey]uint64{}}, flow: map[FlowID]*Flow{}, clean: map[*K8s]*K8s{}, series: map[string]struct{}{}, checks: map[checkKey]string{}, rules: map[RuleRef]*RuleRef{}}
	sc, err := recording.Scan(r, p.line)
	if err != nil {
		return nil, err
	}
	p.rec.Lines, p.rec.cutOff = sc.Lines, sc.CutOff
	for _, n := range sc.Notes {
		p.rec.Notes = append(p.rec.Notes, sentence(n))
	}
	p.finish()
	return p.rec, nil
}

type parser struct {
	rec *Incident
	// sums of the notices past maxNotices: lost lines, missed by cause
	lostFold   uint64
	missedFold map[string]uint64
	flow       map[FlowID]*Flow
	clean      map[*K8s]*K8s // decoded identity → checked one (untrusted.go)
	series     map[string]struct{}
	checks     map[checkKey]string // check's answers
	rules      map[RuleRef]*RuleRef
}

// What an event line's strings are checked as.
const (
	asNode = iota
	asReason
	asLocation
	asSource
	asWord // as a source: wordRE
	asBackend
	asFamily
	asRuleName
	asComment
	asVerdict
	asText
)

type checkKey struct {
	as int
	s  string
}

// check is checked(s, ...) for an event's node, reason, location or
// source, remembered for the first few thousand distinct strings: a
// recording repeats a handful of them on millions of lines, and the checks
// are regular expressions.
func (p *parser) check(as int, s string) string {
	k := checkKey{as, s}
	if c, ok := p.checks[k]; ok {
		return c
	}
	var c string
	switch as {
	case asNode:
		c = checked(s, isObjectName)
	case asReason:
		c = checked(s, reasonRE.MatchString)
	case asLocation:
		c = checked(s, symbolRE.MatchString)
	case asBackend:
		c = checked(s, func(s string) bool {
			return s == netfilter.BackendNftables || s == netfilter.BackendLegacy || s == netfilter.BackendNftables+","+netfilter.BackendLegacy
		})
	case asFamily:
		c = checked(s, func(s string) bool { return familyOK[s] })
	case asRuleName:
		c = checked(s, ruleNameRE.MatchString)
	case asComment:
		c = checked(s, isComment)
	case asVerdict:
		c = checked(s, verdictRE.MatchString)
	case asText:
		c = text(s)
	default:
		c = checked(s, wordRE.MatchString)
	}
	if len(p.checks) < maxChecks {
		p.checks[k] = c
	}
	return c
}

// Bounds on what a report keeps of a recording, so that any file reads in
// bounded memory: a recording is untrusted, and a port scan is millions of
// distinct flows.
const (
	// MaxFlows is how many distinct flows are kept in detail; further
	// flows are folded by kind (Incident.Folded).
	MaxFlows = 20_000
	// maxIdentities bounds the distinct identities kept; further ones are
	// left out of the flows they come with.
	maxIdentities = 20_000
	// maxRules bounds the distinct netfilter rules (with their
	// candidates) kept; further ones are left out of their flows.
	maxRules = 20_000
	// maxKeptSeries bounds the timeline's series (drop reasons, queues, ICMP
	// errors); the rest are one "other" series.
	maxKeptSeries = 200
	// maxSlots bounds the timeline's (series, second) counts.
	maxSlots = 1_000_000
	// maxChecks bounds the strings whose check is remembered.
	maxChecks = 4096
)

// k8s is the checked copy of a decoded identity, one per distinct identity.
func (p *parser) k8s(k *K8s) *K8s {
	if k == nil {
		return nil
	}
	c, ok := p.clean[k]
	if !ok {
		if len(p.clean) >= maxIdentities {
			p.rec.droppedIDs++
			return nil
		}
		c = cleanK8s(k)
		p.clean[k] = c
	}
	return c
}

func (p *parser) line(n int, l *line.Line) error {
	switch l.Kind {
	case line.KindHeader:
		if n := len(l.Header.Nodes); n > maxHeaderNodes {
			l.Header.Nodes = l.Header.Nodes[:maxHeaderNodes]
			p.rec.Notes = append(p.rec.Notes, fmt.Sprintf("the header names %d nodes: the first %d are listed", n, maxHeaderNodes))
		}
		p.rec.Header = cleanHeader(l.Header)
	case line.KindTrailer:
		t := l.Trailer
		p.rec.Trailer = &t
	case line.KindEvent:
		p.event(&l.Event)
	case line.KindNotice:
		nt := &l.Notice
		switch nt.Type {
		case line.NoticeLost:
			if len(p.rec.Losses) < maxNotices {
				p.rec.Losses = append(p.rec.Losses, Loss{Time: nt.Time, Node: checked(nt.Node, isObjectName), Lost: nt.Lost})
			} else {
				p.rec.foldedNotices++
				p.lostFold += nt.Lost
			}
			p.seen(nt.Time)
		case line.NoticeMissed:
			cause := checked(nt.Cause, wordRE.MatchString)
			if len(p.rec.Misses) < maxNotices {
				p.rec.Misses = append(p.rec.Misses, Miss{Time: nt.Time, Node: checked(nt.Node, isObjectName), Missed: nt.Missed, Cause: cause})
			} else {
				p.rec.foldedNotices++
				if p.missedFold == nil {
					p.missedFold = map[string]uint64{}
				}
				if _, known := p.missedFold[cause]; known || len(p.missedFold) < 8 {
					p.missedFold[cause] += nt.Missed
				} else {
					p.missedFold[""] += nt.Missed
				}
			}
			p.seen(nt.Time)
		case line.NoticeMessage: // from kdrop tail; only gaps matter to a report
			if nt.GapFrom.IsZero() {
				break
			}
			if len(p.rec.Gaps) < maxGaps {
				p.rec.Gaps = append(p.rec.Gaps, Gap{Node: checked(nt.Node, isObjectName), From: nt.GapFrom, To: nt.GapTo, Message: text(nt.Message)})
				break
			}
			r := p.rec
			r.foldedGaps++
			r.foldedGapTime += nt.GapTo.Sub(nt.GapFrom)
			if r.foldedFrom.IsZero() || nt.GapFrom.Before(r.foldedFrom) {
				r.foldedFrom = nt.GapFrom
			}
			if nt.GapTo.After(r.foldedTo) {
				r.foldedTo = nt.GapTo
			}
		}
	}
	return nil
}

func (p *parser) seen(t time.Time) {
	if p.rec.firstEvent.IsZero() || t.Before(p.rec.firstEvent) {
		p.rec.firstEvent = t
	}
	if t.After(p.rec.lastEvent) {
		p.rec.lastEvent = t
	}
}

func (p *parser) event(e *line.Event) {
	t := e.Time
	id := FlowID{
		Type: e.Type.String(), Node: p.check(asNode, e.Node), Netns: uint64(e.Netns), Ifindex: e.Ifindex, Proto: tracer.ProtoName(e.Proto),
		Src: e.Src.Addr(), Dst: e.Dst.Addr(), Dport: e.Dst.Port(), TCPFlags: tracer.TCPFlagString(e.TCPFlags),
		SrcK8s: p.k8s(e.SrcK8s), DstK8s: p.k8s(e.DstK8s), WhereK8s: p.k8s(e.WhereK8s), Probe: cleanProbe(e.Probe),
	}
	switch e.Type {
	case tracer.Drop:
		id.Reason, id.ReasonCode, id.Location = p.check(asReason, e.Reason), e.ReasonCode, p.check(asLocation, e.Location)
		if id.Reason == "" {
			id.Reason = "unknown"
		}
		if e.Rule != nil {
			id.Meaning = cleanMeaning(e.Rule.K8s)
			id.NamedRule = p.rule(e.Rule)
			id.Rule = ruleLabel(e.Rule)
		}
		id.Route = routeLabel(e.Route)
		if id.Proto == "icmp" || id.Proto == "icmpv6" {
			id.ICMP = tracer.ICMPKnownName(id.Proto == "icmpv6", e.ICMPType, e.ICMPCode)
			id.ICMPMTU = e.ICMPMTU()
		}
		if c := e.Conntrack; c != nil {
			switch c.Cause {
			case conntrack.CauseInsertFailed, conntrack.CauseTableFull, conntrack.CauseDrop, conntrack.CauseInvalid:
				id.Conntrack, id.CtMax = c.Cause, c.Max
			}
		}
	case tracer.Unreachable:
		id.ICMP, id.ICMPType, id.ICMPCode, id.ICMPMTU = e.What(), e.ICMPType, e.ICMPCode, e.ICMPMTU()
	case tracer.ListenOverflow:
		id.Queue, id.QueueMax, id.Somaxconn = e.Queue.String(), e.QueueMax, e.Somaxconn
		if id.Queue == "" {
			id.Queue = "accept"
		}
	}
	f := p.flow[id]
	if f == nil && len(p.flow) >= MaxFlows {
		// Past the bound, a new flow is kept by kind only: no addresses,
		// ports, namespaces or pods (see Folded).
		id = FlowID{Type: id.Type, Node: id.Node, Proto: id.Proto, Reason: id.Reason, ICMP: id.ICMP, ICMPType: id.ICMPType, ICMPCode: id.ICMPCode, Queue: id.Queue}
		p.rec.Folded++
		f = p.flow[id]
	}
	if f == nil {
		series := seriesOf(&id)
		if _, known := p.series[series]; !known {
			if len(p.series) >= maxKeptSeries {
				series = "other"
			}
			p.series[series] = struct{}{}
		}
		f = &Flow{FlowID: id, First: t, Last: t, series: series}
		p.flow[id] = f
		p.rec.Flows = append(p.rec.Flows, f)
	}
	c := e.Count
	f.Count = addCount(f.Count, c)
	f.Lines++
	if t.Before(f.First) {
		f.First = t
	}
	if t.After(f.Last) {
		f.Last = t
	}
	f.MaxQueueLen = max(f.MaxQueueLen, e.QueueLen)
	f.MaxSynQueueLen = max(f.MaxSynQueueLen, e.SynQueueLen)
	if e.Syncookie {
		f.Syncookies += c
	}
	if e.Source != "" {
		if f.Sources == nil {
			f.Sources = map[string]uint64{}
		}
		f.Sources[p.check(asSource, e.Source)] += c
	}
	p.rec.EventLines++
	k := slotKey{f.series, t.Unix()}
	if _, ok := p.rec.perSecond[k]; ok || len(p.rec.perSecond) < maxSlots {
		p.rec.perSecond[k] = addCount(p.rec.perSecond[k], c)
	} else {
		p.rec.unslotted = addCount(p.rec.unslotted, c)
	}
	p.seen(t)
}

func (p *parser) finish() {
	if rec := p.rec; rec.foldedNotices > 0 {
		// Kept as one sum each, so totals stay exact.
		if p.lostFold > 0 {
			rec.Losses = append(rec.Losses, Loss{Time: rec.lastEvent, Lost: p.lostFold})
		}
		for _, cause := range slices.Sorted(maps.Keys(p.missedFold)) {
			rec.Misses = append(rec.Misses, Miss{Time: rec.lastEvent, Missed: p.missedFold[cause], Cause: cause})
		}
		rec.Notes = append(rec.Notes, fmt.Sprintf("the recording holds more than %d loss or missed notices of a kind: %d past that are in the totals, not by node or second", maxNotices, rec.foldedNotices))
	}
	if rec := p.rec; rec.foldedGaps > 0 {
		rec.Notes = append(rec.Notes, fmt.Sprintf("the recording holds more than %d gaps: %d more (%s in all) are counted, not listed", maxGaps, rec.foldedGaps, dur(rec.foldedGapTime)))
	}
	rec := p.rec
	if rec.Folded > 0 {
		rec.Notes = append(rec.Notes, fmt.Sprintf("the recording holds more than %d distinct flows: %d event lines past that were counted by kind only, without addresses, ports or pods", MaxFlows, rec.Folded))
	}
	if rec.droppedRules > 0 {
		rec.Notes = append(rec.Notes, fmt.Sprintf("the recording names more than %d distinct netfilter rules: %d events past that are shown without their rule", maxRules, rec.droppedRules))
	}
	if rec.droppedIDs > 0 {
		rec.Notes = append(rec.Notes, fmt.Sprintf("the recording names more than %d distinct pods, Services or nodes: %d events past that are shown without their names", maxIdentities, rec.droppedIDs))
	}
	if rec.unslotted > 0 {
		rec.Notes = append(rec.Notes, fmt.Sprintf("%d occurrences are in the counts but not in the timeline (it keeps at most %d series-seconds)", rec.unslotted, maxSlots))
	}
	if t := rec.Trailer; t != nil && t.Error != "" {
		rec.Notes = append(rec.Notes, "the recording ended early: "+text(t.Error))
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

// addCount adds occurrences, stopping at the largest count rather than
// wrapping: a file's counts are not to be trusted to fit.
func addCount(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}
