package monitoring

// The alerts and the dashboard against what the agent really exports
// (testdata/agent-series.txt, the series a real Prometheus scraped from a
// real agent in cmd/kdrop TestAgentMonitoring), Prometheus's own PromQL
// parser, and promtool's rule tests.

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/prometheus/prometheus/model/labels"
	"go.yaml.in/yaml/v3"

	"github.com/kdrop/kdrop/tracer"
)

const root = "../../"

func agentSeries(t *testing.T) []Series {
	t.Helper()
	b, err := os.ReadFile(root + SeriesFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSeries(string(b))
	if err != nil || len(s) == 0 {
		t.Fatalf("%s: %v (%d series)", SeriesFile, err, len(s))
	}
	return s
}

// The committed files are what this package writes (make check-monitoring).
func TestFilesUpToDate(t *testing.T) {
	chart, err := os.ReadFile(root + ChartFile)
	if err != nil {
		t.Fatal(err)
	}
	version, err := ChartVersion(chart)
	if err != nil {
		t.Fatal(err)
	}
	files, err := Files(version)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		if got, err := os.ReadFile(root + p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not what deploy/monitoring writes (%v): run make monitoring", p, err)
		}
	}
}

// The dashboard JSON reads back into the SDK's types (with Grafana's panel
// and query plugins registered) and writes out the same.
func TestDashboardRoundTrip(t *testing.T) {
	b, err := os.ReadFile(root + DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	plugins.RegisterDefaultPlugins()
	var d dashboard.Dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if string(out)+"\n" != string(b) {
		t.Errorf("%s does not read back into the SDK's types as it is", DashboardFile)
	}
	if d.Uid == nil || *d.Uid != UID || len(d.Panels) == 0 {
		t.Errorf("dashboard uid %v, %d panels", d.Uid, len(d.Panels))
	}
}

// Every alert says what it is for.
func TestAlertsComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, g := range Groups {
		for _, a := range g.Alerts {
			if seen[a.Name] || !strings.HasPrefix(a.Name, "Kdrop") {
				t.Errorf("alert name %q: duplicate, or not Kdrop…", a.Name)
			}
			seen[a.Name] = true
			if !slices.Contains([]string{"critical", "warning", "info"}, a.Severity) || a.For == "" || len(a.Runbook) < 100 || a.Summary == "" {
				t.Errorf("%s: needs a severity (critical, warning, info), a for:, a summary and a runbook that says what it means and what to do", a.Name)
			}
		}
	}
}

// queries is every PromQL expression shipped: the alerts', and the
// dashboard's as Grafana sends them.
func queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, g := range Groups {
		for _, a := range g.Alerts {
			out["alert "+a.Name] = a.Expr
		}
	}
	d, err := os.ReadFile(root + DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := DashboardQueries(d)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range Rows {
		for _, p := range r.Panels {
			n += len(p.Queries)
		}
	}
	if len(qs) != n {
		t.Errorf("the dashboard JSON has %d queries, Rows %d", len(qs), n)
	}
	for _, q := range qs {
		out["dashboard "+q] = Instant(q, "5m")
	}
	return out
}

// Names kdrop gives overflows and ICMP errors (the reason label of types
// overflow and unreach); drop reasons come from each kernel's BTF.
func knownReasons() []string {
	out := []string{"accept-queue", "syn-queue", "syn-queue+syncookie"}
	for _, v6 := range []bool{false, true} {
		for typ := range 256 {
			for code := range 256 {
				if n := tracer.ICMPKnownName(v6, uint8(typ), uint8(code)); n != "" && !slices.Contains(out, n) {
					out = append(out, n)
				}
			}
		}
	}
	return out
}

// Every query parses with Prometheus's parser and selects only metrics and
// labels the agent exports (with Prometheus's target labels job and
// instance); the reasons it names are ones kdrop gives; what it groups by
// and what the alerts' annotations print are labels it has.
func TestQueriesMatchAgentMetrics(t *testing.T) {
	metrics := map[string]map[string][]string{} // metric → label → values seen
	for _, s := range agentSeries(t) {
		if metrics[s.Name] == nil {
			metrics[s.Name] = map[string][]string{}
		}
		for k, v := range s.Labels {
			metrics[s.Name][k] = append(metrics[s.Name][k], v)
		}
	}
	// up is Prometheus's own series of each target, with its target
	// labels (the alerts on the agent being down read it).
	metrics["up"] = map[string][]string{"job": metrics["kdrop_missed_total"]["job"], "instance": metrics["kdrop_missed_total"]["instance"]}
	reasons := knownReasons()
	for what, q := range queries(t) {
		sels, err := Selectors(q)
		if err != nil {
			t.Errorf("%s does not parse: %v", what, err)
			continue
		}
		have := map[string]bool{}
		for _, s := range sels {
			var lbls map[string][]string
			for _, m := range s.LabelMatchers {
				if m.Name == labels.MetricName {
					lbls = metrics[m.Value]
					if lbls == nil {
						t.Errorf("%s: the agent exports no metric %s", what, m.Value)
					}
				}
			}
			for k := range lbls {
				have[k] = true
			}
			for _, m := range s.LabelMatchers {
				if m.Name == labels.MetricName || lbls == nil {
					continue
				}
				if _, ok := lbls[m.Name]; !ok {
					t.Errorf("%s: %s has no label %s", what, s.Name, m.Name)
				}
				switch {
				case m.Name == "type" && m.Type == labels.MatchEqual && !slices.Contains(lbls["type"], m.Value):
					t.Errorf("%s: type %q is not one the agent exports (%q)", what, m.Value, lbls["type"])
				case m.Name == "reason" && (m.Type == labels.MatchEqual || m.Type == labels.MatchRegexp):
					for _, r := range strings.Split(m.Value, "|") {
						if !slices.Contains(reasons, r) {
							t.Errorf("%s: reason %q is not a name kdrop gives", what, r)
						}
					}
				}
			}
		}
		by, err := Grouping(q)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range by {
			if !have[l] {
				t.Errorf("%s: groups by %s, a label its metrics lack", what, l)
			}
		}
		if name, ok := strings.CutPrefix(what, "alert "); ok {
			out := have
			if by != nil {
				out = map[string]bool{}
				for _, l := range by {
					out[l] = true
				}
			}
			a := alert(t, name)
			for _, m := range regexp.MustCompile(`\$labels\.(\w+)`).FindAllStringSubmatch(a.Summary+a.Runbook, -1) {
				if !out[m[1]] {
					t.Errorf("%s: its annotations print $labels.%s, which its result lacks (has %v)", what, m[1], slices.Sorted(maps.Keys(out)))
				}
			}
		}
	}
}

func alert(t *testing.T, name string) Alert {
	for _, g := range Groups {
		for _, a := range g.Alerts {
			if a.Name == name {
				return a
			}
		}
	}
	t.Fatalf("no alert %s", name)
	return Alert{}
}

// promtool's rule test format.
type promtoolTests struct {
	RuleFiles          []string       `yaml:"rule_files"`
	EvaluationInterval string         `yaml:"evaluation_interval"`
	Tests              []promtoolTest `yaml:"tests"`
}

type promtoolTest struct {
	Name        string        `yaml:"name"`
	Interval    string        `yaml:"interval"`
	InputSeries []inputSeries `yaml:"input_series"`
	AlertTests  []alertTest   `yaml:"alert_rule_test"`
}

type inputSeries struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

type alertTest struct {
	EvalTime  string     `yaml:"eval_time"`
	AlertName string     `yaml:"alertname"`
	ExpAlerts []expAlert `yaml:"exp_alerts"`
}

type expAlert struct {
	Labels      map[string]string `yaml:"exp_labels"`
	Annotations map[string]string `yaml:"exp_annotations"`
}

// Each alert under promtool: fed series of the real scrape (picked by
// their labels; a series the agent does not export fails the test), it
// fires when it should, with its labels and annotations, and stays quiet
// otherwise.
func TestAlertsPromtool(t *testing.T) {
	real := agentSeries(t)
	// series returns the one real series of name whose labels include kv.
	series := func(name string, kv ...string) Series {
		t.Helper()
		for _, s := range real {
			ok := s.Name == name
			for i := 0; ok && i+1 < len(kv); i += 2 {
				ok = s.Labels[kv[i]] == kv[i+1]
			}
			if ok {
				return s
			}
		}
		t.Fatalf("%s has no series %s%v", SeriesFile, name, kv)
		return Series{}
	}
	fires := func(name string, value string, lbls ...string) expAlert {
		a := alert(t, name)
		l := map[string]string{"severity": a.Severity}
		for i := 0; i+1 < len(lbls); i += 2 {
			l[lbls[i]] = lbls[i+1]
		}
		summary := strings.NewReplacer("{{ $value | humanize }}", value,
			"{{ $labels.namespace }}", l["namespace"], "{{ $labels.workload }}", l["workload"],
			"{{ $labels.instance }}", l["instance"], "{{ $labels.hook }}", l["hook"]).Replace(a.Summary)
		return expAlert{Labels: l, Annotations: map[string]string{"summary": summary, "runbook": a.Runbook}}
	}
	overflow := series("kdrop_events_total", "type", "overflow", "reason", "accept-queue")
	unreach := series("kdrop_events_total", "type", "unreach", "reason", "host-unreachable")
	refused := series("kdrop_events_total", "type", "unreach", "reason", "port-unreachable")
	refusedDrop := series("kdrop_events_total", "type", "drop", "reason", "NETFILTER_DROP")
	missed, lost := series("kdrop_missed_total"), series("kdrop_lost_lines_total")
	identity := series("kdrop_identity_healthy")
	writes := series("kdrop_k8s_events_writes_total", "result", "failed")
	unrecorded := series("kdrop_k8s_events_unrecorded_total")
	up := Series{Name: "up", Labels: map[string]string{"job": missed.Labels["job"], "instance": missed.Labels["instance"]}}
	hookOK := series("kdrop_hook_attached", "hook", "kfree_skb")
	// A hook the kernel refused: mode "none", value 0 (the agent's
	// metrics.go; the real scrape has one on hosts that refuse a hook).
	hookRefused := hookOK.With("hook", "icmp6_send", "mode", "none")
	inst := hookOK.Labels["instance"]
	ns, wl := func(s Series) string { return s.Labels["namespace"] }, func(s Series) string { return s.Labels["workload"] }

	tests := []promtoolTest{
		{Name: "listen queue overflows on a workload", InputSeries: []inputSeries{
			{overflow.String(), "0+20x30"},                                                                          // 100 in 5 minutes
			{overflow.With("workload", "Deployment/slow").String(), "0+1x30"},                                       // 5 in 5 minutes: below the threshold
			{overflow.With("workload", "Deployment/cookies", "reason", "syn-queue+syncookie").String(), "0+100x30"}, // answered with cookies, not dropped
		}, AlertTests: []alertTest{
			{"1m", "KdropListenQueueOverflow", nil}, // for: 2m
			{"10m", "KdropListenQueueOverflow", []expAlert{fires("KdropListenQueueOverflow", "100", "namespace", ns(overflow), "workload", wl(overflow))}},
		}},
		// A one-off burst: the series appears at its first occurrence,
		// already at its count (increase() alone reads 0).
		{Name: "a burst of listen queue overflows within one scrape", InputSeries: []inputSeries{
			{overflow.String(), "_ _ _ _ 513x40"},
		}, AlertTests: []alertTest{
			{"7m", "KdropListenQueueOverflow", []expAlert{fires("KdropListenQueueOverflow", "513", "namespace", ns(overflow), "workload", wl(overflow))}},
			{"20m", "KdropListenQueueOverflow", nil}, // over
		}},
		{Name: "a burst of no route to host within one scrape", InputSeries: []inputSeries{
			{unreach.String(), "_ _ _ _ 40x40"},
		}, AlertTests: []alertTest{
			{"6m", "KdropUnreachableToWorkload", []expAlert{fires("KdropUnreachableToWorkload", "40", "namespace", ns(unreach), "workload", wl(unreach))}},
			{"20m", "KdropUnreachableToWorkload", nil},
		}},
		{Name: "a burst at a Service without endpoints within one scrape", InputSeries: []inputSeries{
			{refused.String(), "_ _ _ _ 7x40"},
		}, AlertTests: []alertTest{
			{"6m", "KdropServiceWithoutEndpoints", []expAlert{fires("KdropServiceWithoutEndpoints", "7", "namespace", ns(refused), "workload", wl(refused))}},
			{"20m", "KdropServiceWithoutEndpoints", nil},
		}},
		{Name: "no route to host for a rollout's deleted pods", InputSeries: []inputSeries{
			{unreach.String(), "0x5 6x30"},
		}, AlertTests: []alertTest{
			{"5m", "KdropUnreachableToWorkload", nil},
			{"8m", "KdropUnreachableToWorkload", []expAlert{fires("KdropUnreachableToWorkload", "6", "namespace", ns(unreach), "workload", wl(unreach))}},
			{"20m", "KdropUnreachableToWorkload", nil}, // the rollout is over
		}},
		{Name: "a single no route to host is no incident", InputSeries: []inputSeries{
			{unreach.String(), "0x10 1x40"},
			{unreach.With("workload", "Deployment/other").String(), "0x10 5x40"}, // 5: not more than 5
		}, AlertTests: []alertTest{
			{"12m", "KdropUnreachableToWorkload", nil}, {"14m", "KdropUnreachableToWorkload", nil},
		}},
		{Name: "a Service without endpoints is hit", InputSeries: []inputSeries{
			{refused.String(), "0+2x30"},
			{refusedDrop.String(), "0+2x30"},
			// port-unreachable from a pod's closed port is not this alert's.
			{refused.With("workload", "Deployment/api").String(), "0+2x30"},
		}, AlertTests: []alertTest{
			{"10m", "KdropServiceWithoutEndpoints", []expAlert{fires("KdropServiceWithoutEndpoints", "10", "namespace", ns(refused), "workload", wl(refused))}},
		}},
		{Name: "kdrop misses occurrences and loses lines", InputSeries: []inputSeries{
			{missed.String(), "0x5 1+1x30"},
			{lost.String(), "0x5 1+10x30"},
		}, AlertTests: []alertTest{
			{"5m", "KdropMissedOccurrences", nil},
			{"10m", "KdropMissedOccurrences", nil}, // for: 10m
			{"20m", "KdropMissedOccurrences", []expAlert{fires("KdropMissedOccurrences", "5", seriesLabels(missed)...)}},
			{"20m", "KdropLostLines", []expAlert{fires("KdropLostLines", "50", seriesLabels(lost)...)}},
		}},
		// A hook no node's kernel has is how the kernels are, not an
		// alert; kfree_skb refused is one everywhere.
		{Name: "a hook refused on every node, kfree_skb refused", InputSeries: []inputSeries{
			{hookRefused.String(), "0x30"}, {hookRefused.With("instance", "10.0.0.7:9965").String(), "0x30"},
			{hookOK.With("mode", "none").String(), "0x30"},
		}, AlertTests: []alertTest{
			{"10m", "KdropHookNotAttached", []expAlert{fires("KdropHookNotAttached", "0", seriesLabels(hookOK.With("mode", "none"))...)}},
		}},
		{Name: "a healthy agent raises nothing", InputSeries: []inputSeries{
			{missed.String(), "0x30"}, {lost.String(), "0x30"}, {identity.String(), "1x30"}, {hookOK.String(), "1x30"},
		}, AlertTests: []alertTest{
			{"20m", "KdropMissedOccurrences", nil}, {"20m", "KdropLostLines", nil},
			{"20m", "KdropIdentityUnhealthy", nil}, {"20m", "KdropHookNotAttached", nil},
		}},
		{Name: "Event writes failing, occurrences unrecorded", InputSeries: []inputSeries{
			{writes.String(), "0x5 1+2x30"},
			{writes.With("result", "ok").String(), "0+5x35"},
			{unrecorded.String(), "0x5 0+3x30"},
		}, AlertTests: []alertTest{
			{"10m", "KdropEventWritesFailing", nil}, // for: 15m
			{"25m", "KdropEventWritesFailing", []expAlert{fires("KdropEventWritesFailing", "10", seriesLabels(writes)...)}},
			{"25m", "KdropEventsUnrecorded", []expAlert{fires("KdropEventsUnrecorded", "15", seriesLabels(unrecorded)...)}},
		}},
		{Name: "Event writes all succeed", InputSeries: []inputSeries{
			{writes.String(), "0x30"}, {writes.With("result", "ok").String(), "0+5x30"}, {unrecorded.String(), "0x30"},
		}, AlertTests: []alertTest{
			{"25m", "KdropEventWritesFailing", nil}, {"25m", "KdropEventsUnrecorded", nil},
		}},
		{Name: "the agent is down, then gone", InputSeries: []inputSeries{
			{up.String(), "1x5 0x10 _x30"},
		}, AlertTests: []alertTest{
			{"4m", "KdropAgentDown", nil},
			{"8m", "KdropAgentDown", nil}, // for: 5m
			{"12m", "KdropAgentDown", []expAlert{fires("KdropAgentDown", "0", seriesLabels(up)...)}},
			{"12m", "KdropAgentAbsent", nil},
			{"40m", "KdropAgentAbsent", []expAlert{fires("KdropAgentAbsent", "1")}},
		}},
		{Name: "the agent is up", InputSeries: []inputSeries{
			{up.String(), "1x40"},
		}, AlertTests: []alertTest{
			{"30m", "KdropAgentDown", nil}, {"30m", "KdropAgentAbsent", nil},
		}},
		{Name: "a hook another node attached not attached here, identity unhealthy", InputSeries: []inputSeries{
			{hookOK.String(), "1x30"}, {hookRefused.String(), "0x30"}, {identity.String(), "1x5 0x30"},
			{hookOK.With("hook", "icmp6_send", "mode", "tp_btf", "instance", "10.0.0.7:9965").String(), "1x30"},
		}, AlertTests: []alertTest{
			{"10m", "KdropHookNotAttached", []expAlert{fires("KdropHookNotAttached", "0", seriesLabels(hookRefused)...)}},
			{"8m", "KdropIdentityUnhealthy", nil}, // for: 5m
			{"15m", "KdropIdentityUnhealthy", []expAlert{fires("KdropIdentityUnhealthy", "0", seriesLabels(identity)...)}},
		}},
	}
	if inst == "" {
		t.Fatalf("%s: series lack the instance label", SeriesFile)
	}
	// Every alert is tested firing.
	for _, g := range Groups {
		for _, a := range g.Alerts {
			found := false
			for _, pt := range tests {
				for _, at := range pt.AlertTests {
					found = found || (at.AlertName == a.Name && at.ExpAlerts != nil)
				}
			}
			if !found {
				t.Errorf("alert %s has no promtool test where it fires", a.Name)
			}
		}
	}
	for i := range tests {
		tests[i].Interval = "1m"
	}
	dir := t.TempDir()
	rules, err := filepath.Abs(root + RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(promtoolTests{RuleFiles: []string{rules}, EvaluationInterval: "1m", Tests: tests})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "kdrop-rules.test.yaml")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("promtool", "check", "rules", rules).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err = exec.Command("promtool", "test", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s\ntests:\n%s", err, out, b)
	}
	t.Logf("promtool test rules: %s", strings.TrimSpace(string(out)))
}

// seriesLabels is a series' labels as an alert without aggregation keeps
// them (all but the metric name), as name, value pairs.
func seriesLabels(s Series) []string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		kv = append(kv, k, s.Labels[k])
	}
	return kv
}
