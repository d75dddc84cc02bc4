package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process (etcd or kube-apiserver) whose output goes to a
// log file.
type proc struct {
	name string
	log  string
	cmd  *exec.Cmd
	from int64         // log size before this run, to read only its own output
	done chan struct{} // closed once the process has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// errPortInUse says the process exited because a port it was given was
// taken between choosing it and binding it; a retry on fresh ports may work.
var errPortInUse = errors.New("port already in use")

func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child holds its own copy
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== testenv: %s %s\n", bin, strings.Join(args, " "))

	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// If the test binary dies without running its cleanups (a panic in
	// another goroutine, a -timeout, a SIGKILL) the children die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := spawn(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, from: st.Size(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// waitReady polls ready until it returns true. If the process exits first
// because of a port clash, the error wraps errPortInUse.
func (p *proc) waitReady(timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-p.done:
			if p.portInUse() {
				return fmt.Errorf("%s: %w", p.name, errPortInUse)
			}
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v", p.name, timeout)
		}
	}
	return nil
}

func (p *proc) portInUse() bool {
	b, err := os.ReadFile(p.log)
	return err == nil && int64(len(b)) >= p.from && strings.Contains(string(b[p.from:]), "address already in use")
}

// stop sends SIGTERM, then SIGKILL once grace has passed, and waits for the
// exit. A zero grace kills at once.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	sig := syscall.SIGTERM
	if grace == 0 {
		sig = syscall.SIGKILL
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Pdeathsig fires when the OS thread that forked the child exits, not when
// the process does (golang/go#27505). Go ends a thread whose goroutine exits
// while locked to it, as network-namespace helpers do, which would kill etcd
// or the apiserver in the middle of a test. So every child is forked from one
// goroutine that locks its thread and never returns.
var (
	spawnOnce sync.Once
	spawnReqs = make(chan spawnReq)
)

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		go func() {
			runtime.LockOSThread()
			for r := range spawnReqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error)
	spawnReqs <- spawnReq{cmd, errc}
	return <-errc
}

// tail returns the last n lines of a file, for failure reports.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
