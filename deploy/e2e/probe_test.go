package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/report"
	"github.com/kdrop/kdrop/k8s"
)

// A pod whose liveness probe targets a port nothing listens on (the named
// port "health", 8081; the app serves 8080, which the readiness probe
// checks and which works). The kubelet's connects come from the node (the
// CNI bridge's address) and get NO_SOCKET in the pod: kdrop tail names
// them as the liveness probe of that pod, and the report has a finding.
const probeWorkload = `
apiVersion: v1
kind: Namespace
metadata:
  name: probes
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: probes}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: api
    image: ` + testappImage + `
    imagePullPolicy: Never
    args: [serve, -port, "8080"]
    ports:
    - {name: http, containerPort: 8080}
    - {name: health, containerPort: 8081}
    livenessProbe:
      tcpSocket: {port: health}
      periodSeconds: 1
      failureThreshold: 100000   # fails on every try, never restarts during the test
    readinessProbe:
      tcpSocket: {port: http}
      periodSeconds: 1
`

func TestProbe(t *testing.T) {
	t.Cleanup(func() {
		kubectlErr("delete", "namespace", "probes", "--wait=false")
		kubectlErr("delete", "-k", "deploy/kustomize", "--ignore-not-found", "--timeout=120s")
	})
	dumpOnFailure(t)
	// Another test's agent (kustomize's or Helm's) may still be going
	// away: this one takes the same host ports.
	kubectlErr("wait", "--for=delete", "namespace/kdrop", "--timeout=120s")
	for deadline := time.Now().Add(60 * time.Second); findAgentPID() != 0; time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an earlier test's agent is still running 60s after its namespace went")
		}
	}

	applyYAML(t, probeWorkload)
	kubectl(t, "-n", "probes", "wait", "pod/api", "--for=condition=Ready", "--timeout=120s")
	podIP := strings.TrimSpace(kubectl(t, "-n", "probes", "get", "pod", "api", "-o", "jsonpath={.status.podIP}"))

	kubectl(t, "apply", "-k", "deploy/kustomize")
	kubectl(t, "-n", "kdrop", "rollout", "status", "daemonset/kdrop", "--timeout=180s")
	tail := startTail(t, kubeconfig, "-n", "probes")
	dir := t.TempDir()
	file, ready := filepath.Join(dir, "probes.jsonl.gz"), filepath.Join(dir, "ready")
	rec := exec.Command(kdropBin, "record", "--from", "tail", "--kubeconfig", kubeconfig, "-n", "probes", "-o", file, "--ready-file", ready)
	var recErr bytes.Buffer
	var mu sync.Mutex
	rec.Stderr = &lockedWriter{mu: &mu, w: &recErr}
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if rec.ProcessState == nil {
			rec.Process.Kill()
			rec.Wait()
		}
	})
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			t.Fatalf("kdrop record --from tail not ready in 60s:\n%s", recErr.String())
		}
	}
	// The table, as an operator reads it.
	table, err := exec.Command(kdropBin, "tail", "--kubeconfig", kubeconfig, "-n", "probes", "--duration", "15s").CombinedOutput()
	if err != nil {
		t.Fatalf("kdrop tail: %v\n%s", err, table)
	}
	mustContain(t, "kdrop tail's table", string(table), "liveness probe of probes/api on :8081 got NO_SOCKET")
	if strings.Contains(string(table), "on :8080 got") {
		t.Errorf("a probe on :8080, which works, is named in kdrop tail's table:\n%s", table)
	}

	// Every NO_SOCKET drop the kubelet's connects to :8081 got is marked
	// as the liveness probe; nothing else is.
	const want = 10
	var probes, drops uint64
	check := func(evs []event) bool {
		probes, drops = 0, 0
		for _, e := range evs {
			if e.Type != "drop" && e.Type != "unreach" && e.Type != "overflow" {
				continue
			}
			p := probeOf(t, e.raw)
			if e.Dst == podIP && e.Dport == 8081 && e.Reason == "NO_SOCKET" {
				drops += e.Count
			}
			if p == nil {
				continue
			}
			if e.Dst != podIP || e.Dport != 8081 || e.Reason != "NO_SOCKET" || p.Kinds != k8s.ProbeLiveness || p.Port != 8081 ||
				p.Handler != k8s.ProbeTCP || p.Container != "api" || e.DstK8s == nil || e.DstK8s.Namespace != "probes" || e.DstK8s.Name != "api" {
				t.Errorf("probe marked on a line that is not the liveness probe's drop: %s", e.raw)
			}
			probes += e.Count
		}
		return probes >= want
	}
	tail.waitFor(t, 0, 90*time.Second, "10 liveness probe drops", check)
	if probes != drops {
		t.Errorf("%d NO_SOCKET drops on %s:8081, %d of them marked as the liveness probe; all are the kubelet's:\n%s", drops, podIP, probes, tail.tailLog(30))
	}
	fmtE2E("probe: %d NO_SOCKET drops of the liveness probe on :8081 at kdrop tail, all marked", probes)

	rec.Process.Signal(os.Interrupt)
	if err := rec.Wait(); err != nil {
		t.Fatalf("kdrop record: %v\n%s", err, recErr.String())
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	inc, err := report.Read(f)
	if err != nil {
		t.Fatal(err)
	}
	fd := finding(t, inc, "probe")
	mustContain(t, "the probe finding", fd.Title+"\n"+fd.Detail+"\n"+fd.Fix,
		"liveness probe of pod probes/api on :8081 got NO_SOCKET", "tcpSocket", "container api", "the probe's port is 8081", "startupProbe")
	if fd.Severity != report.SevCritical || fd.Count == 0 {
		t.Errorf("probe finding: severity %s, count %d", fd.Severity, fd.Count)
	}
	fmtE2E("probe: report finding %q over %d packets", fd.Title, fd.Count)
}

// probeOf decodes a line's probe object.
func probeOf(t *testing.T, raw string) *k8s.Probe {
	var d line.Decoder
	var l line.Line
	if err := d.Decode([]byte(raw), &l); err != nil {
		t.Fatalf("decoding %s: %v", raw, err)
	}
	return l.Event.Probe
}

func fmtE2E(format string, args ...any) {
	os.Stdout.WriteString("KDROP-E2E " + strings.TrimSpace(fmt.Sprintf(format, args...)) + "\n")
}
