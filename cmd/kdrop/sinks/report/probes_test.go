package report

import (
	"strings"
	"testing"
)

// Drops on kubelet probe connections: one finding per pod and probed
// port, with what the kubelet saw and the fix; the probe's strings are
// checked like every other string of a recording.
func TestProbeFindings(t *testing.T) {
	shopAPI := podID("shop", "api-6d4f", "Deployment", "api")
	other := podID("shop", "web-1", "Deployment", "web")
	probe := func(kind string, also []string, port int, container string) map[string]any {
		m := map[string]any{"kind": kind, "port": port, "handler": "tcp", "container": container}
		if also != nil {
			m["also"] = also
		}
		return m
	}
	noSocket := func(at float64, count int, sport int, pod map[string]any, p map[string]any) string {
		f := map[string]any{"reason": "NO_SOCKET", "location": "tcp_v4_rcv+0x1a4", "tcp_flags": "SYN",
			"src": "10.244.0.1", "sport": sport, "dst": "10.244.0.9", "dport": 8081, "dst_k8s": pod, "where_k8s": pod}
		if p != nil {
			f["probe"] = p
		}
		return ev(at, "drop", count, f)
	}
	rec := read(t, header,
		noSocket(1, 1, 40001, shopAPI, probe("liveness", []string{"readiness"}, 8081, "api")),
		noSocket(11, 1, 40002, shopAPI, probe("liveness", []string{"readiness"}, 8081, "api")),
		noSocket(21, 1, 40003, shopAPI, probe("liveness", []string{"readiness"}, 8081, "api")),
		ev(31, "unreach", 2, map[string]any{"icmp": "host-unreachable", "icmp_type": 3, "icmp_code": 1,
			"src": "10.244.0.1", "sport": 40004, "dst": "10.244.0.9", "dport": 8081, "dst_k8s": shopAPI,
			"probe": probe("liveness", []string{"readiness"}, 8081, "api")}),
		// a readiness probe on another pod, with a container name no
		// pod can have
		noSocket(5, 4, 40005, other, probe("readiness", nil, 8081, "Web<b>`x`")),
		// not a probe: a client's connection to the same port
		noSocket(6, 7, 40006, shopAPI, nil),
		trailer(0))
	fs := rec.Findings()
	probes := findKind(fs, "probe")
	if len(probes) != 2 {
		t.Fatalf("%d probe findings, want 2 (one per pod and port):\n%s", len(probes), dumpFindings(fs))
	}
	api, web := probes[0], probes[1]
	if !strings.Contains(api.Title, "api-6d4f") {
		api, web = web, api
	}
	if api.Count != 5 || api.Severity != SevCritical {
		t.Errorf("liveness finding: count %d severity %s, want 5 critical:\n%s", api.Count, api.Severity, dumpFindings(probes))
	}
	wantAll(t, "liveness finding", api.Title+"\n"+api.Detail+"\n"+api.Fix+"\n"+api.Example,
		"liveness and readiness probes of pod shop/api-6d4f on :8081 got", "NO_SOCKET", "host-unreachable",
		"3 connections found nothing listening on port 8081", "container api",
		"kubectl exec -n shop api-6d4f -- ss -ltn", "the probe's port is 8081", "startupProbe", "initialDelaySeconds", "restarts the container")
	if web.Count != 4 || web.Severity != SevWarning {
		t.Errorf("readiness finding: count %d severity %s, want 4 warning", web.Count, web.Severity)
	}
	wantAll(t, "readiness finding", web.Title+"\n"+web.Detail, "readiness probe of pod shop/web-1 on :8081", `"Web\x3cb\x3e\x60x\x60"`+invalidMark, "out of its Services")
	// The client's connection is the no-socket finding's, not a probe's.
	ns := findKind(fs, "no-socket")
	if len(ns) != 1 || ns[0].Count != 7 {
		t.Errorf("no-socket findings: %s", dumpFindings(ns))
	}
}
