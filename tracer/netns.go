package tracer

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// listNetns finds every network namespace by inode: those of processes and
// those bind-mounted by `ip netns` or CNI plugins, which may have no process.
func listNetns() map[uint32]string {
	out := map[uint32]string{}
	var paths []string
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		m, _ := filepath.Glob(dir + "/*")
		paths = append(paths, m...)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	paths = append(paths, procs...)
	for _, p := range paths {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil {
			continue
		}
		if _, ok := out[uint32(st.Ino)]; !ok {
			out[uint32(st.Ino)] = p
		}
	}
	return out
}

// inNetns runs fn on a thread inside the namespace at path. Files and
// sockets fn opens stay bound to that namespace.
func inNetns(path string, fn func() error) error {
	nsf, err := os.Open(path)
	if err != nil {
		return err
	}
	defer nsf.Close()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", path, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// This thread is in the wrong namespace: leave it locked so the
		// runtime discards it instead of reusing it.
		return fmt.Errorf("setns back: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// somaxconns caches net.core.somaxconn per network namespace: an overflow's
// queue limit is min(the server's backlog, somaxconn), and which of the two
// it is tells the operator what to fix.
type somaxconns struct {
	mu       sync.Mutex
	paths    map[uint32]string
	scanned  time.Time
	values   map[uint32]uint32
	readTime map[uint32]time.Time
}

func newSomaxconns() *somaxconns {
	return &somaxconns{values: map[uint32]uint32{}, readTime: map[uint32]time.Time{}}
}

// get returns the namespace's somaxconn, 0 when it cannot be read (the
// namespace is gone). Values are kept for 10 s.
func (s *somaxconns) get(ino uint32) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.readTime[ino]; ok && time.Since(t) < 10*time.Second {
		return s.values[ino]
	}
	path, ok := s.paths[ino]
	if !ok && time.Since(s.scanned) > time.Second {
		s.paths, s.scanned = listNetns(), time.Now()
		path, ok = s.paths[ino]
	}
	var v uint32
	if ok {
		_ = inNetns(path, func() error {
			b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
			if err == nil {
				n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
				v = uint32(n)
			}
			return err
		})
	}
	s.values[ino], s.readTime[ino] = v, time.Now()
	return v
}
