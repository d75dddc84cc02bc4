package e2e

// What the operator reads: kdrop tail's lines, parsed, with the time each
// arrived; and the agent process, sampled for the figures.

import (
	"bufio"
	"bytes"
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

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// ident is one end of an event as kdrop names it (src_k8s, dst_k8s, where_k8s).
type ident struct {
	Kind                       string
	Namespace, Name            string
	WorkloadKind, WorkloadName string
	DeletedAgoMs               int64
	ReadyEndpoints             *int // nil: not said
	Terminating                bool
}

// parseEvent reads a line with kdrop's one decoder (package line) into what
// the tests check.
func parseEvent(b []byte) (event, error) {
	var d line.Decoder
	var l line.Line
	if err := d.Decode(b, &l); err != nil {
		return event{}, err
	}
	e := event{Time: l.Time, Type: l.Type}
	switch l.Kind {
	case line.KindNotice:
		n := &l.Notice
		e.Node, e.Message = n.Node, n.Message
		if !n.GapFrom.IsZero() {
			e.GapFrom = n.GapFrom.Format(time.RFC3339Nano)
		}
	case line.KindEvent:
		ev := &l.Event
		e.Node, e.Count, e.Summary, e.Proto = ev.Node, ev.Count, ev.Summary, tracer.ProtoName(ev.Proto)
		if ev.Src.Addr().IsValid() {
			e.Src, e.Sport = ev.Src.Addr().String(), int(ev.Src.Port())
		}
		if ev.Dst.Addr().IsValid() {
			e.Dst, e.Dport = ev.Dst.Addr().String(), int(ev.Dst.Port())
		}
		switch ev.Type {
		case tracer.Drop:
			e.Reason, e.Rule = ev.Reason, ev.Rule
		case tracer.Unreachable:
			e.ICMP = ev.What()
		case tracer.ListenOverflow:
			e.Queue, e.QueueLen, e.QueueMax, e.Somaxconn = ev.Queue.String(), int(ev.QueueLen), int(ev.QueueMax), int(ev.Somaxconn)
		}
		e.SrcK8s, e.DstK8s, e.WhereK8s = identOf(ev.SrcK8s), identOf(ev.DstK8s), identOf(ev.WhereK8s)
	}
	return e, nil
}

func identOf(k *k8s.Endpoint) *ident {
	if k == nil {
		return nil
	}
	i := &ident{Kind: k.Kind, Namespace: k.Namespace, Name: k.Name, WorkloadKind: k.WorkloadKind, WorkloadName: k.WorkloadName,
		DeletedAgoMs: k.DeletedAgo.Milliseconds(), Terminating: k.Terminating}
	if k.Kind == k8s.KindService && k.ReadyEndpoints >= 0 {
		i.ReadyEndpoints = &k.ReadyEndpoints
	}
	return i
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
	QueueLen  int
	QueueMax  int
	Somaxconn int
	GapFrom   string
	SrcK8s    *ident
	DstK8s    *ident
	WhereK8s  *ident
	// Rule is the netfilter rule kdrop named for a NETFILTER_DROP, with
	// its Kubernetes meaning (rule.k8s).
	Rule *netfilter.Rule

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

// operatorKubeconfig writes a kubeconfig of the test cluster that
// authenticates with token (an operator's own credentials).
func operatorKubeconfig(t *testing.T, token string) string {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range kc.AuthInfos {
		*ai = clientcmdapi.AuthInfo{Token: token}
	}
	path := filepath.Join(t.TempDir(), "operator.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// startTail runs kdrop tail as an operator would, with their kubeconfig.
func startTail(t *testing.T, operator string, args ...string) *stream {
	t.Helper()
	cmd := exec.Command(kdropBin, append([]string{"tail", "--kubeconfig", operator, "-o", "json"}, args...)...)
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
			e, err := parseEvent(sc.Bytes())
			if err != nil {
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
