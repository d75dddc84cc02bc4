package main

// kdrop's alerts and dashboard (deploy/monitoring) against a real agent
// tracing the seed's incidents, scraped by a real Prometheus that loads the
// shipped rules file: the incident alerts go pending with the right
// namespace and workload, the health alerts stay quiet (but for a hook the
// host's kernel refuses), every dashboard
// query returns series, and the series the alerts' promtool tests are built
// from (deploy/monitoring/testdata) are the ones this agent exports.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/prometheus/prometheus/model/labels"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/deploy/monitoring"
	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// replicaSetOf creates Deployment name in ns and a ReplicaSet of it, and
// returns an owner reference to the ReplicaSet for its pods.
func replicaSetOf(t *testing.T, cs kubernetes.Interface, ns, name, hash string) *metav1.OwnerReference {
	t.Helper()
	ctx := context.Background()
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
	tmpl := corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "app"}}}}
	dep, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	rs, err := cs.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: name + "-" + hash,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: &yes}}},
		Spec: appsv1.ReplicaSetSpec{Selector: sel, Template: tmpl}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}
}

func TestAgentMonitoring(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	for _, ns := range []string{"shop", "web"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// client ── router ── server; every incident happens in the router's
	// namespace, the only one the agent traces (the host's own drops
	// stay out of the series):
	// - shop/Deployment front listens on the router's address and never
	//   accepts: listen queue overflows;
	// - web/Deployment api's pod at 198.18.2.9 is deleted (a rollout) and
	//   nobody answers there: host-unreachable;
	// - Service shop/cart has no endpoints: kube-proxy's REJECT
	//   (NETFILTER_DROP and port-unreachable).
	r := nstest.NewRouted(t)
	r.Router.Sysctl(t, "net.ipv4.neigh."+r.RouterToServer+".retrans_time_ms", "100")
	const listenIP, gone = "198.18.1.1", "198.18.2.9"
	createPod(t, cs, "shop", "front-7d9-q2w3e", listenIP, replicaSetOf(t, cs, "shop", "front", "7d9"))
	createPod(t, cs, "web", "api-5c8-x7k2p", gone, replicaSetOf(t, cs, "web", "api", "5c8"))
	createPod(t, cs, "web", "client", nstest.ClientIP, nil)
	svc, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cart"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "cart"}, Ports: []corev1.ServicePort{{Port: 80}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := svc.Spec.ClusterIP
	r.Router.IP(t, "route add "+vip+"/32 via "+nstest.ServerIP)
	r.Router.Sh(t, "iptables -A FORWARD -d "+vip+" -p tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable")

	addr := freeAddr(t)
	startAgent(t, env.Kubeconfig(), "test-node", addr, freeAddr(t), r.Router.Name, "--type", "overflow,unreach") // and drop
	rules, err := filepath.Abs("../../" + monitoring.RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, addr, rules)

	// The rollout took the pod away; its IP is still in use.
	if err := cs.CoreV1().Pods("web").Delete(ctx, "api-5c8-x7k2p", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	// The incidents go on, a round a second, until Prometheus has seen
	// each counter grow (increase() needs two samples of a series, and a
	// busy agent may hand a few seconds' events over at once).
	ln := r.Router.ListenNoAccept(t, listenIP, 8080, 2)
	defer ln.Close()
	incidents := func() {
		conns := r.Client.ConnectMany(t, listenIP, 8080, 20)
		defer conns.Close()
		if err := r.Client.ConnectErr(t, gone, 8080, 10*time.Second); !errors.Is(err, unix.EHOSTUNREACH) {
			t.Fatalf("connect to %s: want EHOSTUNREACH, got %v", gone, err)
		}
		if err := r.Client.ConnectErr(t, vip, 80, 10*time.Second); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("connect to %s:80: want ECONNREFUSED, got %v", vip, err)
		}
		time.Sleep(time.Second)
	}
	for range 4 {
		incidents()
	}

	// Prometheus evaluates the shipped rules: the incident alerts are
	// pending (their for: has not passed), naming the workloads.
	want := []string{
		`KdropListenQueueOverflow shop/Deployment/front`,
		`KdropUnreachableToWorkload web/Deployment/api`,
		`KdropServiceWithoutEndpoints shop/Service/cart`,
	}
	// kfree_skb refused is an alert too; another hook this host's kernel
	// refuses (seen: icmp6_send where fentry is forbidden and kprobe
	// unsupported) is not, with no other agent that attached it.
	if len(prom.series(t, `kdrop_hook_attached{hook="kfree_skb"} == 0`)) > 0 {
		want = append(want, "KdropHookNotAttached "+addr)
	}
	var got []string
	for deadline := time.Now().Add(90 * time.Second); ; incidents() {
		got = prom.alerts(t)
		if !slices.ContainsFunc(want, func(w string) bool { return !slices.Contains(got, w) }) {
			break
		}
		if time.Now().After(deadline) {
			var counts []string
			for _, q := range []string{`kdrop_events_total`, `increase(kdrop_events_total[5m])`} {
				for _, m := range prom.series(t, q) {
					counts = append(counts, fmt.Sprint(q, " ", m))
				}
			}
			t.Fatalf("alerts pending or firing: %q, want %q; Prometheus has:\n%s", got, want, strings.Join(counts, "\n"))
		}
	}
	for _, a := range got {
		if !slices.Contains(want, a) {
			t.Errorf("alert %s, which this healthy agent should not raise (alerts: %q)", a, got)
		}
	}

	// Every dashboard query, as Grafana sends it with its defaults,
	// returns series.
	dash, err := os.ReadFile("../../" + monitoring.DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	queries, err := monitoring.DashboardQueries(dash)
	if err != nil || len(queries) == 0 {
		t.Fatalf("dashboard queries: %v (%d)", err, len(queries))
	}
	for _, q := range queries {
		if n := len(prom.series(t, monitoring.Instant(q, "1m"))); n == 0 {
			t.Errorf("dashboard query %s returns no series", q)
		}
	}
	// And every selector of every alert.
	for _, g := range monitoring.Groups {
		for _, a := range g.Alerts {
			sels, err := monitoring.Selectors(a.Expr)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range sels {
				s.OriginalOffset, s.Offset = 0, 0 // the series now: Prometheus is younger than the offset
				// mode="none" is a hook this host's kernel refused: maybe none.
				s.LabelMatchers = slices.DeleteFunc(s.LabelMatchers, func(m *labels.Matcher) bool { return m.Name == "mode" })
				if len(prom.series(t, s.String())) == 0 {
					t.Errorf("alert %s: %s selects no series of the agent's", a.Name, s)
				}
			}
		}
	}

	// The series Prometheus holds are those the promtool tests take.
	var real []monitoring.Series
	for _, m := range prom.series(t, `{__name__=~"kdrop_.+"}`) {
		s := monitoring.Series{Labels: map[string]string{}}
		for k, v := range m {
			switch k {
			case "=":
			case "__name__":
				s.Name = v
			case "instance":
				s.Labels[k] = monitoring.FixedInstance
			default:
				s.Labels[k] = v
			}
		}
		real = append(real, s)
	}
	checkSeriesFile(t, real)
}

// checkSeriesFile compares the series Prometheus scraped from the agent
// with deploy/monitoring's SeriesFile: each metric's label names must be
// the same, and each kdrop_events_total series of the file must be there
// (the scenario's). KDROP_UPDATE_SERIES=1 writes the file instead.
func checkSeriesFile(t *testing.T, real []monitoring.Series) {
	t.Helper()
	path := "../../" + monitoring.SeriesFile
	lines := make([]string, 0, len(real))
	for _, s := range real {
		lines = append(lines, s.String())
	}
	slices.Sort(lines)
	if os.Getenv("KDROP_UPDATE_SERIES") != "" {
		text := "# The kdrop_* series a real Prometheus scraped from a real agent in cmd/kdrop\n" +
			"# TestAgentMonitoring (instance fixed); KDROP_UPDATE_SERIES=1 rewrites this file.\n" +
			strings.Join(lines, "\n") + "\n"
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d series)", path, len(lines))
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	file, err := monitoring.ParseSeries(string(b))
	if err != nil {
		t.Fatal(err)
	}
	names := func(ss []monitoring.Series) map[string][]string {
		m := map[string][]string{}
		for _, s := range ss {
			if k := s.LabelNames(); !slices.Contains(m[s.Name], k) {
				m[s.Name] = append(m[s.Name], k)
			}
		}
		return m
	}
	if a, b := fmt.Sprint(names(file)), fmt.Sprint(names(real)); a != b {
		t.Errorf("%s has metrics and label names\n%s\nbut the agent exports\n%s\n(rerun with KDROP_UPDATE_SERIES=1 and check the alerts' tests)", path, a, b)
	}
	for _, s := range file {
		if s.Name == "kdrop_events_total" && !slices.Contains(lines, s.String()) {
			t.Errorf("%s has %s, which the agent did not export (rerun with KDROP_UPDATE_SERIES=1)", path, s)
		}
	}
}

// alerts lists the alerts pending or firing, as "NAME namespace/workload"
// (or "NAME instance").
func (p *prometheusServer) alerts(t *testing.T) []string {
	t.Helper()
	var r struct {
		Data struct {
			Alerts []struct{ Labels map[string]string }
		}
	}
	p.get(t, "/api/v1/alerts", &r)
	var out []string
	for _, a := range r.Data.Alerts {
		l := a.Labels
		who := l["instance"]
		if _, ok := l["workload"]; ok {
			who = l["namespace"] + "/" + l["workload"]
		}
		out = append(out, l["alertname"]+" "+who)
	}
	slices.Sort(out)
	return out
}

// series returns the label sets of the series an instant query (or a
// series selector) returns, each with its value under the key "=".
func (p *prometheusServer) series(t *testing.T, q string) []map[string]string {
	t.Helper()
	var r struct {
		Status, Error string
		Data          struct {
			Result []struct {
				Metric map[string]string
				Value  []any
			}
		}
	}
	p.get(t, "/api/v1/query?query="+url.QueryEscape(q), &r)
	if r.Status != "success" {
		t.Fatalf("query %s: %s", q, r.Error)
	}
	out := make([]map[string]string, 0, len(r.Data.Result))
	for _, s := range r.Data.Result {
		if len(s.Value) == 2 { // the value too, for messages
			s.Metric["="], _ = s.Value[1].(string)
		}
		out = append(out, s.Metric)
	}
	return out
}

func (p *prometheusServer) get(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := http.Get(p.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
