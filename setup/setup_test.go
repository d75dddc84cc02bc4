// Package setup tests what the Makefile's targets install: building and
// running kdrop needs only Go; each test target installs the Debian
// packages it uses and no others.
package setup

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The test stack that building and running must never install.
var testStack = []string{"qemu-system-x86", "chromium", "containerd", "runc", "etcd-server", "prometheus",
	"containernetworking-plugins", "busybox-static", "clang-16"}

// clone copies the Makefile into a fresh directory under /tmp, as a clone
// there would have it (the recipes are all that make sees before they run).
func clone(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "kdrop-setup-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Makefile"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// aptPackages is every package the recipes `make -n target` prints would
// check for or install: the lists of apt_need, and any apt-get install.
func aptPackages(t *testing.T, dir, target string) []string {
	t.Helper()
	out, err := exec.Command("make", "-n", "-C", dir, target).CombinedOutput()
	if err != nil {
		t.Fatalf("make -n %s: %v\n%s", target, err, out)
	}
	var pkgs []string
	for _, m := range regexp.MustCompile(`for p in ([^;]*); do dpkg -s|apt-get install (?:-\S+ )*([^;&|>]*)`).FindAllStringSubmatch(string(out), -1) {
		for _, p := range strings.Fields(m[1] + " " + m[2]) {
			if !strings.HasPrefix(p, "$") && !slices.Contains(pkgs, p) {
				pkgs = append(pkgs, p)
			}
		}
	}
	if strings.Contains(string(out), "apt-get") && pkgs == nil {
		t.Fatalf("make -n %s runs apt-get, but for which packages is unclear:\n%s", target, out)
	}
	slices.Sort(pkgs)
	return pkgs
}

// What each target may install, from make's own dry run.
func TestTargetsInstallWhatTheyNeed(t *testing.T) {
	dir := clone(t)
	for _, target := range []string{"build", "install", "run", "check", "image", "helm", "kube-bins", "kube-router", "monitoring", "check-monitoring"} {
		if got := aptPackages(t, dir, target); len(got) > 0 {
			t.Errorf("make %s installs %v: it needs only Go", target, got)
		}
	}
	host := []string{"bpftool", "iproute2", "iptables", "kmod", "nftables", "util-linux"}
	for _, c := range []struct {
		target    string
		want      []string // exactly these
		forbidden []string // none of these
	}{
		{"test-host", host, testStack},
		{"test-fuzz", nil, testStack},
		{"kernels", append(slices.Clone(host), "busybox-static", "cpio", "qemu-system-x86", "xz-utils", "zstd"), []string{"chromium", "containerd", "etcd-server", "prometheus"}},
		{"test-kernels", append(slices.Clone(host), "busybox-static", "cpio", "qemu-system-x86", "xz-utils", "zstd"), []string{"chromium", "containerd", "etcd-server", "prometheus"}},
		{"check-generate", []string{"clang-16", "libbpf-dev", "llvm-16"}, []string{"qemu-system-x86", "chromium", "containerd", "etcd-server", "prometheus"}},
		{"test-k8s", append(slices.Clone(host), "chromium", "etcd-server", "ipset", "prometheus"), []string{"qemu-system-x86", "containerd", "runc"}},
		{"test-cluster", append(slices.Clone(host), "conntrack", "containerd", "containernetworking-plugins", "ipset", "runc"), []string{"qemu-system-x86", "chromium"}},
	} {
		got := aptPackages(t, dir, c.target)
		want := slices.Sorted(slices.Values(c.want))
		if c.want != nil && !slices.Equal(got, want) {
			t.Errorf("make %s installs %v, want %v", c.target, got, want)
		}
		for _, p := range c.forbidden {
			if slices.Contains(got, p) {
				t.Errorf("make %s installs %s, which it does not use", c.target, p)
			}
		}
	}
	// Everything any target installs is in make deps.
	all := aptPackages(t, dir, "deps")
	for _, target := range []string{"test-host", "test-kernels", "test-k8s", "test-cluster", "check-generate"} {
		for _, p := range aptPackages(t, dir, target) {
			if !slices.Contains(all, p) {
				t.Errorf("make %s installs %s, which make deps does not", target, p)
			}
		}
	}
}

// make build, install and run for real in a clone under /tmp, with apt-get
// and dpkg replaced by scripts (dpkg says nothing is installed, apt-get
// records what it is asked for) and Go by one that writes a stand-in
// bin/kdrop: apt-get is never called.
func TestRunInstallsNothing(t *testing.T) {
	dir := clone(t)
	shims := t.TempDir()
	aptLog := filepath.Join(shims, "apt.log")
	for name, script := range map[string]string{
		"apt-get":    "echo \"apt-get $*\" >>" + aptLog + "\n",
		"dpkg":       "exit 1\n",
		"mountpoint": "exit 0\n",
		"go": `case "$1" in build) ;; *) exit 1 ;; esac
while [ "$1" != -o ]; do shift; done
mkdir -p "$(dirname "$2")" && printf '#!/bin/sh\necho "kdrop $*"\n' >"$2" && chmod +x "$2"
`,
	} {
		if err := os.WriteFile(filepath.Join(shims, name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	make := func(args ...string) string {
		cmd := exec.Command("make", append([]string{"-C", dir, "GO=" + filepath.Join(shims, "go")}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+shims+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := make("run"); !strings.Contains(out, "kdrop watch") {
		t.Errorf("make run did not run kdrop watch:\n%s", out)
	}
	make("build", "install", "DESTDIR="+filepath.Join(dir, "root"))
	if _, err := os.Stat(filepath.Join(dir, "root/usr/local/bin/kubectl-kdrop")); err != nil {
		t.Errorf("make install: %v", err)
	}
	if b, err := os.ReadFile(aptLog); err == nil {
		t.Errorf("make run, build and install called apt-get on a machine with nothing installed:\n%s", b)
	}
	// The same shims do see what a test target asks for.
	make("deps-host")
	if b, _ := os.ReadFile(aptLog); !strings.Contains(string(b), "install -y -qq iproute2 iptables nftables bpftool kmod util-linux") {
		t.Errorf("make deps-host asked apt-get:\n%s\nwant the host test packages", b)
	}
}
