package report

import (
	"html/template"
	"io"
	"regexp"
	"strings"
)

// rowLimit bounds the HTML tables; the rest is counted in a last line.
const rowLimit = 40

// WriteHTML writes the report as one self-contained page: inline CSS and
// an inline SVG chart, nothing fetched from anywhere, no script needed.
func WriteHTML(w io.Writer, rec *Incident) error {
	v := newView(rec)
	a := v.a
	d := htmlData{
		view:      v,
		Chart:     template.HTML(v.tl.svg(v.chartTitle())),
		ChartNote: "Occurrences per " + v.tl.stepWord() + ", stacked by drop reason, queue overflow and ICMP error sent; counts include folded summary lines.",
	}
	for i, f := range a.findings {
		fv := findingView{N: i + 1, Finding: f, Sev: f.Severity, Count: num(f.Count), Detail: rich(f.Detail)}
		if !f.First.IsZero() {
			fv.When = span(f.First, f.Last)
		}
		for _, line := range strings.Split(f.Fix, "\n") {
			if line = strings.TrimSpace(line); line != "" {
				fv.Fix = append(fv.Fix, rich(line))
			}
		}
		d.Findings = append(d.Findings, fv)
	}
	d.Listeners, d.ListenersMore = clip(a.listeners)
	d.Unreach, d.UnreachMore = clip(a.unreach)
	d.Reasons, d.ReasonsMore = clip(a.reasons)
	d.Locations, d.LocationsMore = clip(a.locations)
	for _, t := range []struct {
		title, col, port string
		rows             []topRow
	}{
		{"Destinations by workload", "Workload, service or address", "Port", a.dstWork},
		{"Destinations by pod", "Pod or address", "Port", a.dstPods},
		{"Sources", "Workload or address", "", a.sources},
	} {
		rows, more := clip(t.rows)
		d.Tops = append(d.Tops, topTable{t.title, t.col, t.port, rows, more})
	}
	return pageTmpl.Execute(w, d)
}

type htmlData struct {
	*view
	Chart         template.HTML
	ChartNote     string
	Findings      []findingView
	Listeners     []listenerRow
	ListenersMore int
	Unreach       []unreachRow
	UnreachMore   int
	Reasons       []reasonRow
	ReasonsMore   int
	Locations     []locationRow
	LocationsMore int
	Tops          []topTable
}

type findingView struct {
	Finding
	N      int
	Sev    string
	Count  string
	When   string
	Detail template.HTML
	Fix    []template.HTML
}

type topTable struct {
	Title, Col, PortCol string
	Rows                []topRow
	More                int
}

func clip[T any](rows []T) ([]T, int) {
	if len(rows) > rowLimit {
		return rows[:rowLimit], len(rows) - rowLimit
	}
	return rows, 0
}

var codeSpan = regexp.MustCompile("`([^`]+)`")

// rich escapes text and turns `code` spans into <code>.
func rich(s string) template.HTML {
	s = template.HTMLEscapeString(s)
	return template.HTML(codeSpan.ReplaceAllString(s, "<code>$1</code>"))
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"num": func(v any) string { return numAny(v) },
}).Parse(pageHTML))

func numAny(v any) string {
	switch x := v.(type) {
	case uint64:
		return num(x)
	case uint32:
		return num(x)
	case int:
		return num(x)
	}
	return ""
}

const pageHTML = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kdrop report · {{.Cluster}} · {{.Window}}</title>
<style>
:root {
  --ink: #1f2329; --muted: #5f6670; --line: #e3e6ea; --bg: #f6f7f9; --card: #ffffff;
  --crit: #b42318; --crit-bg: #fef3f2; --warn: #a15c07; --warn-bg: #fffaeb; --info: #35598f; --info-bg: #f2f6fc;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", "Liberation Sans", "DejaVu Sans", sans-serif; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", "DejaVu Sans Mono", monospace; font-size: 12.5px; }
code { background: #eef0f3; border-radius: 3px; padding: 0 3px; }
header.top { background: #1f2a37; color: #fff; padding: 20px 0 18px; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 24px; }
header .brand { font-size: 12px; letter-spacing: .08em; text-transform: uppercase; color: #aab4c0; }
header h1 { margin: 4px 0 2px; font-size: 22px; font-weight: 600; }
header .sub { color: #cfd6de; }
main.wrap { padding-top: 18px; padding-bottom: 32px; }
section { margin-top: 22px; }
h2 { font-size: 17px; margin: 0 0 10px; font-weight: 600; }
h2 .n { color: var(--muted); font-weight: 400; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; }
.banner { border-radius: 8px; padding: 10px 14px; margin-bottom: 10px; border: 1px solid; }
.banner.warn { background: var(--warn-bg); border-color: #f5d08a; }
.banner.lost { background: var(--crit-bg); border-color: #f4b5ae; }
.banner.missed { background: var(--crit-bg); border-color: var(--crit); border-width: 2px; }
.banner.note { background: var(--info-bg); border-color: #c9d7ee; }
.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 4px 16px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
.kpis { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; }
.kpi .v { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.kpi .l { font-weight: 600; }
.kpi .s { color: var(--muted); font-size: 12px; }
.kpi.bad { border-color: #f4b5ae; background: var(--crit-bg); }
.kpi.bad .v { color: var(--crit); }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
svg.timeline { display: block; }
.finding { border-left: 4px solid var(--info); margin-bottom: 12px; }
.finding.critical { border-left-color: var(--crit); }
.finding.warning { border-left-color: var(--warn); }
.fhead { display: flex; gap: 10px; align-items: baseline; }
.fhead h3 { margin: 0; font-size: 15px; font-weight: 600; flex: 1; }
.badge { font-size: 11px; font-weight: 700; text-transform: uppercase; letter-spacing: .05em; padding: 2px 7px; border-radius: 10px; white-space: nowrap; }
.badge.critical { color: var(--crit); background: var(--crit-bg); border: 1px solid #f4b5ae; }
.badge.warning { color: var(--warn); background: var(--warn-bg); border: 1px solid #f5d08a; }
.badge.info { color: var(--info); background: var(--info-bg); border: 1px solid #c9d7ee; }
.fcount { color: var(--muted); white-space: nowrap; font-variant-numeric: tabular-nums; }
.finding p { margin: 8px 0; }
.fix { background: #f8f9fb; border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.fix h4 { margin: 0 0 4px; font-size: 13px; }
.fix ul { margin: 0; padding-left: 20px; }
.fix li { margin: 3px 0; }
pre { background: #1f2a37; color: #e6edf3; padding: 10px 12px; border-radius: 6px; overflow-x: auto; margin: 8px 0 2px; }
table { width: 100%; border-collapse: collapse; background: var(--card); }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); vertical-align: baseline; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #fafbfc; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
.tablecard { padding: 0; overflow-x: auto; }
.tablecard h3 { font-size: 14px; margin: 0; padding: 10px 12px 6px; }
.more td { color: var(--muted); font-style: italic; }
.empty { color: var(--muted); }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.stack > * + * { margin-top: 12px; }
footer.wrap { color: var(--muted); font-size: 12px; padding-bottom: 28px; }
@media (max-width: 900px) { .facts { grid-template-columns: max-content 1fr; } .kpis { grid-template-columns: repeat(2, 1fr); } .grid2 { grid-template-columns: 1fr; } }
@media print { body { background: #fff; } header.top { background: #fff; color: #000; border-bottom: 2px solid #000; } header .sub, header .brand { color: #333; } .card, .finding { break-inside: avoid; } }
</style>
</head>
<body>
<header class="top"><div class="wrap">
  <div class="brand">kdrop incident report</div>
  <h1>{{.Cluster}} · {{.Window}}</h1>
  <div class="sub">{{.Duration}} recorded · {{len .Findings}} findings · kdrop {{.Version}}</div>
</div></header>
<main class="wrap">
{{range .Banners}}<div class="banner {{.Class}}"><strong>{{.Head}}</strong> {{.Text}}</div>
{{end}}
<section id="recording" class="card"><dl class="facts">
{{range .Facts}}  <dt>{{.Label}}</dt><dd>{{.Value}}</dd>
{{end}}</dl></section>

<section class="kpis">
{{range .KPIs}}  <div class="card kpi {{.Class}}"><div class="l">{{.Label}}</div><div class="v">{{.Value}}</div><div class="s">{{.Note}}</div></div>
{{end}}</section>

<section id="timeline">
  <h2>Timeline</h2>
  <figure class="card">
    {{.Chart}}
    <figcaption>{{.ChartNote}}{{if .Peak}} Peak {{.Peak}}.{{end}}</figcaption>
  </figure>
</section>

<section id="findings">
  <h2>Findings <span class="n">({{len .Findings}})</span></h2>
{{range .Findings}}  <article class="card finding {{.Sev}}">
    <div class="fhead"><span class="badge {{.Sev}}">{{.Sev}}</span><h3>{{.Title}}</h3><span class="fcount">{{.Count}}×</span></div>
    <p>{{.Detail}}</p>
    {{if .Fix}}<div class="fix"><h4>What to do</h4><ul>{{range .Fix}}<li>{{.}}</li>{{end}}</ul>{{if .Example}}<pre>{{.Example}}</pre>{{end}}</div>{{end}}
  </article>
{{else}}  <div class="card empty">Nothing to report: the recording holds no drops, overflows or ICMP errors.</div>
{{end}}</section>

<section id="overflows">
  <h2>Listen queue overflows</h2>
  <div class="card tablecard">{{if .Listeners}}<table>
    <tr><th>Listener</th><th>Pod</th><th>Workload</th><th>Node</th><th>Queue</th><th class="num">queue_max</th><th class="num">max queue_len</th><th class="num">somaxconn</th><th>Limit set by</th><th class="num">SYN cookies</th><th class="num">Count</th></tr>
{{range .Listeners}}    <tr><td class="mono">{{.Listener}}</td><td>{{.Pod}}</td><td>{{.Workload}}</td><td>{{.Node}}</td><td>{{.Queues}}</td><td class="num">{{num .QueueMax}}</td><td class="num">{{num .MaxLen}}</td><td class="num">{{if .Somaxconn}}{{num .Somaxconn}}{{else}}?{{end}}</td><td>{{.Limit}}</td><td class="num">{{num .Syncookies}}</td><td class="num">{{num .Count}}</td></tr>
{{end}}{{if .ListenersMore}}    <tr class="more"><td colspan="11">{{.ListenersMore}} more listeners not shown</td></tr>{{end}}
  </table>{{else}}<p class="empty" style="padding:10px 12px;margin:0">No listen queue overflowed.</p>{{end}}</div>
</section>

<section id="unreachable">
  <h2>Unreachable: ICMP errors the kernel sent</h2>
  <div class="card tablecard">{{if .Unreach}}<table>
    <tr><th>Destination</th><th>Proto</th><th>ICMP</th><th>Sent by</th><th>The address belonged to</th><th>Deleted before</th><th>From</th><th class="num">Count</th></tr>
{{range .Unreach}}    <tr><td class="mono">{{.Dest}}</td><td>{{.Proto}}</td><td>{{.ICMP}}</td><td>{{.SentBy}}</td><td>{{.Owner}}</td><td>{{if .Deleted}}{{.Deleted}}{{else}}–{{end}}</td><td>{{.Sources}}</td><td class="num">{{num .Count}}</td></tr>
{{end}}{{if .UnreachMore}}    <tr class="more"><td colspan="8">{{.UnreachMore}} more destinations not shown</td></tr>{{end}}
  </table>{{else}}<p class="empty" style="padding:10px 12px;margin:0">The kernel sent no ICMP errors.</p>{{end}}</div>
</section>

<section id="drops">
  <h2>Drops</h2>
  {{if .Reasons}}<div class="stack">
  <div class="card tablecard"><h3>By reason</h3><table>
    <tr><th>Reason</th><th>What it means</th><th>Where in the kernel</th><th class="num">Share</th><th class="num">Count</th></tr>
{{range .Reasons}}    <tr><td class="mono">{{.Reason}}</td><td>{{.Meaning}}</td><td class="mono">{{.Locations}}</td><td class="num">{{.Share}}</td><td class="num">{{num .Count}}</td></tr>
{{end}}{{if .ReasonsMore}}    <tr class="more"><td colspan="5">{{.ReasonsMore}} more reasons not shown</td></tr>{{end}}
  </table></div>
  <div class="card tablecard"><h3>By location</h3><table>
    <tr><th>Kernel function</th><th>Reasons</th><th class="num">Count</th></tr>
{{range .Locations}}    <tr><td class="mono">{{.Location}}</td><td class="mono">{{.Reasons}}</td><td class="num">{{num .Count}}</td></tr>
{{end}}{{if .LocationsMore}}    <tr class="more"><td colspan="3">{{.LocationsMore}} more locations not shown</td></tr>{{end}}
  </table></div>
  </div>{{else}}<div class="card empty">No packet drops recorded.</div>{{end}}
</section>

<section id="top">
  <h2>Who was affected</h2>
  <div class="stack">
{{range .Tops}}  <div class="card tablecard"><h3>{{.Title}}</h3>{{if .Rows}}<table>
    <tr><th>{{.Col}}</th>{{if .PortCol}}<th>{{.PortCol}}</th>{{end}}<th class="num">Pods / addresses</th><th>What</th><th class="num">Count</th></tr>
{{$port := .PortCol}}{{range .Rows}}    <tr><td>{{.Name}}</td>{{if $port}}<td class="mono">{{.Port}}</td>{{end}}<td class="num">{{.Pods}}</td><td>{{.What}}</td><td class="num">{{num .Count}}</td></tr>
{{end}}{{if .More}}    <tr class="more"><td colspan="5">{{.More}} more not shown</td></tr>{{end}}
  </table>{{else}}<p class="empty" style="padding:0 12px 10px;margin:0">None.</p>{{end}}</div>
{{end}}  </div>
</section>

</main>
<footer class="wrap">Generated by kdrop report. Times are UTC. Counts are occurrences: summary lines count every event they fold.</footer>
</body>
</html>
`
