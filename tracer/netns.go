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
// those bind-mounted anywhere (`ip netns` in /run/netns, CNI plugins in
// /var/run/netns, Docker in /var/run/docker/netns …), which may have no
// process. Mounts are read from kdrop's own mount table and from PID 1's
// (the node's, with hostPID; opened through its root). A namespace only a
// file descriptor keeps alive is not found.
func listNetns() map[uint32]string {
	out := map[uint32]string{}
	var paths []string
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		m, _ := filepath.Glob(dir + "/*")
		paths = append(paths, m...)
	}
	paths = append(paths, nsfsMounts("/proc/self", "")...)
	paths = append(paths, nsfsMounts("/proc/1", "/proc/1/root")...)
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

// nsfsMounts lists the network namespaces bind-mounted in proc's mount
// namespace (proc: "/proc/PID"), as paths under root. A mountinfo
// line (proc(5)): ID parent major:minor root mount-point options
// [optional…] - fstype source super-options; a network namespace's root
// is "net:[INODE]", its fstype nsfs; spaces in a path are written \040.
func nsfsMounts(proc, root string) []string {
	b, err := os.ReadFile(proc + "/mountinfo")
	if err != nil {
		return nil
	}
	return parseNsfsMounts(b, root)
}

// parseNsfsMounts reads a mountinfo table: the network namespaces' mount
// points, under root.
func parseNsfsMounts(b []byte, root string) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, " ") // only blanks are escaped: any other byte may be in a path
		if len(f) < 7 || !strings.HasPrefix(f[3], "net:[") {
			continue
		}
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" && f[i+1] == "nsfs" {
				out = append(out, root+unescapeMount(f[4]))
				break
			}
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 space, \011 tab,
// \012 newline, \134 backslash).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// NetnsPaths maps every network namespace inode kdrop can find to a path
// that opens it (/run/netns/*, /proc/PID/ns/net). A path may be stale by
// the time it is opened: check the inode of what it opens.
func NetnsPaths() map[uint32]string { return listNetns() }

// InNetns runs fn on a thread inside the network namespace at path (a
// socket fn opens stays in it), and moves the thread back.
func InNetns(path string, fn func() error) error { return inNetns(path, fn) }

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
// it is tells the operator what to fix. A value is kept for somaxconnTTL;
// entries older than that are dropped at each read of a new namespace, so
// the cache holds only namespaces that overflowed lately.
type somaxconns struct {
	mu      sync.Mutex
	paths   map[uint32]string
	scanned time.Time
	values  map[uint32]somaxconnValue
}

type somaxconnValue struct {
	v    uint32
	read time.Time
}

// Short, because a deleted namespace's inode number is soon reused by a new
// one, whose somaxconn may differ.
const somaxconnTTL = 2 * time.Second

func newSomaxconns() *somaxconns {
	return &somaxconns{values: map[uint32]somaxconnValue{}}
}

// cached returns the namespace's somaxconn if it was read lately; it never
// blocks on /proc.
func (s *somaxconns) cached(ino uint32) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.values[ino]
	if !ok || time.Since(c.read) >= somaxconnTTL {
		return 0, false
	}
	return c.v, true
}

// get returns the namespace's somaxconn, 0 when it cannot be read (the
// namespace is gone). A namespace not seen before may cost a walk of /proc
// (at most once a second): call it off the ring buffer's reader.
func (s *somaxconns) get(ino uint32) uint32 {
	if v, ok := s.cached(ino); ok {
		return v
	}
	s.mu.Lock()
	path, ok := s.paths[ino]
	rescan := !ok && time.Since(s.scanned) > time.Second
	if rescan {
		s.scanned = time.Now()
	}
	s.mu.Unlock()
	if rescan {
		paths := listNetns()
		s.mu.Lock()
		s.paths = paths
		s.mu.Unlock()
		path, ok = paths[ino]
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
	now := time.Now()
	s.mu.Lock()
	for k, c := range s.values {
		if now.Sub(c.read) >= somaxconnTTL {
			delete(s.values, k)
		}
	}
	s.values[ino] = somaxconnValue{v, now}
	s.mu.Unlock()
	return v
}
