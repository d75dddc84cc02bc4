package k8s

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
// The result is cached as an immutable map swapped atomically. An unknown
// inode triggers a rescan, at most once per netnsRescanInterval; an inode
// that a scan found but could not tie to a pod triggers one only when that
// result is older than netnsNegativeTTL. Concurrent lookups never wait for a
// scan: a lookup that finds one running answers from the cache.

const (
	netnsRescanInterval = time.Second
	netnsNegativeTTL    = 30 * time.Second
)

type netnsMap struct {
	host    uint32            // netns of pid 1 (else of pid 2, kthreadd), 0 if unreadable
	pods    map[uint32]string // inode → pod UID ("" for a netns tied to no pod)
	scanned time.Time
	pids    int // processes examined
}

type netnsCache struct {
	procRoot string
	cur      atomic.Pointer[netnsMap]
	scanMu   sync.Mutex // held during a scan; lookups only TryLock it
	lastScan atomic.Int64
	interval time.Duration
}

func newNetnsCache(procRoot string) *netnsCache {
	c := &netnsCache{procRoot: procRoot, interval: netnsRescanInterval}
	c.cur.Store(&netnsMap{})
	return c
}

// lookup returns the pod UID for inode, whether the inode is the host's, and
// whether it is known at all (a scan saw it).
func (c *netnsCache) lookup(inode uint32) (uid string, host, known bool) {
	m := c.cur.Load()
	if m.host != 0 && inode == m.host {
		return "", true, true
	}
	uid, known = m.pods[inode]
	if known && (uid != "" || time.Since(m.scanned) < netnsNegativeTTL) {
		return uid, false, true
	}
	if !c.rescan(false) {
		return uid, false, known
	}
	m = c.cur.Load()
	if m.host != 0 && inode == m.host {
		return "", true, true
	}
	uid, known = m.pods[inode]
	return uid, false, known
}

// rescan walks procRoot unless one ran less than interval ago (force skips
// that check) or one is running. It reports whether it scanned.
func (c *netnsCache) rescan(force bool) bool {
	if !force && time.Since(time.Unix(0, c.lastScan.Load())) < c.interval {
		return false
	}
	if !c.scanMu.TryLock() {
		return false
	}
	defer c.scanMu.Unlock()
	if !force && time.Since(time.Unix(0, c.lastScan.Load())) < c.interval {
		return false
	}
	m := scanProc(c.procRoot)
	c.cur.Store(m)
	c.lastScan.Store(m.scanned.UnixNano())
	return true
}

// scanProc maps every netns that a process under root is in to the pod UID
// found in that process's cgroup paths.
func scanProc(root string) *netnsMap {
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
			if uid := m.pods[ino]; uid != "" {
				continue // already tied to a pod
			}
			uid := ""
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
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
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
