package line

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// Table headers: TableHeader over Event.TableRow (`kdrop watch`), and
// ClusterTableHeader over Event.ClusterRow and Notice.ClusterRow (`kdrop
// tail`, one node column instead of the queue, netns and kernel location).
const (
	TableHeader        = "TIME          EVENT     COUNT  WHAT                    PROTO  SOURCE                   DESTINATION              QUEUE      NETNS       WHERE                    RULE"
	ClusterTableHeader = "NODE        TIME          EVENT     COUNT  WHAT                    PROTO  SOURCE                   DESTINATION"
)

// TableRow renders e under TableHeader, then the identity of each end and
// of the pod where the kernel acted (src=, dst=, at=).
func (e *Event) TableRow() string {
	count := countString(e)
	queue := ""
	if e.Type == tracer.ListenOverflow && e.QueueMax != 0 {
		queue = fmt.Sprintf("%d/%d", e.QueueLen, e.QueueMax)
	}
	dst := addrString(e.Dst)
	if e.Coarse != "" && e.Summary {
		dst = "* (table full)" // the summary spans destinations
	}
	where := e.Location
	if e.Type != tracer.Drop || where == "" {
		where = e.Source
	}
	row := fmt.Sprintf("%-13s %-9s %5s  %-23s %-6s %-24s %-24s %-10s %-11d %-24s %s",
		e.Time.Local().Format("15:04:05.000"), e.Type, count, e.What(), tracer.ProtoName(e.Proto),
		addrString(e.Src), dst, queue, e.Netns, where, e.ruleColumn())
	return strings.TrimRight(row, " ") + e.identities()
}

// ruleColumn is the RULE column: the netfilter rule, or the route that
// dropped the packet ("route: blackhole 198.19.131.0/24").
func (e *Event) ruleColumn() string {
	if e.Route != nil {
		return "route: " + e.Route.String()
	}
	if e.Conntrack != nil {
		// conntrack's cause first; a rule named too (an INVALID packet's
		// rule, or one whose counter moved as well) follows
		if e.Rule.Known() {
			return e.Conntrack.String() + "; " + e.Rule.Short()
		}
		return e.Conntrack.String()
	}
	return e.Rule.Short()
}

// ClusterRow renders e under ClusterTableHeader, then the rule or route
// that dropped it (rule=, TableRow's RULE column) and the identities.
func (e *Event) ClusterRow() string {
	what := e.Reason
	switch e.Type {
	case tracer.Unreachable:
		what = e.What()
	case tracer.ListenOverflow:
		what = e.Queue.String() + "-queue"
		if e.QueueMax > 0 {
			what += fmt.Sprintf(" %d/%d", e.QueueLen, e.QueueMax)
		}
	}
	row := fmt.Sprintf("%-11s %-13s %-9s %5s  %-23s %-6s %-24s %-24s", e.Node, e.Time.Local().Format("15:04:05.000"),
		e.Type, countString(e), what, tracer.ProtoName(e.Proto), addrString(e.Src), addrString(e.Dst))
	if r := e.ruleColumn(); r != "" { // the RULE column of TableRow, as rule=
		row = strings.TrimRight(row, " ") + "  rule=" + r
	}
	return row + e.identities()
}

// ClusterRow renders a notice under ClusterTableHeader, marked "**".
func (n *Notice) ClusterRow() string {
	at := n.Time.Local().Format("15:04:05.000")
	switch n.Type {
	case NoticeLost:
		return fmt.Sprintf("%-11s %-13s ** %d event lines lost on this node: the ring buffer was full (their counts arrive in later summary lines)", n.Node, at, n.Lost)
	case NoticeMissed:
		// the kernel counts misses before kdrop's filters: "up to"
		short, why := fmt.Sprintf("counts may be short by up to %d", n.Missed), "cause not given"
		switch n.Cause {
		case MissedByKernel:
			why = "the kernel skipped kdrop's program, already running on that CPU, e.g. a drop nested in softirq"
		case MissedByStream:
			short = fmt.Sprintf("counts are short by %d", n.Missed)
			why = "this stream fell behind and the agent dropped lines for it; narrow the filters (--type, --reason, --namespace, --pod)"
		}
		return fmt.Sprintf("%-11s %-13s ** %d occurrences missed on this node: %s (%s)", n.Node, at, n.Missed, short, why)
	}
	return fmt.Sprintf("%-11s %-13s ** %s", n.Node, at, n.Message)
}

func countString(e *Event) string {
	count := strconv.FormatUint(e.Count, 10)
	if e.Summary {
		count = "+" + count
	}
	return count
}

// identities is "  src=... dst=... at=..." for the ends with a name, then
// "  probe: ..." (ProbeText) on a probe connection.
func (e *Event) identities() string {
	if e.Probe != nil {
		return e.names() + "  probe: " + e.ProbeText()
	}
	return e.names()
}

func (e *Event) names() string {
	var extra []string
	for _, x := range []struct {
		label string
		e     *k8s.Endpoint
	}{{"src", e.SrcK8s}, {"dst", e.DstK8s}, {"at", e.WhereK8s}} {
		if x.e == nil {
			continue
		}
		if d := Describe(x.e); d != "" {
			extra = append(extra, x.label+"="+d)
		}
	}
	if len(extra) == 0 {
		return ""
	}
	return "  " + strings.Join(extra, " ")
}

func addrString(a netip.AddrPort) string {
	if !a.Addr().IsValid() {
		return "-"
	}
	if a.Port() == 0 {
		return a.Addr().String()
	}
	return a.String()
}

// Describe is the table's short name for an endpoint: ns/pod, svc ns/name,
// node n1, deleted ns/pod 1.2s ago; "?" marks what is unresolved.
func Describe(e *k8s.Endpoint) string {
	var s string
	switch e.Kind {
	case k8s.KindPod:
		s = e.Namespace + "/" + e.Name
		if e.DeletedAgo > 0 {
			s = fmt.Sprintf("deleted %s %s ago", s, roundAgo(e.DeletedAgo))
		}
	case k8s.KindService:
		s = "svc " + e.Namespace + "/" + e.Name
		if e.ReadyEndpoints == 0 { // < 0: unknown
			s += " (no ready endpoints)"
		}
	case k8s.KindNode:
		s = "node " + e.Name
	}
	if len(e.Previous) > 0 {
		p := e.Previous[0]
		s += fmt.Sprintf(", was %s/%s until %s ago", p.Namespace, p.Name, roundAgo(p.DeletedAgo))
	}
	if e.Unresolved {
		if s == "" {
			s = "?"
		} else {
			s += "?"
		}
	}
	return s
}

func roundAgo(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
