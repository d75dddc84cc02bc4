package report

import (
	"fmt"
	"strings"
	"time"
)

// view is what both writers show, in words.
type view struct {
	a        *analysis
	tl       *timeline
	Cluster  string
	Window   string // "2026-11-27 11:51:29 – 11:56:29 UTC"
	Duration string
	Version  string
	Facts    []fact
	Banners  []banner
	KPIs     []kpi
	Peak     string
}

type fact struct{ Label, Value string }

type banner struct {
	Class, Head, Text string
}

type kpi struct {
	Label, Value, Note, Class string
}

func newView(rec *Incident) *view {
	a := analyze(rec)
	v := &view{a: a, tl: buildTimeline(rec, a.start, a.end)}
	h := rec.Header
	v.Cluster = h.Cluster
	if v.Cluster == "" {
		v.Cluster = "unnamed cluster"
	}
	v.Window = a.start.UTC().Format("2006-01-02 15:04:05") + " – "
	if a.end.UTC().YearDay() != a.start.UTC().YearDay() {
		v.Window += a.end.UTC().Format("2006-01-02 15:04:05 UTC")
	} else {
		v.Window += a.end.UTC().Format("15:04:05 UTC")
	}
	v.Duration = dur(a.end.Sub(a.start))
	if rec.Truncated() {
		v.Window += " (truncated)"
	}

	nodes := make([]string, 0, len(h.Nodes))
	for _, n := range h.Nodes {
		s := n.Name
		if n.Kernel != "" {
			s += " (kernel " + n.Kernel + ")"
		}
		nodes = append(nodes, s)
	}
	if len(nodes) == 0 {
		nodes = []string{"not recorded"}
	}
	ver := h.Version
	if ver == "" {
		ver = "unknown"
	}
	rate := "none: every event is a line"
	if h.RateLimit > 0 {
		rate = fmt.Sprintf("%d events per second per flow; the rest fold into summary lines", h.RateLimit)
	}
	ended := "not recorded: the recording is truncated"
	if rec.Trailer != nil {
		ended = stamp(rec.Trailer.Ended)
	}
	lostLines, missed := rec.Lost(), rec.Missed()
	lost := "none"
	if lostLines > 0 {
		lost = fmt.Sprintf("%s (lines missing; %s)", plural(lostLines, "event", "events"), lostCounts(missed))
	}
	miss := "none"
	if missed > 0 {
		miss = fmt.Sprintf("%s never counted: counts may be short by up to %s", plural(missed, "occurrence", "occurrences"), num(missed))
	}
	v.Version = ver
	v.Facts = []fact{
		{"Window", v.Window + ", " + v.Duration},
		{"Started", stamp(h.Started)},
		{"Ended", ended},
		{"Cluster", v.Cluster},
		{"Nodes", strings.Join(nodes, ", ")},
		{"kdrop", ver},
		{"Filters", filterWords(h.Filters)},
		{"Rate limit", rate},
		{"Lines", fmt.Sprintf("%s (%s event lines, %s occurrences)", num(rec.Lines), num(rec.EventLines), num(a.total))},
		{"Lost lines", lost},
		{"Missed", miss},
	}

	if rec.Truncated() {
		_, end := rec.Window()
		text := fmt.Sprintf("The file has no end-of-recording line: the recorder was killed or ran out of disk. This report covers up to the last event written, at %s.", stamp(end))
		if rec.cutOff {
			text += " The compressed data is cut off too."
		}
		v.Banners = append(v.Banners, banner{"warn", "Recording truncated.", text})
	}
	if missed > 0 {
		v.Banners = append(v.Banners, banner{"missed", "Counts are short, by up to " + num(missed) + ".",
			fmt.Sprintf("%s never counted: they are in no line and no count below. %s See the findings.",
				capital(plural(missed, "occurrence was", "occurrences were")), missedCauses(rec))})
	}
	if lostLines > 0 {
		text := "The kernel's ring buffer had no room for their lines. Their occurrences still arrived in later summary lines: every count below is exact, only some individual lines are missing."
		if missed > 0 {
			text = "The kernel's ring buffer had no room for their lines. Their occurrences still arrived in later summary lines and are in the counts below; only some individual lines are missing."
		}
		v.Banners = append(v.Banners, banner{"lost", plural(lostLines, "event line", "event lines") + " lost.", text})
	}
	if len(rec.Gaps) > 0 {
		v.Banners = append(v.Banners, banner{"warn", plural(uint64(len(rec.Gaps)), "gap", "gaps") + " in the recording.",
			"For some windows a node's agent was not streaming (restarted or gone): nothing from that node in those windows is counted. See the findings."})
	}
	for _, n := range rec.Notes {
		v.Banners = append(v.Banners, banner{"note", "Note:", n})
	}

	v.KPIs = []kpi{
		{"Occurrences", num(a.total), fmt.Sprintf("in %s", dur(a.end.Sub(a.start))), ""},
		{"Drops", num(a.byType["drop"]), "packets freed with a reason", ""},
		{"Queue overflows", num(a.byType["overflow"]), "connections refused by a full queue", ""},
		{"ICMP errors sent", num(a.byType["unreach"]), "unreachable and the like", ""},
		{"Lost lines", num(lostLines), "lines only; " + lostCounts(missed), map[bool]string{true: "bad", false: ""}[lostLines > 0]},
		{"Missed", num(missed), "never counted: counts short", map[bool]string{true: "bad", false: ""}[missed > 0]},
	}

	if i, c := v.tl.peak(); c > 0 {
		from := v.tl.start.Add(time.Duration(i) * v.tl.step)
		var top []string
		for _, s := range v.tl.series {
			if s.counts[i] > 0 {
				top = append(top, fmt.Sprintf("%s %s", s.Name, num(s.counts[i])))
			}
			if len(top) == 3 {
				break
			}
		}
		v.Peak = fmt.Sprintf("%s–%s UTC: %s (%s)", clock(from), clock(from.Add(v.tl.step)), plural(c, "occurrence", "occurrences"), strings.Join(top, ", "))
	}
	return v
}

// lostCounts says what lost lines mean for the counts: exact, unless
// something was missed too (then they are short, for that other reason).
func lostCounts(missed uint64) string {
	if missed > 0 {
		return "still counted"
	}
	return "counts exact"
}

func filterWords(f Filters) string {
	var parts []string
	add := func(name string, vals ...string) {
		if len(vals) > 0 && !(len(vals) == 1 && vals[0] == "") {
			parts = append(parts, name+" "+strings.Join(vals, ", "))
		}
	}
	add("types", f.Types...)
	add("reasons", f.Reasons...)
	add("CIDRs", f.CIDRs...)
	if f.Port != 0 {
		add("port", fmt.Sprint(f.Port))
	}
	if f.Netns != 0 {
		add("netns", fmt.Sprint(f.Netns))
	}
	add("namespace", f.Namespace)
	add("pod", f.Pod)
	add("selector", f.Selector)
	if len(parts) == 0 {
		return "none (everything)"
	}
	return strings.Join(parts, "; ")
}

func (v *view) chartTitle() string {
	return fmt.Sprintf("Occurrences per %s by kind, %s", v.tl.stepWord(), v.Window)
}
