package k8s

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNetnsToPod walks the real /proc: processes in real network namespaces
// (unshare --net), moved into real cgroups whose paths name pods the way the
// kubelet does, resolve to pods that exist in the API server. It covers the
// cgroupfs layout in the cgroup v2 hierarchy and in a v1 controller
// hierarchy, and the systemd layout, as far as this machine's cgroup mounts
// allow (each layout needs its hierarchy mounted).
func TestNetnsToPod(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates cgroups and network namespaces (sudo make test)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("needs unshare (util-linux): apt-get install util-linux")
	}
	mounts := cgroupMounts(t)
	t.Logf("cgroup mounts: %v", mounts)

	it := startEnv(t)
	log, _ := testLogger(t)
	r := it.resolver(log, "")
	it.sync(r)
	it.namespace("netns")

	// One cgroup root per test run, under each hierarchy used; removed on
	// cleanup (processes first).
	tag := "kdrop-test-" + randHex(4)

	type layout struct {
		name      string
		hierarchy string // mount point
		path      func(uid string) string
	}
	var layouts []layout
	if m := mounts["cgroup2"]; m != "" {
		layouts = append(layouts, layout{"cgroupfs-v2", m, func(uid string) string {
			return filepath.Join(tag, "kubepods", "besteffort", "pod"+uid, randHex(32))
		}})
	}
	if m := mounts["pids"]; m != "" {
		layouts = append(layouts, layout{"cgroupfs-v1-pids", m, func(uid string) string {
			return filepath.Join(tag, "kubepods", "burstable", "pod"+uid, randHex(32))
		}})
	}
	systemd := mounts["name=systemd"]
	if systemd == "" {
		systemd = mounts["cgroup2"] // pure v2: systemd's layout lives in the unified tree
	}
	if systemd != "" {
		layouts = append(layouts, layout{"systemd", systemd, func(uid string) string {
			u := strings.ReplaceAll(uid, "-", "_")
			return filepath.Join(tag, "kubepods.slice", "kubepods-besteffort.slice",
				"kubepods-besteffort-pod"+u+".slice", "cri-containerd-"+randHex(32)+".scope")
		}})
	}
	if len(layouts) == 0 {
		t.Fatalf("no usable cgroup hierarchy in %v", mounts)
	}
	for _, l := range layouts {
		t.Cleanup(func() { removeCgroupTree(t, filepath.Join(l.hierarchy, tag)) })
	}

	type sandbox struct {
		layout string
		pod    string
		uid    string
		inode  uint32
	}
	var boxes []sandbox
	for i, l := range layouts {
		name := "sandbox-" + l.name
		p := it.pod(podSpec{ns: "netns", name: name, node: "node-a", ips: []string{"10.244.9." + strconv.Itoa(i+1)}, ready: true})
		uid := string(p.UID)
		pid, inode := startInNetns(t)
		dir := filepath.Join(l.hierarchy, l.path(uid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("%s: %v", l.name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			t.Fatalf("%s: moving pid %d into %s: %v", l.name, pid, dir, err)
		}
		cg, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
		t.Logf("%s: pod %s (uid %s), pid %d in netns %d, /proc/%d/cgroup:\n%s", l.name, name, uid, pid, inode, pid, cg)
		boxes = append(boxes, sandbox{l.name, name, uid, inode})
	}

	for _, b := range boxes {
		// The first lookup of an unknown inode asks for a walk of
		// /proc in the background and answers Unresolved; hence the
		// polling.
		eventually(t, 10*time.Second, func() string {
			ep := r.LookupNetns(b.inode)
			if ep.Kind != KindPod || ep.Namespace != "netns" || ep.Name != b.pod || ep.UID != b.uid || ep.Unresolved {
				return b.layout + ": got " + describe(ep)
			}
			return ""
		})
	}

	// The host's netns (pid 1's, or kthreadd's when pid 1 is not readable)
	// is the node.
	m := scanProc("/proc", netnsMaxEntries)
	if m.host == 0 {
		t.Fatal("no host netns found in /proc")
	}
	if ep := r.LookupNetns(m.host); ep.Kind != KindNode || ep.Name != "node-a" || ep.Node != "node-a" {
		t.Errorf("host netns %d: %s", m.host, describe(ep))
	}

	// A netns no pod's process is in: unknown, not a guess (once a walk
	// has looked for it).
	_, stray := startInNetns(t)
	eventually(t, 10*time.Second, func() string {
		if ep := r.LookupNetns(stray); ep.Kind != "" || ep.Unresolved {
			return fmt.Sprintf("stray netns %d: %s", stray, describe(ep))
		}
		return ""
	})
	if ep := r.LookupNetns(4294967295); ep.Kind != "" {
		t.Errorf("nonexistent netns: %s", describe(ep))
	}
	eventually(t, 10*time.Second, func() string {
		if ep := r.LookupNetns(4294967295); ep.Kind != "" || ep.Unresolved {
			return "nonexistent netns: " + describe(ep)
		}
		return ""
	})

	// A deleted pod's netns (its processes still up, as during teardown)
	// resolves to the pod, deleted.
	it.deletePod("netns", boxes[0].pod, 0)
	eventually(t, 10*time.Second, func() string {
		ep := r.LookupNetns(boxes[0].inode)
		if ep.Name != boxes[0].pod || ep.DeletedAgo <= 0 {
			return "got " + describe(ep)
		}
		return ""
	})
	st := r.Status()
	t.Logf("netns cache: %d namespaces", st.NetnsCached)
}

// TestFirstNetnsLookupDoesNotWalk: with 2,000 more processes on the
// machine, the first lookup of a new netns costs its caller (the tracer's
// ring-buffer reader) no walk of /proc; the refresher names it soon after.
func TestFirstNetnsLookupDoesNotWalk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces (sudo make test)")
	}
	spawnSleepers(t, 2000)
	r := newTestResolver(t, buildInput{})
	r.netns.scan()
	start := time.Now()
	m := scanProc("/proc", netnsMaxEntries)
	walk := time.Since(start)

	_, inode := startInNetns(t)
	start = time.Now()
	ep := r.LookupNetns(inode)
	first := time.Since(start)
	t.Logf("first lookup of a new netns: %v on the caller; a walk of %d processes: %v", first, m.pids, walk)
	if !ep.Unresolved || ep.Kind != "" {
		t.Errorf("first lookup, before any walk found it: %s, want unresolved", describe(ep))
	}
	if first > walk/10 {
		t.Errorf("first lookup took %v, a walk %v: did it walk?", first, walk)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.netns.run(ctx)
	eventually(t, 10*time.Second, func() string {
		if ep := r.LookupNetns(inode); ep.Unresolved {
			return "still unresolved: " + describe(ep)
		}
		return ""
	})
}

// spawnSleepers starts n sleeping processes, killed on cleanup.
func spawnSleepers(t *testing.T, n int) {
	t.Helper()
	cmds := make([]*exec.Cmd, 0, n)
	t.Cleanup(func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	})
	for range n {
		c := exec.Command("sleep", "600")
		if err := c.Start(); err != nil {
			t.Fatalf("starting sleeper %d of %d: %v", len(cmds)+1, n, err)
		}
		cmds = append(cmds, c)
	}
}

// startInNetns starts `unshare --net sleep 60` and returns its pid and netns
// inode once it is in its own netns; the process is killed on cleanup.
func startInNetns(t *testing.T) (int, uint32) {
	t.Helper()
	cmd := exec.Command("unshare", "--net", "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	self, ok := netnsInode("/proc/self/ns/net")
	if !ok {
		t.Fatal("cannot read /proc/self/ns/net")
	}
	pid := cmd.Process.Pid
	nsPath := filepath.Join("/proc", strconv.Itoa(pid), "ns", "net")
	var inode uint32
	eventually(t, 5*time.Second, func() string {
		comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
		inode, ok = netnsInode(nsPath)
		if !ok || inode == self || strings.TrimSpace(string(comm)) != "sleep" {
			return "process not yet in its own netns"
		}
		return ""
	})
	return pid, inode
}

// cgroupMounts maps "cgroup2" and each v1 controller or name= option to its
// mount point, from /proc/self/mountinfo.
func cgroupMounts(t *testing.T) map[string]string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(postFields) < 3 {
			continue
		}
		switch postFields[0] {
		case "cgroup2":
			if _, seen := out["cgroup2"]; !seen {
				out["cgroup2"] = fields[4]
			}
		case "cgroup":
			for _, opt := range strings.Split(postFields[2], ",") {
				if _, seen := out[opt]; !seen && opt != "rw" && opt != "ro" && !strings.HasPrefix(opt, "relatime") {
					out[opt] = fields[4]
				}
			}
		}
	}
	return out
}

// removeCgroupTree removes a cgroup directory tree, deepest first. Processes
// must be gone (their cleanups run before this one).
func removeCgroupTree(t *testing.T, root string) {
	var dirs []string
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for try := 0; try < 50; try++ { // a killed process leaves its cgroup a moment later
			if err = os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil && !os.IsNotExist(err) {
			t.Errorf("cgroup cleanup: %v", err)
		}
	}
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
