// Package line owns kdrop's output format: the JSON lines that `kdrop
// watch -o json`, the agent (stdout and /events), `kdrop tail` and `kdrop
// record` write, and that `kdrop report` reads. It has the one encoder
// (Append*, no allocation per event) and the one decoder (Decoder) of every
// kind of line, and the table rendering of events and notices.
//
// The schema is written down for users in schema.json (JSON Schema); the
// golden files in testdata pin the bytes. Units: times are RFC 3339 UTC with
// nanoseconds, durations are named *_ms (milliseconds), queue lengths are
// connections, netns is a network namespace inode number.
//
// Kinds of line:
//
//	event    {"time":T,"type":"drop"|"overflow"|"unreach","count":N,...}
//	notice   {"time":T,"type":"hello"|"heartbeat"|"notice"|"lost"|"missed","node":N,...}
//	header   {"kdrop_record":1,"started":T,...}        first line of a recording
//	trailer  {"kdrop_record_end":1,"ended":T,...}      last line of a recording
//
// Format 1 is every format kdrop has written so far; a reader of format 1
// reads every file kdrop ever recorded.
package line

import (
	"strconv"
	"strings"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/route"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// FormatVersion is the recording format (the header's "kdrop_record" and
// the trailer's "kdrop_record_end") this package writes and reads.
const FormatVersion = 1

// Event is one event line: a kernel event (drop, overflow, unreach), the
// node it was seen on and the Kubernetes identity of both ends and of the
// pod where the kernel acted.
type Event struct {
	tracer.Event
	// Node is the node the event was seen on ("" outside a cluster).
	Node string
	// SrcK8s, DstK8s: who owned the source and destination address at the
	// event's time; WhereK8s: whose network namespace the kernel acted in.
	// nil when identity is off or nothing is known.
	SrcK8s, DstK8s, WhereK8s *k8s.Endpoint
	// Rule is the netfilter rule behind a NETFILTER_DROP drop ("rule"):
	// nil for other events, when attribution is off, and in lines written
	// before kdrop named rules.
	Rule *netfilter.Rule
	// Route is the blackhole, unreachable or prohibit route behind a
	// route drop ("route"; package route): nil for other events and when
	// no such route contains the destination.
	Route *route.Route
	// Conntrack is what conntrack had to do with a NETFILTER_DROP drop
	// ("conntrack"; package conntrack): its own drop (an insert failure,
	// a full table) or the INVALID state a rule dropped (then Rule names
	// that rule too). nil when conntrack's statistics did not move for it.
	Conntrack *conntrack.Drop
	// Probe is set when the event's flow is a kubelet probe: from this
	// node (an address of the host's network namespace, or a node IP) to
	// a pod of this node on a port the pod's spec probes ("probe"). nil
	// for other events and in lines written before kdrop told probes
	// apart. Shared with the resolver's index: read it, do not modify it.
	Probe *k8s.Probe
}

// ProbeText says what happened to a probe connection, for a person:
// "liveness probe of shop/api on :8080 got NO_SOCKET" (a drop's reason,
// an ICMP error's name, "accept-queue overflow"); "" when e.Probe is nil.
func (e *Event) ProbeText() string {
	if e.Probe == nil {
		return ""
	}
	got := e.Reason
	switch e.Type {
	case tracer.Unreachable:
		got = e.What()
	case tracer.ListenOverflow:
		got = e.Queue.String() + "-queue overflow"
	}
	// the pod's end: the destination, or the source of an answer
	end, addr := e.DstK8s, e.Dst
	if addr.Port() != e.Probe.Port && e.Src.Port() == e.Probe.Port {
		end, addr = e.SrcK8s, e.Src
	}
	pod := "pod " + addr.Addr().String()
	if end != nil && end.Kind == k8s.KindPod {
		pod = end.Namespace + "/" + end.Name
	}
	kinds := e.Probe.Kinds.Names()
	kind := "probe"
	switch len(kinds) {
	case 0:
	case 1:
		kind = kinds[0] + " probe"
	default:
		kind = strings.Join(kinds[:len(kinds)-1], ", ") + " and " + kinds[len(kinds)-1] + " probes"
	}
	return kind + " of " + pod + " on :" + strconv.Itoa(int(e.Probe.Port)) + " got " + got
}

// Types of notice line.
const (
	// NoticeHello opens an agent's /events stream.
	NoticeHello = "hello"
	// NoticeHeartbeat: an /events stream is alive but quiet (every 15 s).
	NoticeHeartbeat = "heartbeat"
	// NoticeMessage ("notice"): a message from kdrop tail about a stream;
	// with GapFrom/GapTo, a window whose events on Node were not seen.
	NoticeMessage = "notice"
	// NoticeLost: Lost events found the ring buffer full. Their lines are
	// missing, but their occurrences arrive in later summary lines, so
	// counts stay exact.
	NoticeLost = "lost"
	// NoticeMissed: Missed occurrences are in no line at all: counts are
	// short by that much. Cause says why (MissedByKernel, MissedByStream).
	// A type of its own rather than a field of "lost" so that a kdrop from
	// before it reports an unknown type instead of exact counts.
	NoticeMissed = "missed"
)

// Causes of a "missed" notice.
const (
	// MissedByKernel: the kernel skipped kdrop's program because it was
	// already running on that CPU (e.g. a drop nested in softirq). The
	// kernel counts them before kdrop's filters: short by up to Missed.
	MissedByKernel = "kernel"
	// MissedByStream: an /events client (kdrop tail, record --from tail)
	// fell behind, and the agent dropped lines for it.
	MissedByStream = "stream"
)

// Notice is a line about the stream rather than the kernel.
type Notice struct {
	Time    time.Time
	Type    string // NoticeHello, NoticeHeartbeat, NoticeMessage, NoticeLost, NoticeMissed
	Node    string
	Message string    // NoticeMessage
	GapFrom time.Time // NoticeMessage: the window not seen, when there is one
	GapTo   time.Time
	Lost    uint64 // NoticeLost: event lines lost (counts exact)
	Missed  uint64 // NoticeMissed: occurrences in no line (counts short)
	Cause   string // NoticeMissed: MissedByKernel or MissedByStream
}

// Header is the first line of a recording.
type Header struct {
	Format    int       `json:"kdrop_record"` // FormatVersion
	Started   time.Time `json:"started"`
	Version   string    `json:"version"` // kdrop's version
	From      string    `json:"from"`    // "watch" (one machine) or "tail" (the cluster's agents)
	Cluster   string    `json:"cluster,omitempty"`
	Nodes     []Node    `json:"nodes"`
	Filters   Filters   `json:"filters"`
	RateLimit uint32    `json:"rate_limit"` // events per second per flow before folding; 0: none
}

// Node is a node a recording covers.
type Node struct {
	Name   string `json:"name"`
	Kernel string `json:"kernel"` // uname -r
}

// Filters are the filters a recording was made with, as given.
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

// Trailer is the last line of a recording, written when the recorder
// stops cleanly.
type Trailer struct {
	Format int       // FormatVersion ("kdrop_record_end")
	Ended  time.Time // when recording stopped
	Events uint64    // event lines written
	Lost   uint64    // event lines lost (see NoticeLost)
	Missed uint64    // occurrences missed (see NoticeMissed); 0 in files from before kdrop told them apart
	Error  string    // why the recording ended early ("": it did not)
}
