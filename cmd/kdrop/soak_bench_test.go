package main

// `make bench`: the agent over a long run (KDROP_SOAK, default 30m). A scan
// of 1M distinct destinations and steady storms never stop; every 30 s the
// agent's RSS, its summaries and coarsened count are sampled. At the end
// the storm runs alone (the flow table must have emptied: its events are
// no longer coarsened) and the agent's kdrop_events_total must equal the
// DROP rule's counter.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kdrop/kdrop/k8s/testenv"
	"github.com/kdrop/kdrop/tracer/nstest"
)

// metricSum adds up every sample of the named metric family.
func metricSum(b *testing.B, base, name string) float64 {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		b.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, name+"{") || strings.HasPrefix(l, name+" ") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func rssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func BenchmarkAgentSoak(b *testing.B) {
	d := 30 * time.Minute
	if s := os.Getenv("KDROP_SOAK"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			b.Fatalf("KDROP_SOAK=%q: %v", s, err)
		}
	}
	env := testenv.Start(b)
	ns := nstest.New(b, "soak")
	ns.Sh(b, "iptables -A INPUT -p udp -j DROP")
	addr := fmt.Sprintf("127.0.0.1:%d", 20000+os.Getpid()%20000)
	agent := exec.Command(kdropBin, "agent", "--kubeconfig", env.Kubeconfig(), "--node", "soak", "--listen", addr,
		"--netns", "/run/netns/"+ns.Name, "--type", "drop")
	agent.Env = append(os.Environ(), "POD_NAMESPACE=kdrop")
	stdout, _ := agent.StdoutPipe()
	var stderr syncBuffer
	agent.Stderr = &stderr
	if err := agent.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { agent.Process.Kill(); agent.Wait() }()
	var summaries, coarseStorm, stormLines atomic.Int64
	go func() {
		r := bufio.NewReaderSize(stdout, 1<<20)
		for {
			l, err := r.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
			if bytes.Contains(l, []byte(`"summary":true`)) {
				summaries.Add(1)
			}
			if bytes.Contains(l, []byte(`"dport":7001,`)) && !bytes.Contains(l, []byte(`"summary":true`)) {
				stormLines.Add(1)
				if bytes.Contains(l, []byte(`"coarse"`)) {
					coarseStorm.Add(1)
				}
			}
		}
	}()
	base := "http://" + addr
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent not ready in 60s:\n%s", stderr.String())
		}
	}

	// 1M distinct destinations: 16 loopback addresses x 65,536 ports.
	scanDsts := make([]netip.AddrPort, 0, 1<<20)
	for a := 0; a < 16; a++ {
		ip := netip.AddrFrom4([4]byte{127, 0, 1, byte(a)})
		for p := 0; p < 1<<16; p++ {
			scanDsts = append(scanDsts, netip.AddrPortFrom(ip, uint16(p)))
		}
	}
	scan := ns.FloodTo(b, scanDsts)
	storm := ns.Flood(b, "127.0.0.1", []int{7001, 7002, 7003, 7004})
	start := time.Now()
	var rssMax float64
	lastSummaries := int64(0)
	lastCPU, lastEvents, lastAt := cpuSeconds(agent.Process.Pid), metricSum(b, base, "kdrop_events_total"), time.Now()
	for time.Since(start) < d {
		time.Sleep(30 * time.Second)
		rss := rssMiB(agent.Process.Pid)
		rssMax = max(rssMax, rss)
		sums := summaries.Load()
		cpu, events, now := cpuSeconds(agent.Process.Pid), metricSum(b, base, "kdrop_events_total"), time.Now()
		secs := now.Sub(lastAt).Seconds()
		rate := (events - lastEvents) / secs
		fmt.Printf("SOAK t=%s rss=%.1fMiB summaries=+%d coarsened=%.0f events=%.0f drops/s=%.0f agent-cpu=%.1f%%-of-a-core (%.2f%% per 100k drops/s)\n",
			time.Since(start).Round(time.Second), rss, sums-lastSummaries, metricSum(b, base, "kdrop_coarsened_total"), events,
			rate, 100*(cpu-lastCPU)/secs, 100*(cpu-lastCPU)/secs/max(rate/1e5, 1e-9))
		lastCPU, lastEvents, lastAt = cpu, events, now
		if sums == lastSummaries {
			b.Errorf("no summary line in the last 30 s while storms ran")
		}
		lastSummaries = sums
	}
	scanned := scan()
	// The scan is over: within a sweep the table is free again.
	time.Sleep(3 * time.Second)
	coarseBefore, linesBefore := coarseStorm.Load(), stormLines.Load()
	time.Sleep(5 * time.Second)
	stormed := storm()
	time.Sleep(2500 * time.Millisecond)
	out := ns.Sh(b, "iptables -L INPUT -v -x -n")
	var rule float64
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[2] == "DROP" {
			rule, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	events := metricSum(b, base, "kdrop_events_total")
	fmt.Printf("SOAK end after %s: scan %d datagrams, storms %d; rule %.0f, kdrop_events_total %.0f, exact=%v; RSS max %.1f MiB; storm lines after the scan %d (coarsened %d)\n",
		d, scanned, stormed, rule, events, rule == events, rssMax, stormLines.Load()-linesBefore, coarseStorm.Load()-coarseBefore)
	agent.Process.Signal(syscall.SIGTERM)
	if rule != events {
		b.Errorf("kdrop_events_total %.0f, rule counted %.0f", events, rule)
	}
	if rssMax > 100 {
		b.Errorf("agent RSS reached %.1f MiB (want < 100)", rssMax)
	}
	if coarseStorm.Load() != coarseBefore {
		b.Errorf("the storm was still coarsened after the scan stopped: the flow table stayed full")
	}
	for i := 0; i < b.N; i++ {
	}
}
