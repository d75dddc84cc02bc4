// Command testapp is the workload of kdrop's cluster tests: a server whose
// listen backlog is exact, and the clients that reproduce the incidents
// (a connection flood, a prober that keeps dialing stale pod IPs), plus the
// kernel counters of its own network namespace to compare kdrop against.
// It is static and needs nothing else in its image.
//
//	testapp serve [-port 8080] [-backlog 128] [-accept=false]
//	testapp flood -n 300 IP:PORT      # non-blocking connects, held open
//	testapp probe [-every 300ms] [-timeout 2s] [-for 60s] [-until RESULT -times N] IP:PORT...
//	testapp dial [-n 5] [-timeout 2s] IP:PORT
//	testapp counters                  # this netns's TcpExt/Icmp counters, JSON
//	testapp pkill probe               # end the other testapp processes running that command
//	testapp sleep
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testapp serve|flood|probe|dial|counters|sleep [flags]")
		os.Exit(2)
	}
	// As PID 1 nothing else ends it on SIGTERM: exit at once, like a
	// server without a preStop hook or graceful shutdown.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; os.Exit(0) }()

	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var err error
	switch cmd {
	case "serve":
		port := fs.Int("port", 8080, "TCP port")
		backlog := fs.Int("backlog", 128, "listen() backlog (the kernel caps it at net.core.somaxconn)")
		accept := fs.Bool("accept", true, "accept connections; false leaves them in the accept queue")
		fs.Parse(args)
		err = serve(*port, *backlog, *accept)
	case "flood":
		n := fs.Int("n", 300, "connections to open at once")
		total := fs.Duration("for", 0, "then keep opening one more every -every for this long")
		every := fs.Duration("every", 20*time.Millisecond, "see -for")
		fs.Parse(args)
		err = flood(fs.Arg(0), *n, *total, *every)
	case "probe":
		every := fs.Duration("every", 300*time.Millisecond, "time between dials to each address")
		timeout := fs.Duration("timeout", 2*time.Second, "dial timeout")
		total := fs.Duration("for", time.Minute, "how long to probe at most")
		until := fs.String("until", "", "stop dialing an address once a dial ended in this result (e.g. EHOSTUNREACH) -times times")
		times := fs.Int("times", 1, "see -until")
		read := fs.Bool("read", false, "read the server's reply until it closes before closing: a clean exchange, no drops at teardown")
		fs.Parse(args)
		err = probe(fs.Args(), *every, *timeout, *total, *until, *times, *read)
	case "dial":
		n := fs.Int("n", 5, "dials")
		timeout := fs.Duration("timeout", 2*time.Second, "dial timeout")
		fs.Parse(args)
		err = dialN(fs.Arg(0), *n, *timeout)
	case "counters":
		err = counters()
	case "pkill":
		err = pkill(fs, args)
	case "sleep":
		select {}
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}

// serve listens with socket/bind/listen so the backlog is exactly the one
// asked for (Go's net package would use somaxconn).
func serve(port, backlog int, accept bool) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port}); err != nil {
		return fmt.Errorf("bind :%d: %w", port, err)
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		return err
	}
	fmt.Printf("listening on :%d backlog %d accept %v\n", port, backlog, accept)
	if !accept {
		select {}
	}
	for {
		nfd, _, err := syscall.Accept(fd)
		if err != nil {
			continue
		}
		syscall.Write(nfd, []byte("ok\n"))
		syscall.Close(nfd)
	}
}

func sockaddr(s string) (*syscall.SockaddrInet4, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("%q: want IPv4:PORT", s)
	}
	return &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
}

// flood opens n connections without waiting for any, faster than a server
// that never accepts can take them, then one more every interval for total
// (a client that keeps coming), and holds them all while the kernel
// retries.
func flood(addr string, n int, total, every time.Duration) error {
	sa, err := sockaddr(addr)
	if err != nil {
		return err
	}
	var fds []int
	open := func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("socket %d: %w", len(fds), err)
		}
		if err := syscall.Connect(fd, sa); err != nil && err != syscall.EINPROGRESS {
			return fmt.Errorf("connect %d: %w", len(fds), err)
		}
		fds = append(fds, fd)
		return nil
	}
	for i := 0; i < n; i++ {
		if err := open(); err != nil {
			return err
		}
	}
	for end := time.Now().Add(total); time.Now().Before(end); time.Sleep(every) {
		if err := open(); err != nil {
			return err
		}
	}
	time.Sleep(3 * time.Second)
	fmt.Printf(`{"opened":%d}`+"\n", len(fds))
	return nil
}

// result names what a dial ended in, the way an operator reads it.
func result(err error) string {
	var errno syscall.Errno
	switch {
	case err == nil:
		return "connected"
	case errors.As(err, &errno):
		switch errno {
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case syscall.EHOSTUNREACH:
			return "EHOSTUNREACH"
		case syscall.ENETUNREACH:
			return "ENETUNREACH"
		}
		return errno.Error()
	case os.IsTimeout(err):
		return "timeout"
	}
	return err.Error()
}

// probe dials every address every interval, as a client that still holds
// old endpoints does, one JSON line per dial.
func probe(addrs []string, every, timeout, total time.Duration, until string, times int, read bool) error {
	if len(addrs) == 0 {
		return fmt.Errorf("probe: no IP:PORT given")
	}
	out := make(chan string, 64)
	end := time.Now().Add(total)
	for _, a := range addrs {
		go func(a string) {
			for hits := 0; time.Now().Before(end) && (until == "" || hits < times); {
				start := time.Now()
				c, err := net.DialTimeout("tcp4", a, timeout)
				if c != nil {
					if read {
						c.SetReadDeadline(time.Now().Add(timeout))
						io.Copy(io.Discard, c)
					}
					c.Close()
				}
				if result(err) == until {
					hits++
				}
				out <- fmt.Sprintf(`{"time":%q,"addr":%q,"result":%q,"ms":%d}`, start.UTC().Format(time.RFC3339Nano), a, result(err), time.Since(start).Milliseconds())
				time.Sleep(time.Until(start.Add(every)))
			}
			out <- ""
		}(a)
	}
	w := bufio.NewWriter(os.Stdout)
	for left := len(addrs); left > 0; {
		l := <-out
		if l == "" {
			left--
			continue
		}
		w.WriteString(l + "\n")
		w.Flush()
	}
	return nil
}

func dialN(addr string, n int, timeout time.Duration) error {
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp4", addr, timeout)
		if c != nil {
			c.Close()
		}
		counts[result(err)]++
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.Marshal(counts)
	fmt.Println(string(b))
	return nil
}

// counters prints the TcpExt and Icmp counters of this network namespace
// (the kernel's, as nstat shows them) as one JSON object.
func counters() error {
	out := map[string]uint64{}
	for _, f := range []string{"/proc/net/netstat", "/proc/net/snmp"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 {
				continue
			}
			prefix := strings.TrimSuffix(names[0], ":")
			for j := 1; j < len(names); j++ {
				if v, err := strconv.ParseUint(values[j], 10, 64); err == nil {
					out[prefix+names[j]] = v
				}
			}
		}
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	return nil
}

// pkill ends this pod's other testapp processes running a command: a
// kubectl exec that is killed leaves its process running in the pod.
func pkill(fs *flag.FlagSet, args []string) error {
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("pkill COMMAND")
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		b, err := os.ReadFile(d + "/cmdline")
		if err != nil || pid == os.Getpid() {
			continue
		}
		argv := strings.Split(string(b), "\x00")
		if len(argv) > 1 && filepath.Base(argv[0]) == "testapp" && argv[1] == fs.Arg(0) {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	return nil
}
