package report

import (
	"fmt"
	"html"
	"math"
	"sort"
	"strings"
	"time"
)

// palette colours the timeline's series, biggest first; muted and told
// apart by people with the common colour-vision deficiencies.
var palette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"}

const (
	otherColor  = "#bab0ac"
	lostColor   = "#b26a00" // lost lines: their counts are in the bars
	missedColor = "#c62828" // missed: not in the bars, counts short
	maxSeries   = 8         // colours; the rest is "other"
	maxBuckets  = 75
)

// bucketSteps are the bucket sizes the timeline may use.
var bucketSteps = []time.Duration{
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

type tlSeries struct {
	Name, Color string
	Total       uint64
	counts      []uint64 // per bucket
}

// timeline is occurrences per time bucket, by series (drop reason, queue
// overflow, ICMP error).
type timeline struct {
	start  time.Time // of the first bucket
	step   time.Duration
	n      int
	series []*tlSeries
	lost   []uint64 // lost lines per bucket ("lost" notices)
	missed []uint64 // missed occurrences per bucket ("missed" notices)
	totals []uint64
}

// pickStep chooses the smallest bucket that fits the window in maxBuckets.
func pickStep(start, end time.Time) (time.Duration, int) {
	for _, s := range bucketSteps {
		n := int(end.Truncate(s).Sub(start.Truncate(s))/s) + 1
		if n <= maxBuckets {
			return s, n
		}
	}
	s := bucketSteps[len(bucketSteps)-1]
	for {
		s *= 2
		if n := int(end.Truncate(s).Sub(start.Truncate(s))/s) + 1; n <= maxBuckets {
			return s, n
		}
	}
}

func buildTimeline(rec *Incident, start, end time.Time) *timeline {
	step, n := pickStep(start, end)
	t := &timeline{start: start.Truncate(step), step: step, n: n, lost: make([]uint64, n), missed: make([]uint64, n), totals: make([]uint64, n)}
	idx := func(tm time.Time) int {
		i := int(tm.Sub(t.start) / step)
		return max(0, min(n-1, i))
	}
	bySeries := map[string]*tlSeries{}
	for k, c := range rec.perSecond {
		s := bySeries[k.series]
		if s == nil {
			s = &tlSeries{Name: k.series, counts: make([]uint64, n)}
			bySeries[k.series] = s
		}
		s.Total += c
		s.counts[idx(time.Unix(k.sec, 0))] += c
	}
	all := make([]*tlSeries, 0, len(bySeries))
	for _, s := range bySeries {
		all = append(all, s)
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].Total != all[j].Total {
			return all[i].Total > all[j].Total
		}
		return all[i].Name < all[j].Name
	})
	if len(all) > maxSeries {
		other := &tlSeries{Name: fmt.Sprintf("other (%d kinds)", len(all)-maxSeries+1), Color: otherColor, counts: make([]uint64, n)}
		for _, s := range all[maxSeries-1:] {
			other.Total += s.Total
			for i, c := range s.counts {
				other.counts[i] += c
			}
		}
		all = append(all[:maxSeries-1], other)
	}
	for i, s := range all {
		if s.Color == "" {
			s.Color = palette[i%len(palette)]
		}
		for b, c := range s.counts {
			t.totals[b] += c
		}
	}
	t.series = all
	for _, l := range rec.Losses {
		t.lost[idx(l.Time)] += l.Lost
	}
	for _, m := range rec.Misses {
		t.missed[idx(m.Time)] += m.Missed
	}
	return t
}

// peak is the bucket with the most occurrences.
func (t *timeline) peak() (int, uint64) {
	best, at := uint64(0), 0
	for i, c := range t.totals {
		if c > best {
			best, at = c, i
		}
	}
	return at, best
}

// stepWord says the bucket size: "5 s", "1 min".
func (t *timeline) stepWord() string {
	switch {
	case t.step < time.Minute:
		return fmt.Sprintf("%d s", int(t.step/time.Second))
	case t.step < time.Hour:
		return fmt.Sprintf("%d min", int(t.step/time.Minute))
	}
	return fmt.Sprintf("%d h", int(t.step/time.Hour))
}

func (t *timeline) label(i int) string {
	at := t.start.Add(time.Duration(i) * t.step).UTC()
	switch {
	case t.step < time.Minute:
		return at.Format("15:04:05")
	case t.step < 24*time.Hour:
		return at.Format("15:04")
	}
	return at.Format("Jan 2")
}

// labelEvery picks the spacing of the time labels: a round duration, a
// multiple of the bucket, that gives at most eight labels.
func (t *timeline) labelEvery() time.Duration {
	span := time.Duration(t.n) * t.step
	for _, s := range bucketSteps {
		if s >= t.step && s%t.step == 0 && span/s <= 8 {
			return s
		}
	}
	s := bucketSteps[len(bucketSteps)-1]
	for span/s > 8 {
		s *= 2
	}
	return s
}

// niceScale picks the top of the y axis and the tick step: round numbers.
func niceScale(maxv uint64) (top, step uint64) {
	if maxv == 0 {
		return 4, 1
	}
	raw := float64(maxv) / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step = 1
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		s := m * mag
		if s >= raw && s == math.Trunc(s) {
			step = uint64(s)
			break
		}
	}
	if step == 0 {
		step = 1
	}
	top = (maxv + step - 1) / step * step
	return top, step
}

// Chart geometry, in SVG user units (the SVG scales to its container).
const (
	chartW  = 1120
	padL    = 64
	padR    = 16
	padT    = 24
	plotH   = 230
	legendY = padT + plotH + 64
	rowH    = 22
)

// svg draws the timeline as stacked bars with axes and a legend. It needs
// no script and no font beyond the page's.
func (t *timeline) svg(title string) string {
	plotW := float64(chartW - padL - padR)
	_, peak := t.peak()
	top, ystep := niceScale(peak)

	// legend layout first: it decides the height
	type item struct {
		x, y  int
		color string
		text  string
		count string
		mark  bool // a marker above the bars, not a series
	}
	var items []item
	x, y := padL, legendY
	addItem := func(color, text string, count uint64, mark bool) {
		c := num(count)
		w := 18 + int(float64(len(text)+len(c)+1)*7.0) + 24
		if x+w > chartW-padR && x > padL {
			x, y = padL, y+rowH
		}
		items = append(items, item{x, y, color, text, c, mark})
		x += w
	}
	for _, s := range t.series {
		addItem(s.Color, s.Name, s.Total, false)
	}
	var lostTotal, missedTotal uint64
	for i := range t.lost {
		lostTotal += t.lost[i]
		missedTotal += t.missed[i]
	}
	if missedTotal > 0 {
		addItem(missedColor, "occurrences missed (not in the bars: counts short)", missedTotal, true)
	}
	if lostTotal > 0 {
		addItem(lostColor, "event lines lost (counted in the bars)", lostTotal, true)
	}
	height := y + rowH
	if len(items) == 0 {
		height = legendY
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="timeline" viewBox="0 0 %d %d" width="100%%" role="img" aria-label="%s" font-size="12">`, chartW, height, html.EscapeString(title))
	fmt.Fprintf(&b, `<title>%s</title>`, html.EscapeString(title))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`, chartW, height)

	yOf := func(v float64) float64 { return padT + plotH - v/float64(top)*plotH }
	// grid and y axis
	for v := uint64(0); v <= top; v += ystep {
		yy := yOf(float64(v))
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="1"/>`, padL, chartW-padR, yy, yy, map[bool]string{true: "#8a8f98", false: "#e3e6ea"}[v == 0])
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555b66">%s</text>`, padL-8, yy+4, num(v))
	}
	fmt.Fprintf(&b, `<text transform="translate(16 %d) rotate(-90)" text-anchor="middle" fill="#555b66">occurrences per %s</text>`, padT+plotH/2, t.stepWord())

	// bars
	bw := plotW / float64(t.n)
	gap := 0.0
	if bw >= 5 {
		gap = math.Max(1, bw*0.18)
	}
	for i := 0; i < t.n; i++ {
		var acc float64
		x0 := float64(padL) + float64(i)*bw + gap/2
		for _, s := range t.series {
			c := s.counts[i]
			if c == 0 {
				continue
			}
			y1, y0 := yOf(acc+float64(c)), yOf(acc)
			h := math.Max(y0-y1, 1)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s UTC: %s %s</title></rect>`,
				x0, y0-h, bw-gap, h, s.Color, t.label(i), html.EscapeString(s.Name), num(c))
			acc += float64(c)
		}
		// markers above the bar: missed on top, as it matters more
		cx := x0 + (bw-gap)/2
		if t.lost[i] > 0 {
			fmt.Fprintf(&b, `<path d="M%.1f %d l-5 -9 h10 z" fill="%s"><title>%s UTC: %s lost (their counts are in the bars)</title></path>`,
				cx, padT-2, lostColor, t.label(i), plural(t.lost[i], "event line", "event lines"))
		}
		if t.missed[i] > 0 {
			fmt.Fprintf(&b, `<path d="M%.1f %d l-5 -9 h10 z" fill="%s"><title>%s UTC: %s missed (not in the bars: counts are short)</title></path>`,
				cx, padT-12, missedColor, t.label(i), plural(t.missed[i], "occurrence", "occurrences"))
		}
	}
	if peak == 0 {
		fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle" fill="#8a8f98" font-size="14">No events in this recording</text>`, float64(padL)+plotW/2, padT+plotH/2)
	}

	// x axis: labels at round times, at most about eight
	base := padT + plotH
	every := t.labelEvery()
	for i := 0; i <= t.n; i++ {
		at := t.start.Add(time.Duration(i) * t.step)
		if at.Truncate(every) != at {
			continue
		}
		xx := float64(padL) + float64(i)*bw
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#8a8f98"/>`, xx, xx, base, base+5)
		anchor := "middle"
		switch {
		case xx-padL < 30:
			anchor = "start"
		case chartW-padR-xx < 30:
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="%s" fill="#555b66">%s</text>`, xx, base+19, anchor, t.label(i))
	}
	axis := "time (UTC), " + t.start.UTC().Format("2006-01-02")
	if end := t.start.Add(time.Duration(t.n) * t.step).UTC(); end.YearDay() != t.start.UTC().YearDay() {
		axis += " to " + end.Format("2006-01-02")
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle" fill="#555b66">%s</text>`, float64(padL)+plotW/2, base+38, axis)

	// legend
	for _, it := range items {
		if it.mark {
			fmt.Fprintf(&b, `<path d="M%d %d l-6 -10 h12 z" fill="%s"/>`, it.x+6, it.y+1, it.color)
		} else {
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" rx="2" fill="%s"/>`, it.x, it.y-10, it.color)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#2b2f36">%s <tspan fill="#6b7280">%s</tspan></text>`, it.x+18, it.y, html.EscapeString(it.text), it.count)
	}
	b.WriteString(`</svg>`)
	return b.String()
}
