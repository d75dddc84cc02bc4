package e2e

// What the operator reads: kdrop tail's lines, parsed, with the time each
// arrived; and the agent process, sampled for the figures.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ident is one end of an event as kdrop names it (src_k8s, dst_k8s, where_k8s).
type ident struct {
	Kind           string
	Namespace      string
	Name           string
	WorkloadKind   string `json:"workload_kind"`
	WorkloadName   string `json:"workload_name"`
	DeletedAgoMs   int64  `json:"deleted_ago_ms"`
	ReadyEndpoints *int   `json:"ready_endpoints"`
	Terminating    bool
}

func (i *ident) String() string {
	if i == nil {
		return "-"
	}
	return fmt.Sprintf("%s %s/%s (%s %s, deleted %d ms ago)", i.Kind, i.Namespace, i.Name, i.WorkloadKind, i.WorkloadName, i.DeletedAgoMs)
}

type event struct {
	Time      time.Time
	Type      string
	Node      string
	Message   string
	Count     uint64
	Summary   bool
	Proto     string
	Src, Dst  string
	Sport     int
	Dport     int
	Reason    string
	ICMP      string
	Queue     string
	QueueLen  int    `json:"queue_len"`
	QueueMax  int    `json:"queue_max"`
	Somaxconn int    `json:"somaxconn"`
	GapFrom   string `json:"gap_from"`
	SrcK8s    *ident `json:"src_k8s"`
	DstK8s    *ident `json:"dst_k8s"`
	WhereK8s  *ident `json:"where_k8s"`

	received time.Time
	raw      string
}

// stream is a running `kdrop tail -o json` (or any JSON-lines reader).
type stream struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	events []event
	stderr bytes.Buffer
	done   chan struct{}
}

// startTail runs kdrop tail as an operator would, with their token.
func startTail(t *testing.T, token string, args ...string) *stream {
	t.Helper()
	cmd := exec.Command(kdropBin, append([]string{"tail", "--kubeconfig", kubeconfig, "--token", token, "-o", "json"}, args...)...)
	s := &stream{cmd: cmd, done: make(chan struct{})}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &s.mu, w: &s.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = event{Type: "unparsed", Message: err.Error()}
			}
			e.received, e.raw = time.Now(), sc.Text()
			s.mu.Lock()
			s.events = append(s.events, e)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *stream) stop() {
	if s.cmd.ProcessState == nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
		}
		s.cmd.Wait()
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// since returns the events that arrived at index from or later.
func (s *stream) since(from int) []event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event(nil), s.events[min(from, len(s.events)):]...)
}

func (s *stream) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// tailLog is the last n lines, for a failure message.
func (s *stream) tailLog(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, e := range s.events[max(0, len(s.events)-n):] {
		b.WriteString(e.raw + "\n")
	}
	if s.stderr.Len() > 0 {
		b.WriteString("stderr:\n" + s.stderr.String())
	}
	return b.String()
}

// waitFor polls fn over the events since from until it is true.
func (s *stream) waitFor(t *testing.T, from int, timeout time.Duration, what string, fn func([]event) bool) []event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := s.since(from)
		if fn(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("kdrop tail did not show %s within %s; its last lines:\n%s", what, timeout, s.tailLog(40))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// sum adds up the counts of the events that match.
func sum(evs []event, match func(*event) bool) uint64 {
	var n uint64
	for i := range evs {
		if match(&evs[i]) {
			n += evs[i].Count
		}
	}
	return n
}

// latencies are, for event lines (not summaries), the time from the event
// in the kernel to its line reaching the tail's reader.
func latencies(evs []event) []time.Duration {
	var out []time.Duration
	for _, e := range evs {
		if (e.Type == "drop" || e.Type == "overflow" || e.Type == "unreach") && !e.Summary && !e.Time.IsZero() {
			out = append(out, e.received.Sub(e.Time))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(p*float64(len(d))))]
}

// agentSampler follows the agent process on the node (the test shares its
// PID namespace) for its RSS and CPU.
type agentSampler struct {
	pid      int
	mu       sync.Mutex
	maxRSSkB uint64
	cpu0     uint64 // clock ticks
	start    time.Time
	stop     chan struct{}
}

// findAgentPID finds the agent's process: /kdrop agent.
func findAgentPID() int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) >= 2 && filepath.Base(args[0]) == "kdrop" && args[1] == "agent" {
			pid, _ := strconv.Atoi(filepath.Base(d))
			return pid
		}
	}
	return 0
}

func cpuTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// fields after the command name (which may hold spaces): utime is 14th, stime 15th overall
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	s, _ := strconv.ParseUint(f[12], 10, 64)
	return u + s
}

func rssKB(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

func sampleAgent(t *testing.T) *agentSampler {
	t.Helper()
	pid := findAgentPID()
	if pid == 0 {
		t.Fatal("no kdrop agent process on the node")
	}
	a := &agentSampler{pid: pid, cpu0: cpuTicks(pid), start: time.Now(), stop: make(chan struct{})}
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-a.stop:
				return
			case <-tick.C:
			}
			r := rssKB(pid)
			a.mu.Lock()
			a.maxRSSkB = max(a.maxRSSkB, r)
			a.mu.Unlock()
		}
	}()
	return a
}

// done stops sampling and prints the scenario's figures.
func (a *agentSampler) done(scenario string) {
	close(a.stop)
	wall := time.Since(a.start)
	cpu := float64(cpuTicks(a.pid)-a.cpu0) / 100 // USER_HZ
	a.mu.Lock()
	defer a.mu.Unlock()
	fmt.Printf("KDROP-E2E agent %-26s max RSS %5.1f MiB, CPU %.2f s in %.1f s (%.1f%% of a core)\n",
		scenario, float64(a.maxRSSkB)/1024, cpu, wall.Seconds(), 100*cpu/wall.Seconds())
}
