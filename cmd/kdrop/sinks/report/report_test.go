package report

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"html"
	"strings"
	"sync"
	"testing"
	"time"
)

// t0 is when the synthetic recordings start.
var t0 = time.Date(2026, 11, 27, 11, 50, 0, 0, time.UTC)

const header = `{"kdrop_record":1,"started":"2026-11-27T11:50:00Z","version":"v0.1.0","cluster":"prod-eu",` +
	`"nodes":[{"name":"n1","kernel":"6.12.118+deb13-amd64"},{"name":"n2","kernel":"6.1.0-40-amd64"}],` +
	`"filters":{"types":[],"reasons":[],"cidrs":[],"port":0,"netns":0,"namespace":"","pod":"","selector":""},"rate_limit":100}`

func trailer(lost int) string {
	return `{"kdrop_record_end":1,"ended":"2026-11-27T11:55:00Z","events":0,"lost":` + itoa(lost) + `}`
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// ev writes one event line: at is seconds after t0; fields add to or
// replace the defaults.
func ev(at float64, typ string, count int, fields map[string]any) string {
	m := map[string]any{
		"time":   t0.Add(time.Duration(at * float64(time.Second))).Format(time.RFC3339Nano),
		"type":   typ,
		"count":  count,
		"source": "fentry",
		"node":   "n1",
		"netns":  4026532177,
		"proto":  "tcp",
	}
	if count > 1 {
		m["summary"] = true
	}
	for k, v := range fields {
		if v == nil {
			delete(m, k)
			continue
		}
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// podID is a pod identity as kdrop writes it.
func podID(ns, name, kind, wl string, extra ...any) map[string]any {
	m := map[string]any{"kind": "pod", "namespace": ns, "name": name, "node": "n1", "ready": true}
	if wl != "" {
		m["workload_kind"], m["workload_name"] = kind, wl
	}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i].(string)] = extra[i+1]
	}
	return m
}

// gz is a gzip recording of the lines. One writer serves every call (a
// gzip.Writer is a megabyte to allocate and clear; FuzzReport calls this
// thousands of times a second).
func gz(lines ...string) []byte {
	gzMu.Lock()
	defer gzMu.Unlock()
	var b bytes.Buffer
	if gzw == nil {
		gzw, _ = gzip.NewWriterLevel(&b, gzip.BestSpeed)
	}
	gzw.Reset(&b)
	for _, l := range lines {
		gzw.Write([]byte(l + "\n"))
	}
	gzw.Close()
	return b.Bytes()
}

var (
	gzMu sync.Mutex
	gzw  *gzip.Writer
)

func read(t *testing.T, lines ...string) *Incident {
	t.Helper()
	rec, err := Read(bytes.NewReader(gz(lines...)))
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return rec
}

func findKind(fs []Finding, kind string) []Finding {
	var out []Finding
	for _, f := range fs {
		if f.Kind == kind {
			out = append(out, f)
		}
	}
	return out
}

func dumpFindings(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString("[" + f.Severity + "/" + f.Kind + "] " + f.Title + "\n    " + f.Detail + "\n    fix: " + strings.ReplaceAll(f.Fix, "\n", "\n         ") + "\n")
	}
	return b.String()
}

func wantAll(t *testing.T, what, text string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(text, s) {
			t.Errorf("%s lacks %q:\n%s", what, s, text)
		}
	}
}

var (
	apiPod      = podID("web", "api-5c8d9", "Deployment", "api", "services", []string{"web/api"})
	apiPod2     = podID("web", "api-7f4b2", "Deployment", "api", "services", []string{"web/api"})
	frontendPod = podID("web", "frontend-6b7c", "Deployment", "frontend")
)

func TestFindings(t *testing.T) {
	type check struct {
		kind, severity string
		count          uint64
		title, detail  []string
		fix, example   []string
	}
	tests := []struct {
		name   string
		lines  []string
		checks []check
		absent []string // kinds that must not be found
	}{{
		name: "accept queue capped by somaxconn",
		lines: []string{
			ev(10, "overflow", 1, map[string]any{"dst": "10.244.0.9", "dport": 8080, "src": "10.244.1.3", "sport": 40000, "tcp_flags": "SYN",
				"queue": "accept", "queue_len": 129, "queue_max": 128, "syn_queue_len": 3, "somaxconn": 128, "dst_k8s": apiPod, "src_k8s": frontendPod}),
			ev(10.5, "overflow", 1, map[string]any{"dst": "10.244.0.9", "dport": 8080, "src": "10.244.1.3", "sport": 40001,
				"queue": "accept", "queue_len": 129, "queue_max": 128, "somaxconn": 128, "dst_k8s": apiPod, "src_k8s": frontendPod}),
			ev(11, "overflow", 40, map[string]any{"dst": "10.244.0.10", "dport": 8080, "src": "10.244.1.3", "sport": 40002,
				"queue": "accept", "queue_len": 129, "queue_max": 128, "somaxconn": 128, "dst_k8s": apiPod2, "src_k8s": frontendPod}),
		},
		checks: []check{{
			kind: "somaxconn", severity: SevCritical, count: 42,
			title:   []string{"Accept queue full on port 8080 of Deployment web/api", "42 connection attempts refused", "limit 128 = net.core.somaxconn"},
			detail:  []string{"2 pods", "api-7f4b2", "api-5c8d9", "up to 129", "not your server's backlog", "min(backlog, somaxconn)", "Deployment web/frontend (42)"},
			fix:     []string{"securityContext.sysctls", "--allowed-unsafe-sysctls=net.core.somaxconn", "initContainer", "sysctl -w net.core.somaxconn=4096", "tuning CNI plugin", "backlog=4096", "min(backlog, somaxconn)", "ss -ltn"},
			example: []string{"Deployment web/api", "net.core.somaxconn", `"4096"`},
		}},
		absent: []string{"backlog", "syncookies", "lost", "truncated"},
	}, {
		name: "accept queue capped by the server's backlog",
		lines: []string{
			ev(5, "overflow", 7, map[string]any{"dst": "10.244.0.20", "dport": 80, "queue": "accept", "queue_len": 512, "queue_max": 511, "somaxconn": 4096,
				"dst_k8s": podID("edge", "nginx-abc", "Deployment", "nginx")}),
		},
		checks: []check{{
			kind: "backlog", severity: SevCritical, count: 7,
			title:  []string{"port 80 of Deployment edge/nginx", "7 connection attempts", "limit 511 = the server's listen backlog"},
			detail: []string{"below net.core.somaxconn (4,096)", "raising somaxconn alone changes nothing", "nginx"},
			fix:    []string{"Raise the server's listen() backlog", "listen 8080 backlog=4096", "somaxconn is 4,096"},
		}},
		absent: []string{"somaxconn"},
	}, {
		name: "SYN queue full, SYN cookies sent",
		lines: []string{
			ev(5, "overflow", 300, map[string]any{"dst": "10.244.0.20", "dport": 443, "queue": "syn", "queue_len": 12, "syn_queue_len": 4096, "queue_max": 4096,
				"somaxconn": 4096, "syncookie": true, "dst_k8s": podID("edge", "haproxy-0", "StatefulSet", "haproxy")}),
		},
		checks: []check{{
			kind: "syncookies", severity: SevWarning, count: 300,
			title:  []string{"SYN queue full on port 443 of StatefulSet edge/haproxy", "300 SYNs answered with SYN cookies"},
			detail: []string{"SYN cookies", "net.ipv4.tcp_syncookies"},
			fix:    []string{"net.core.somaxconn", "SYN flood"},
		}},
	}, {
		// sock_diag's SYN-queue drops: the namespace's counters, no queue
		// length or limit in the line
		name: "SYN queue full, counted without the limit",
		lines: []string{
			ev(5, "overflow", 25, map[string]any{"dst": "10.244.0.21", "dport": 8081, "queue": "syn", "somaxconn": 4096,
				"dst_k8s": podID("edge", "api-0", "StatefulSet", "api")}),
		},
		checks: []check{{
			kind: "listen-queue", severity: SevCritical, count: 25,
			title:  []string{"SYN queue full on port 8081 of StatefulSet edge/api", "25 connection attempts refused", "(limit not known)"},
			detail: []string{"without the queue's length or limit"},
		}},
		absent: []string{"backlog", "somaxconn"},
	}, {
		// kdrop used to set the flag on accept-queue overflows when
		// syncookies were forced; the SYNs were dropped all the same.
		name: "accept queue full, wrongly flagged syncookie in an old recording",
		lines: []string{
			ev(5, "overflow", 9, map[string]any{"dst": "10.244.0.20", "dport": 80, "queue": "accept", "queue_len": 129, "queue_max": 128, "syn_queue_len": 128,
				"somaxconn": 128, "syncookie": true, "dst_k8s": podID("edge", "nginx-abc", "Deployment", "nginx")}),
		},
		checks: []check{{
			kind: "somaxconn", severity: SevCritical, count: 9,
			title:  []string{"Accept queue full on port 80", "9 connection attempts refused"},
			detail: []string{"drops the SYN"},
		}},
		absent: []string{"syncookies"},
	}, {
		name: "clients sending to a deleted pod",
		lines: []string{
			ev(20, "unreach", 1, map[string]any{"src": "10.244.1.3", "sport": 51000, "dst": "10.244.2.7", "dport": 8080, "icmp": "host-unreachable", "icmp_type": 3, "icmp_code": 1,
				"src_k8s": frontendPod, "dst_k8s": podID("web", "api-old12", "Deployment", "api", "deleted_ago_ms", 3200, "ready", false),
				"where_k8s": map[string]any{"kind": "node", "name": "n1"}}),
			ev(21, "unreach", 11, map[string]any{"src": "10.244.1.3", "sport": 51002, "dst": "10.244.2.7", "dport": 8080, "icmp": "host-unreachable", "icmp_type": 3, "icmp_code": 1,
				"src_k8s": frontendPod, "dst_k8s": podID("web", "api-old12", "Deployment", "api", "deleted_ago_ms", 4400, "ready", false)}),
			ev(22, "drop", 3, map[string]any{"src": "10.244.1.3", "dst": "10.244.2.7", "dport": 8080, "reason": "NEIGH_FAILED", "reason_code": 73, "location": "neigh_invalidate+0x8d",
				"src_k8s": frontendPod, "dst_k8s": podID("web", "api-old12", "Deployment", "api", "deleted_ago_ms", 5100)}),
		},
		checks: []check{{
			kind: "stale-endpoint", severity: SevCritical, count: 15,
			title:   []string{"Clients kept sending to pods of Deployment web/api after they were deleted", "15 packets"},
			detail:  []string{"deleted 3.2 s to 5.1 s before", "api-old12 (10.244.2.7)", "ICMP host-unreachable", "NEIGH_FAILED", "Deployment web/frontend (15)", "stale endpoints during a rolling update", "port 8080"},
			fix:     []string{"Give Deployment web/api a preStop hook that sleeps 5–15 s", "readinessProbe", "terminationGracePeriodSeconds", "drains on SIGTERM"},
			example: []string{"preStop", "sleep", "Deployment web/api", "port: 8080"},
		}},
		absent: []string{"icmp", "drop-reason"},
	}, {
		name: "service without ready endpoints",
		lines: []string{
			ev(30, "unreach", 50, map[string]any{"src": "10.244.1.3", "dst": "10.96.0.20", "dport": 80, "icmp": "port-unreachable", "icmp_type": 3, "icmp_code": 3,
				"src_k8s": frontendPod, "dst_k8s": map[string]any{"kind": "service", "namespace": "shop", "name": "cart", "ready_endpoints": 0},
				"where_k8s": map[string]any{"kind": "node", "name": "n1"}}),
			ev(31, "unreach", 7, map[string]any{"src": "10.244.3.3", "dst": "10.96.0.20", "dport": 80, "icmp": "port-unreachable", "icmp_type": 3, "icmp_code": 3,
				"dst_k8s": map[string]any{"kind": "service", "namespace": "shop", "name": "cart", "ready_endpoints": 0}}),
			// a pod of the Deployment behind it shows up elsewhere
			ev(40, "drop", 1, map[string]any{"dst": "10.244.5.5", "dport": 9090, "reason": "NO_SOCKET", "tcp_flags": "SYN",
				"dst_k8s": podID("shop", "cart-5d9f", "Deployment", "cart", "services", []string{"shop/cart"}, "ready", false)}),
		},
		checks: []check{{
			kind: "no-endpoints", severity: SevCritical, count: 57,
			title:  []string{"Service shop/cart has no ready endpoints", "57 connections to port 80 rejected"},
			detail: []string{"kube-proxy REJECTs traffic to a Service without ready endpoints", "Deployment web/frontend (50)", "10.244.3.3 (7)", "node n1", "Deployment shop/cart"},
			fix:    []string{"kubectl get endpointslices -n shop -l kubernetes.io/service-name=cart", "readinessProbe", "selector", "--show-labels", "Deployment shop/cart", "scaled above 0"},
		}},
		absent: []string{"icmp"},
	}, {
		name: "service endpoints unknown is not called empty",
		lines: []string{
			ev(30, "unreach", 5, map[string]any{"dst": "10.96.0.20", "dport": 80, "proto": "udp", "icmp": "port-unreachable", "icmp_type": 3, "icmp_code": 3,
				"dst_k8s": map[string]any{"kind": "service", "namespace": "shop", "name": "cart"}}),
		},
		checks: []check{{kind: "icmp", severity: SevWarning, count: 5, title: []string{"ICMP port-unreachable sent 5 times"}, detail: []string{"Service shop/cart"}}},
		absent: []string{"no-endpoints"},
	}, {
		name: "nothing listens on the port",
		lines: []string{
			ev(12, "drop", 20, map[string]any{"src": "10.244.1.3", "dst": "10.244.0.9", "dport": 8081, "tcp_flags": "SYN", "reason": "NO_SOCKET", "reason_code": 3, "location": "tcp_v4_rcv+0x8c1",
				"src_k8s": frontendPod, "dst_k8s": apiPod}),
			ev(13, "drop", 13, map[string]any{"src": "10.244.1.4", "dst": "10.244.0.10", "dport": 8081, "tcp_flags": "SYN", "reason": "NO_SOCKET", "reason_code": 3, "location": "tcp_v4_rcv+0x8c1",
				"dst_k8s": apiPod2}),
		},
		checks: []check{{
			kind: "no-socket", severity: SevWarning, count: 33,
			title:  []string{"Nothing listens on TCP port 8081 in pods of Deployment web/api", "33 packets dropped (NO_SOCKET)"},
			detail: []string{"Connection refused", "api-5c8d9 (20)", "api-7f4b2 (13)", "Deployment web/frontend (20)"},
			fix:    []string{"ss -ltnu", "targetPort", "containerPort", "0.0.0.0", "readinessProbe", "kubectl exec -n web api-5c8d9"},
		}},
		absent: []string{"drop-reason", "closed-connection"},
	}, {
		name: "late packets of closed connections",
		lines: []string{
			ev(12, "drop", 9, map[string]any{"dst": "10.244.0.9", "dport": 8080, "tcp_flags": "FIN|ACK", "reason": "NO_SOCKET", "dst_k8s": apiPod}),
		},
		checks: []check{{kind: "closed-connection", severity: SevInfo, count: 9, title: []string{"closed TCP connections on port 8080 in pods of Deployment web/api"}, detail: []string{"Only 0 of them opened a connection", "FIN|ACK"}, fix: []string{"harmless"}}},
		absent: []string{"no-socket"},
	}, {
		name: "firewall or NetworkPolicy",
		lines: []string{
			ev(50, "drop", 120, map[string]any{"src": "10.244.1.3", "sport": 43210, "dst": "10.244.4.4", "dport": 5432, "tcp_flags": "SYN", "reason": "NETFILTER_DROP", "reason_code": 7, "location": "nf_hook_slow+0xa1",
				"src_k8s": frontendPod, "dst_k8s": podID("db", "postgres-0", "StatefulSet", "postgres"), "where_k8s": map[string]any{"kind": "node", "name": "n2"}, "node": "n2"}),
		},
		checks: []check{{
			kind: "netfilter", severity: SevWarning, count: 120,
			title:  []string{"Firewall dropped traffic from Deployment web/frontend to StatefulSet db/postgres TCP port 5432", "120 packets"},
			detail: []string{"frontend-6b7c", "postgres-0", "node n2", "nf_hook_slow+0xa1", "NetworkPolicy"},
			fix:    []string{"kubectl get networkpolicy -n db", "egress policies in the source namespace web", "iptables-save"},
		}},
	}, {
		name: "lost events",
		lines: []string{
			ev(5, "drop", 100, map[string]any{"reason": "SOCKET_RCVBUFF", "proto": "udp", "dst": "10.244.0.53", "dport": 53}),
			`{"time":"2026-11-27T11:50:06Z","type":"lost","node":"n1","lost":30}`,
			`{"time":"2026-11-27T11:50:07Z","type":"lost","node":"n2","lost":7}`,
			trailer(37),
		},
		checks: []check{
			{kind: "lost", severity: SevWarning, count: 37,
				title:  []string{"37 events were not recorded as lines", "counts are still exact"},
				detail: []string{"n1: 30, n2: 7", "every count in this report is exact", "incomplete in lines, not in counts"},
				fix:    []string{"--type", "--namespace", "--rate-limit (now 100 per second per flow)", "--rate-limit 20"}},
			{kind: "receive-buffer", severity: SevWarning, count: 100, title: []string{"Receive buffer full on UDP port 53 at 10.244.0.53: 100 datagrams dropped (SOCKET_RCVBUFF)"}, fix: []string{"SO_RCVBUF", "net.core.rmem_max", "too slow"}},
		},
		absent: []string{"truncated", "missed"},
	}, {
		name: "missed occurrences, with lost lines",
		lines: []string{
			ev(5, "drop", 100, map[string]any{"reason": "SOCKET_RCVBUFF", "proto": "udp", "dst": "10.244.0.53", "dport": 53}),
			`{"time":"2026-11-27T11:50:06Z","type":"lost","node":"n1","lost":30}`,
			`{"time":"2026-11-27T11:50:06Z","type":"missed","node":"n1","missed":4,"cause":"kernel"}`,
			`{"time":"2026-11-27T11:50:07Z","type":"missed","node":"n2","missed":9,"cause":"stream"}`,
			`{"kdrop_record_end":1,"ended":"2026-11-27T11:55:00Z","events":1,"lost":30,"missed":13}`,
		},
		checks: []check{
			{kind: "missed", severity: SevWarning, count: 13,
				title: []string{"Counts are short: 13 occurrences were never counted"},
				detail: []string{"kernel skipped kdrop's program 4 times because it was already running on that CPU", "softirq",
					"stream to the recorder fell behind", "holding 9 occurrences", "n2: 9, n1: 4", "may be short, by up to 13 in all", "do not come back in summary lines"},
				fix: []string{"lower bound", "nstat", "kdrop check", "--from watch"}},
			{kind: "lost", severity: SevWarning, count: 30,
				title:  []string{"30 events were not recorded as lines", "still counted"},
				detail: []string{"n1: 30", "short for another reason"}},
		},
		absent: []string{"truncated"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lines := append([]string{header}, tc.lines...)
			if !strings.Contains(lines[len(lines)-1], "kdrop_record_end") {
				lines = append(lines, trailer(0))
			}
			fs := read(t, lines...).Findings()
			for _, c := range tc.checks {
				got := findKind(fs, c.kind)
				if len(got) != 1 {
					t.Fatalf("want one %s finding, got %d:\n%s", c.kind, len(got), dumpFindings(fs))
				}
				f := got[0]
				if f.Severity != c.severity || f.Count != c.count {
					t.Errorf("%s: severity %s count %d, want %s %d", c.kind, f.Severity, f.Count, c.severity, c.count)
				}
				wantAll(t, c.kind+" title", f.Title, c.title...)
				wantAll(t, c.kind+" detail", f.Detail, c.detail...)
				wantAll(t, c.kind+" fix", f.Fix, c.fix...)
				wantAll(t, c.kind+" example", f.Example, c.example...)
			}
			for _, k := range tc.absent {
				if got := findKind(fs, k); len(got) > 0 {
					t.Errorf("unexpected %s finding:\n%s", k, dumpFindings(got))
				}
			}
			if t.Failed() {
				t.Logf("all findings:\n%s", dumpFindings(fs))
			}
		})
	}
}

func TestFindingsOrder(t *testing.T) {
	rec := read(t, header,
		ev(1, "drop", 500, map[string]any{"reason": "TCP_OLD_DATA"}),
		ev(2, "drop", 90, map[string]any{"reason": "NETFILTER_DROP", "dst": "10.0.0.1", "dport": 22}),
		ev(3, "overflow", 3, map[string]any{"dst": "10.0.0.2", "dport": 80, "queue_max": 128, "somaxconn": 128, "queue_len": 129}),
		ev(4, "drop", 200, map[string]any{"reason": "NETFILTER_DROP", "dst": "10.0.0.3", "dport": 23}),
	)
	fs := rec.Findings()
	var got []string
	for _, f := range fs {
		got = append(got, f.Severity+"/"+f.Kind+"/"+itoa(int(f.Count)))
	}
	want := "critical/somaxconn/3 warning/netfilter/200 warning/netfilter/90 warning/truncated/0 info/drop-reason/500"
	if strings.Join(got, " ") != want {
		t.Errorf("order:\n got %s\nwant %s", strings.Join(got, " "), want)
	}
}

// Counts are summed, never lines counted; the trailer and loss notices are
// read; the window runs from the header to the trailer.
func TestReadCounts(t *testing.T) {
	rec := read(t, header,
		ev(1, "drop", 1, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80, "sport": 1}),
		ev(1.5, "drop", 1, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80, "sport": 2}),
		ev(2, "drop", 98, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80, "sport": 3}),
		`{"time":"2026-11-27T11:50:03Z","type":"lost","node":"n1","lost":5}`,
		ev(4, "unreach", 2, map[string]any{"icmp": "port-unreachable", "icmp_type": 3, "icmp_code": 3, "dst": "10.0.0.9", "dport": 53, "proto": "udp",
			"future_field": map[string]any{"nested": []int{1, 2}}, "src_k8s": map[string]any{"kind": "pod", "name": "x", "namespace": "y", "new_thing": true}}),
		`{"kdrop_record_end":1,"ended":"2026-11-27T11:51:00Z","events":4,"lost":5,"extra":"ignored"}`,
	)
	if rec.Total() != 102 || rec.EventLines != 4 || rec.Lines != 7 {
		t.Errorf("total %d lines %d/%d, want 102 occurrences in 4 event lines of 7", rec.Total(), rec.EventLines, rec.Lines)
	}
	if len(rec.Flows) != 2 {
		t.Errorf("%d flows, want 2 (source ports do not split a flow)", len(rec.Flows))
	}
	if rec.Lost() != 5 || rec.Truncated() {
		t.Errorf("lost %d truncated %v", rec.Lost(), rec.Truncated())
	}
	start, end := rec.Window()
	if !start.Equal(t0) || !end.Equal(t0.Add(time.Minute)) {
		t.Errorf("window %v–%v", start, end)
	}
	if rec.Header.Cluster != "prod-eu" || len(rec.Header.Nodes) != 2 || rec.Header.Nodes[0].Kernel != "6.12.118+deb13-amd64" || rec.Header.RateLimit != 100 {
		t.Errorf("header %+v", rec.Header)
	}
	if len(rec.Notes) != 0 {
		t.Errorf("notes: %q", rec.Notes)
	}
}

func TestReadTruncated(t *testing.T) {
	// no trailer: read fine, marked truncated
	rec := read(t, header, ev(1, "drop", 3, map[string]any{"reason": "NO_SOCKET"}), ev(9, "drop", 1, map[string]any{"reason": "NO_SOCKET"}))
	if !rec.Truncated() {
		t.Fatal("not truncated")
	}
	if _, end := rec.Window(); !end.Equal(t0.Add(9 * time.Second)) {
		t.Errorf("window ends %v, want the last event", end)
	}
	fs := findKind(rec.Findings(), "truncated")
	if len(fs) != 1 {
		t.Fatalf("no truncated finding")
	}
	wantAll(t, "truncated", fs[0].Detail, "killed", "11:50:09")

	// the compressed data cut off mid-way, as when the recorder is killed
	var lines []string
	lines = append(lines, header)
	for i := 0; i < 3000; i++ {
		lines = append(lines, ev(float64(i)/10, "drop", 1, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80, "sport": i}))
	}
	full := gz(lines...)
	rec, err := Read(bytes.NewReader(full[:len(full)*2/3]))
	if err != nil {
		t.Fatalf("cut-off file: %v", err)
	}
	if !rec.Truncated() || rec.EventLines == 0 || rec.EventLines >= 3000 || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], "cut off") {
		t.Errorf("cut-off file: truncated %v, %d event lines, notes %q", rec.Truncated(), rec.EventLines, rec.Notes)
	}
}

func TestReadUnknownType(t *testing.T) {
	rec := read(t, header, `{"time":"2026-11-27T11:50:01Z","type":"retransmit","count":4}`, ev(2, "drop", 1, map[string]any{"reason": "X"}), trailer(0))
	if rec.Total() != 1 || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], `"retransmit"`) || !strings.Contains(rec.Notes[0], "line 2") {
		t.Errorf("total %d notes %q", rec.Total(), rec.Notes)
	}
}

func TestReadErrors(t *testing.T) {
	good := ev(1, "drop", 1, map[string]any{"reason": "NO_SOCKET"})
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"empty file", nil, []string{"empty"}},
		{"not gzip", []byte("PK\x03\x04 a zip file"), []string{"not gzip-compressed"}},
		{"plain JSON", []byte(header + "\n" + good + "\n"), []string{"plain text", "gzip"}},
		{"empty gzip", gz(), []string{"no header"}},
		{"first line not JSON", gz("hello world", good), []string{"line 1", "not JSON"}},
		{"header missing", gz(good, good), []string{"line 1", "header is missing", "starts with an event"}},
		{"header without kdrop_record", gz(`{"started":"2026-11-27T11:50:00Z"}`), []string{"line 1", `no "kdrop_record"`}},
		{"newer format", gz(`{"kdrop_record":2,"started":"2026-11-27T11:50:00Z"}`, good), []string{"line 1", "format 2 is newer", "reads (1)"}},
		{"format zero", gz(`{"kdrop_record":0,"started":"2026-11-27T11:50:00Z"}`), []string{"line 1", "unknown recording format 0"}},
		{"header without start", gz(`{"kdrop_record":1}`), []string{"line 1", `no "started" time`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := Read(bytes.NewReader(tc.data))
			if err == nil {
				t.Fatalf("no error; read %d flows", len(rec.Flows))
			}
			wantAll(t, "error", err.Error(), tc.want...)
		})
	}
}

// A recording's bad lines are left out, counted and named in a note; the
// rest reads (a recording moves between people and tools: one bad line
// must not cost the others).
func TestReadSkipsBadLines(t *testing.T) {
	good := ev(1, "drop", 1, map[string]any{"reason": "NO_SOCKET"})
	tests := []struct {
		name string
		data []byte
		want []string
	}{
		{"broken JSON", gz(header, good, `{"time":"2026-11-27T11:50:01Z","type":"drop",,"count":1}`), []string{"line 3", "invalid JSON at byte 46", "invalid character ','"}},
		{"truncated line", gz(header, good, good[:40]), []string{"line 3", "cut off"}},
		{"no count", gz(header, `{"time":"2026-11-27T11:50:01Z","type":"drop","reason":"X"}`), []string{"line 2", `without "count"`}},
		{"no type", gz(header, `{"time":"2026-11-27T11:50:01Z","count":1}`), []string{"line 2", `no "type"`}},
		{"bad time", gz(header, good, `{"time":"yesterday","type":"drop","count":1}`), []string{"line 3", "RFC 3339", "yesterday"}},
		{"no time", gz(header, `{"type":"overflow","count":1}`), []string{"line 2", `no "time"`}},
		{"port as string", gz(header, `{"time":"2026-11-27T11:50:01Z","type":"drop","count":1,"dport":"http"}`), []string{"line 2", "dport", "whole number"}},
		{"negative count", gz(header, `{"time":"2026-11-27T11:50:01Z","type":"drop","count":-1}`), []string{"line 2", "count", "0 or more"}},
		{"bad address", gz(header, `{"time":"2026-11-27T11:50:01Z","type":"drop","count":1,"dst":"10.0.0.999"}`), []string{"line 2", "not an IP address", "10.0.0.999"}},
		{"bad identity", gz(header, `{"time":"2026-11-27T11:50:01Z","type":"drop","count":1,"dst_k8s":{"deleted_ago_ms":"soon"}}`), []string{"line 2", "dst_k8s", "deleted_ago_ms"}},
		{"loss without count", gz(header, `{"time":"2026-11-27T11:50:01Z","type":"lost","node":"n1"}`), []string{"line 2", `without "lost"`}},
		{"missed without count", gz(header, good, `{"time":"2026-11-27T11:50:01Z","type":"missed","node":"n1","cause":"kernel"}`), []string{"line 3", `missed notice without "missed"`}},
		{"missed without time", gz(header, `{"type":"missed","node":"n1","missed":3}`), []string{"line 2", "missed notice", `no "time"`}},
		{"data after trailer", gz(header, good, trailer(0), good), []string{"line 4", "after the end-of-recording line (line 3)"}},
		{"two headers", gz(header, good, header), []string{"line 3", "second header"}},
		{"trailer without end time", gz(header, `{"kdrop_record_end":1}`), []string{"line 2", `no "ended" time`}},
		{"line not an object", gz(header, `[1,2,3]`), []string{"line 2", "array, not an object"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := Read(bytes.NewReader(tc.data))
			if err != nil {
				t.Fatalf("a bad line made the recording unreadable: %v", err)
			}
			notes := strings.Join(rec.Notes, "\n")
			wantAll(t, "notes", notes, append([]string{"1 lines could not be read and were left out"}, tc.want...)...)
		})
	}
	// the lines around bad ones count; past five, the rest are counted only
	lines := []string{header, good}
	for i := range 7 {
		lines = append(lines, fmt.Sprintf(`{"time":"2026-11-27T11:50:0%dZ","type":"drop","count":"x"}`, i), good)
	}
	rec, err := Read(bytes.NewReader(gz(lines...)))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Total() != 8 || rec.EventLines != 8 {
		t.Errorf("%d occurrences in %d lines kept, want 8 in 8", rec.Total(), rec.EventLines)
	}
	wantAll(t, "notes", strings.Join(rec.Notes, "\n"), "7 lines could not be read and were left out: line 3:", "line 11:", "; and 2 more")
}

func TestTimelineBuckets(t *testing.T) {
	tests := []struct {
		window time.Duration
		step   time.Duration
	}{
		{0, time.Second},
		{40 * time.Second, time.Second},
		{5 * time.Minute, 5 * time.Second},
		{30 * time.Minute, 30 * time.Second},
		{3 * time.Hour, 5 * time.Minute},
		{2 * 24 * time.Hour, time.Hour},
	}
	for _, tc := range tests {
		step, n := pickStep(t0, t0.Add(tc.window))
		if step != tc.step || n > maxBuckets || n < 1 {
			t.Errorf("window %v: step %v (%d buckets), want %v", tc.window, step, n, tc.step)
		}
	}
	top, step := niceScale(137)
	if top != 150 || step != 25 && step != 50 {
		t.Errorf("niceScale(137) = %d, %d", top, step)
	}
}

// Lost lines and missed occurrences are read apart: "lost" keeps counts
// exact, "missed" makes them short. Nothing says "exact" once anything was
// missed, and the miss is said at the top of the report.
func TestReadMissed(t *testing.T) {
	lines := []string{header,
		ev(1, "drop", 2, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80}),
		`{"time":"2026-11-27T11:50:02Z","type":"lost","node":"n1","lost":5}`,
		`{"time":"2026-11-27T11:50:03Z","type":"missed","node":"n1","missed":3,"cause":"kernel"}`,
		`{"time":"2026-11-27T11:50:04Z","type":"missed","node":"n2","missed":4,"cause":"stream"}`,
		ev(5, "drop", 1, map[string]any{"reason": "NO_SOCKET", "dst": "10.0.0.1", "dport": 80}),
	}
	// Without a trailer the notices count; with one, the trailer's totals
	// (which may count what notices the file lacks: a cause unknown here).
	for _, tc := range []struct {
		name           string
		trailer        string
		lost, missed   uint64
		unknownInWords bool
	}{
		{"truncated", "", 5, 7, false},
		{"trailer", `{"kdrop_record_end":1,"ended":"2026-11-27T11:51:00Z","events":2,"lost":5,"missed":7}`, 5, 7, false},
		{"trailer beyond notices", `{"kdrop_record_end":1,"ended":"2026-11-27T11:51:00Z","events":2,"lost":5,"missed":10}`, 5, 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := lines
			if tc.trailer != "" {
				all = append(append([]string(nil), lines...), tc.trailer)
			}
			rec := read(t, all...)
			if rec.Lost() != tc.lost || rec.Missed() != tc.missed {
				t.Errorf("lost %d missed %d, want %d and %d", rec.Lost(), rec.Missed(), tc.lost, tc.missed)
			}
			want := []Miss{{t0.Add(3 * time.Second), "n1", 3, MissedByKernel}, {t0.Add(4 * time.Second), "n2", 4, MissedByStream}}
			if len(rec.Misses) != 2 || rec.Misses[0] != want[0] || rec.Misses[1] != want[1] {
				t.Errorf("misses %+v, want %+v", rec.Misses, want)
			}
			if rec.Total() != 3 || len(rec.Notes) != 0 {
				t.Errorf("total %d, notes %q", rec.Total(), rec.Notes)
			}
			if got := strings.Contains(missedCauses(rec), "for a reason the file does not name"); got != tc.unknownInWords {
				t.Errorf("causes: %q", missedCauses(rec))
			}

			var md bytes.Buffer
			if err := WriteMarkdown(&md, rec); err != nil {
				t.Fatal(err)
			}
			page := html.UnescapeString(renderHTML(t, rec))
			for what, text := range map[string]string{"markdown": md.String(), "page": page} {
				if strings.Contains(strings.ToLower(text), "exact") {
					t.Errorf("%s says \"exact\" though occurrences were missed:\n%s", what, grepLines(text, "xact"))
				}
				wantAll(t, what, text, "Counts are short, by up to "+num(tc.missed)+".", "already running on that CPU", "Missed", "Lost lines")
			}
			wantAll(t, "markdown", md.String(),
				"| Missed | **"+num(tc.missed)+" occurrences never counted: counts may be short by up to "+num(tc.missed)+"** |",
				"| Lost lines | **5 events (lines missing; still counted)** |",
				"> **5 event lines lost.**")
			// the miss comes first, before anything else at the top
			if i, j := strings.Index(md.String(), "Counts are short, by up to"), strings.Index(md.String(), "event lines lost"); i < 0 || j < i {
				t.Error("the missed banner should come before the lost-lines banner")
			}
			wantAll(t, "page", page, "occurrences missed (not in the bars: counts short)", "event lines lost (counted in the bars)")
		})
	}
}

// grepLines keeps the lines of s that hold sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
