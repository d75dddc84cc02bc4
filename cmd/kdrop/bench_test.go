package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loadgen (run as a child, inside a namespace) sends UDP datagrams to
// 127.0.0.1:9999 at a fixed rate for a fixed time, or as fast as it can
// when the rate is 0, and prints how many it sent.
func loadgen(rate int, d time.Duration) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		panic(err)
	}
	sa := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 9999}
	msg := []byte("kdrop-bench")
	start := time.Now()
	sent := 0
	for time.Since(start) < d {
		for i := 0; i < 64; i++ {
			if unix.Sendto(fd, msg, 0, sa) == nil {
				sent++
			}
		}
		if rate > 0 { // keep to the schedule
			if ahead := time.Duration(float64(sent)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	fmt.Println(sent)
}

func init() {
	if r := os.Getenv("KDROP_LOADGEN_RATE"); r != "" {
		rate, _ := strconv.Atoi(r)
		d, _ := time.ParseDuration(os.Getenv("KDROP_LOADGEN_DURATION"))
		loadgen(rate, d)
		os.Exit(0)
	}
}

// BenchmarkWatchDropRate finds the highest rate of dropped packets that
// `kdrop watch -o json --rate-limit 0` reports one by one with nothing lost:
// every drop a JSON line, lines == the DROP rule's counter, no loss warning.
func BenchmarkWatchDropRate(b *testing.B) {
	ns := fmt.Sprintf("kdrop-bench-%d", rand.Intn(1e6))
	run := func(args ...string) string {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", ns)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
	run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP")
	self, _ := os.Executable()

	best := 0.0
	for _, rate := range []int{25000, 50000, 100000, 200000, 400000, 0} {
		ready := filepath.Join(b.TempDir(), "ready")
		kd := exec.Command(kdropBin, "watch", "-o", "json", "--rate-limit", "0", "--type", "drop", "--netns", "/run/netns/"+ns, "--ready-file", ready)
		stdout, _ := kd.StdoutPipe()
		var stderr bytes.Buffer
		kd.Stderr = &stderr
		if err := kd.Start(); err != nil {
			b.Fatal(err)
		}
		lines := make(chan int)
		go func() {
			n := 0
			r := bufio.NewReaderSize(stdout, 1<<20)
			for {
				l, err := r.ReadSlice('\n')
				if err != nil && err != bufio.ErrBufferFull {
					break
				}
				if bytes.Contains(l, []byte(`"count":1,`)) {
					n++
				}
			}
			lines <- n
		}()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(ready); err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("kdrop watch not ready: %s", stderr.String())
			}
		}
		gen := exec.Command("ip", "netns", "exec", ns, self)
		gen.Env = append(os.Environ(), "KDROP_LOADGEN_RATE="+strconv.Itoa(rate), "KDROP_LOADGEN_DURATION=2s")
		out, err := gen.Output()
		if err != nil {
			b.Fatalf("load generator: %v", err)
		}
		sent, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		time.Sleep(500 * time.Millisecond)
		kd.Process.Signal(syscall.SIGINT)
		got := <-lines
		kd.Wait()
		lost := strings.Contains(stderr.String(), "lost") || strings.Contains(stderr.String(), "missed") // either warning
		pps := float64(sent) / 2
		fmt.Printf("DROPRATE target=%d achieved=%.0f/s lines=%d sent=%d lost=%v\n", rate, pps, got, sent, lost)
		if got != sent || lost {
			break
		}
		best = pps
	}
	b.ReportMetric(best, "drops/s-no-loss")
	for i := 0; i < b.N; i++ {
	}
}
