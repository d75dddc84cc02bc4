package k8s

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// netns inode → pod.
//
// A pod's containers share the network namespace of its sandbox, and every
// process of the pod sits in a cgroup under the pod's cgroup, which the
// kubelet names after the pod UID. So walking ProcRoot gives, per process,
// its netns inode (readlink <pid>/ns/net = "net:[N]") and a pod UID (from
// <pid>/cgroup), and the pod informer turns the UID into a pod. Reading
// /proc of the host (hostPID) is needed for this to see pods' processes.
//
// Lookups never walk /proc: they run on the tracer's ring-buffer reader, and
// a walk takes about 10 ms per 2,000 processes, long enough for a storm of
// events from new namespaces to fill the ring. A refresher goroutine (run)
// walks instead: at start; when the pod informer sees a pod of this node get
// its IPs (its sandbox, so its netns, exists by then, so its first events
// find it cached, and a reused inode's stale entry is replaced); and when a
// lookup asks, for an inode the last walk did not see, or one it tied to no
// pod more than netnsNegativeTTL (30 s) ago. Walks are at most one per
// netnsRescanInterval (1 s). A lookup that asks does not wait: it answers
// with what is known, and an inode no walk has looked for yet is Unresolved.
//
// Bounds. Each walk's result replaces the last whole (an immutable map
// swapped atomically), so the cache holds only the namespaces that had a
// process at the last walk, and at most netnsMaxEntries (16,384) of them:
// past that, a walk leaves the rest out (their events are not tied to their
// pod) and the log says so. Inodes that lookups asked for and a walk did not
// find (a netns with no process, or gone) are remembered as absent: looked
// for again after netnsNegativeTTL (30 s), still answered absent meanwhile,
// and forgotten 60 s after the last walk that looked, if no lookup asks.
// So such a netns costs a walk per 30 s, not one per second. At most netnsMaxAbsent (4,096) of them are remembered, and as many
// asked-for inodes awaiting a walk: past that, further ones are not, and
// their lookups keep asking (still at most a walk a second).

const (
	netnsRescanInterval = time.Second
	netnsNegativeTTL    = 30 * time.Second
	netnsMaxEntries     = 16384
	netnsMaxAbsent      = 4096
)

type netnsMap struct {
	host    uint32               // netns of pid 1 (else of pid 2, kthreadd), 0 if unreadable
	pods    map[uint32]string    // inode → pod UID ("" for a netns tied to no pod)
	absent  map[uint32]time.Time // inodes asked for and in no process, since when
	scanned time.Time
	pids    int  // processes examined
	full    bool // netnsMaxEntries reached: some namespaces were left out
}

type netnsCache struct {
	procRoot string
	log      *zap.Logger
	cur      atomic.Pointer[netnsMap]
	interval time.Duration
	kick     chan struct{} // one slot: a walk is asked for
	scans    atomic.Uint64 // walks done
	// maxEntries and maxAbsent are netnsMaxEntries and netnsMaxAbsent
	// (tests lower them).
	maxEntries, maxAbsent int

	mu      sync.Mutex
	pending map[uint32]struct{} // inodes asked for since the last walk
}

func newNetnsCache(procRoot string, log *zap.Logger) *netnsCache {
	c := &netnsCache{procRoot: procRoot, log: log, interval: netnsRescanInterval,
		kick: make(chan struct{}, 1), pending: map[uint32]struct{}{},
		maxEntries: netnsMaxEntries, maxAbsent: netnsMaxAbsent}
	c.cur.Store(&netnsMap{})
	return c
}

// lookup returns the pod UID for inode, whether the inode is the host's, and
// whether it is known (a walk saw it, or looked for it and found no
// process in it). It never walks /proc, and takes no lock on a hit.
func (c *netnsCache) lookup(inode uint32) (uid string, host, known bool) {
	m := c.cur.Load()
	if m.host != 0 && inode == m.host {
		return "", true, true
	}
	if uid, known = m.pods[inode]; known {
		if uid == "" && time.Since(m.scanned) >= netnsNegativeTTL {
			c.refresh() // a pod's first process may have joined it since
		}
		return uid, false, true
	}
	if since, absent := m.absent[inode]; absent {
		if time.Since(since) >= netnsNegativeTTL {
			c.ask(inode) // to look again; absent meanwhile
		}
		return "", false, true
	}
	c.ask(inode)
	return "", false, false
}

// ask asks for a walk that looks for inode, without waiting for it.
func (c *netnsCache) ask(inode uint32) {
	c.mu.Lock()
	if len(c.pending) < c.maxAbsent {
		c.pending[inode] = struct{}{}
	}
	c.mu.Unlock()
	c.refresh()
}

// refresh asks the refresher for a walk, without waiting for it.
func (c *netnsCache) refresh() {
	select {
	case c.kick <- struct{}{}:
	default: // one is asked for already
	}
}

// run is the refresher: a walk now, then one per request, at most one per
// interval, until ctx is done.
func (c *netnsCache) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		c.scan()
		t.Reset(c.interval)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
	}
}

// scan walks procRoot and publishes the result, with the inodes asked for
// that the walk did not find as absent from now, and those absent before
// and not asked for again kept up to twice the TTL.
func (c *netnsCache) scan() {
	c.mu.Lock()
	asked := c.pending
	c.pending = map[uint32]struct{}{}
	c.mu.Unlock()

	old := c.cur.Load()
	m := scanProc(c.procRoot, c.maxEntries)
	m.absent = map[uint32]time.Time{}
	missing := func(ino uint32) bool {
		_, found := m.pods[ino]
		return !found && ino != m.host && len(m.absent) < c.maxAbsent
	}
	for ino, since := range old.absent { // the older ones first: they are kept when full
		if _, again := asked[ino]; !again && m.scanned.Sub(since) < 2*netnsNegativeTTL && missing(ino) {
			m.absent[ino] = since
		}
	}
	for ino := range asked {
		if missing(ino) {
			m.absent[ino] = m.scanned
		}
	}
	if m.full && !old.full {
		c.log.Warn("more network namespaces on this node than the netns cache holds: events in the others are not tied to their pod",
			zap.Int("max", c.maxEntries))
	}
	c.cur.Store(m)
	c.scans.Add(1)
}

// scanProc maps every netns that a process under root is in to the pod UID
// found in that process's cgroup paths, up to max namespaces.
func scanProc(root string, max int) *netnsMap {
	m := &netnsMap{pods: map[uint32]string{}}
	m.host, _ = netnsInode(filepath.Join(root, "1", "ns", "net"))
	if m.host == 0 {
		// pid 1 may not be readable (more capabilities than us, or
		// yama); kernel threads, kthreadd first, live in the initial
		// netns.
		m.host, _ = netnsInode(filepath.Join(root, "2", "ns", "net"))
	}
	dir, err := os.Open(root)
	if err != nil {
		m.scanned = time.Now()
		return m
	}
	defer dir.Close()
	buf := make([]byte, 0, 4096)
	for {
		names, err := dir.Readdirnames(512)
		for _, name := range names {
			if name == "" || name[0] < '0' || name[0] > '9' {
				continue
			}
			if _, err := strconv.ParseUint(name, 10, 32); err != nil {
				continue
			}
			m.pids++
			ino, ok := netnsInode(filepath.Join(root, name, "ns", "net"))
			if !ok || ino == m.host {
				continue
			}
			uid, seen := m.pods[ino]
			if uid != "" {
				continue // already tied to a pod
			}
			if !seen && len(m.pods) >= max {
				m.full = true
				continue
			}
			if f, err := os.Open(filepath.Join(root, name, "cgroup")); err == nil {
				buf = buf[:0]
				buf, _ = readAll(f, buf)
				f.Close()
				uid = podUIDFromCgroup(buf)
			}
			m.pods[ino] = uid
		}
		if err != nil {
			break
		}
	}
	m.scanned = time.Now()
	return m
}

func readAll(f *os.File, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil || n == 0 {
			return buf, err
		}
	}
}

// netnsInode reads a "net:[N]" namespace link.
func netnsInode(path string) (uint32, bool) {
	target, err := os.Readlink(path)
	if err != nil {
		return 0, false
	}
	return parseNetnsLink(target)
}

func parseNetnsLink(s string) (uint32, bool) {
	if !strings.HasPrefix(s, "net:[") || !strings.HasSuffix(s, "]") {
		return 0, false
	}
	n, err := strconv.ParseUint(s[len("net:["):len(s)-1], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// podUIDFromCgroup finds the pod UID in the contents of /proc/<pid>/cgroup
// (v1 lines "N:controllers:/path", v2 line "0::/path"). It understands both
// kubelet cgroup drivers:
//
//	cgroupfs: .../kubepods/besteffort/pod<uid>/<container>   (burstable, or none for guaranteed)
//	systemd:  .../kubepods-besteffort-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//
// anywhere in the path (nested setups such as kind put kubepods under other
// cgroups; a cgroup namespace makes paths relative). The UID is returned with
// dashes. Static pods' UIDs are 32 hex digits without dashes.
func podUIDFromCgroup(data []byte) string {
	for line := range bytes.Lines(data) {
		line = bytes.TrimSuffix(line, []byte("\n"))
		// The path is after the second colon.
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := bytes.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		if uid := podUIDFromPath(string(line[i+1+j+1:])); uid != "" {
			return uid
		}
	}
	return ""
}

// podUIDFromPath finds the pod UID in one cgroup path.
func podUIDFromPath(path string) string {
	if !strings.Contains(path, "kubepods") {
		return ""
	}
	inKubepods := false
	for seg := range strings.SplitSeq(path, "/") {
		if strings.HasPrefix(seg, "kubepods") {
			inKubepods = true
			// systemd: kubepods-besteffort-pod<uid>.slice, kubepods-pod<uid>.slice
			if rest, ok := strings.CutSuffix(seg, ".slice"); ok {
				if i := strings.LastIndex(rest, "-pod"); i >= 0 {
					if uid, ok := normalizeUID(rest[i+len("-pod"):]); ok {
						return uid
					}
				}
			}
			continue
		}
		// cgroupfs: pod<uid> below a kubepods segment
		if inKubepods && strings.HasPrefix(seg, "pod") {
			if uid, ok := normalizeUID(seg[len("pod"):]); ok {
				return uid
			}
		}
	}
	return ""
}

// normalizeUID accepts a UUID with dashes or underscores (systemd escapes
// dashes), or 32 hex digits (a static pod's hash), and returns it with
// dashes.
func normalizeUID(s string) (string, bool) {
	switch len(s) {
	case 32:
		for i := 0; i < len(s); i++ {
			if !isHex(s[i]) {
				return "", false
			}
		}
		return s, true
	case 36:
		b := []byte(s)
		for i, c := range b {
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if c != '-' && c != '_' {
					return "", false
				}
				b[i] = '-'
				continue
			}
			if !isHex(c) {
				return "", false
			}
		}
		return string(b), true
	}
	return "", false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
