// Package e2e proves kdrop in a real cluster: the local single-node cluster
// of deploy/cluster (a real kubelet on containerd, a CNI bridge, kube-proxy),
// kdrop deployed from deploy/ as users deploy it, and the incidents kdrop
// exists for reproduced with real Deployments, Services and a client pod,
// read the way an operator reads them (kdrop tail, kubectl logs, kdrop
// report).
//
// TestMain brings the cluster up (deploy/cluster/cluster.sh up) unless one
// is already up, and takes it down at the end if it brought it up, also
// when a test fails. KDROP_E2E_KEEP=1 leaves it running for a look around.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	repo       string // the repository's root
	work       string // binaries and images built for this run
	kdropBin   string
	kubectlBin string
	helmBin    string
	kubeconfig string
	node       string // the cluster's one node
	clusterDir string // cluster.sh's state dir (logs/ holds the components' logs)
)

const (
	agentImage   = "kdrop:v0.1.0" // what deploy/ names
	testappImage = "kdrop-testapp:e2e"
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: needs root: it runs a kubelet, containerd and kdrop's BPF programs (sudo make test-cluster)")
		return 1
	}
	var err error
	if repo, err = filepath.Abs("../.."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cache := filepath.Join(repo, ".cache")
	bins := os.Getenv("KDROP_KUBE_BIN")
	if bins == "" {
		bins = filepath.Join(cache, "kube", "bin")
	}
	kubectlBin = filepath.Join(bins, "kubectl")
	helmBin = os.Getenv("KDROP_HELM")
	if helmBin == "" {
		helmBin = filepath.Join(cache, "bin", "helm")
	}
	for _, b := range []string{kubectlBin, helmBin} {
		if _, err := os.Stat(b); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s is missing: run `make kube-bins helm` first\n", b)
			return 1
		}
	}
	work = filepath.Join(cache, "e2e")
	if err := os.MkdirAll(work, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := buildImages(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}

	// An interrupt (Ctrl-C, or go test's own timeout) still takes the
	// cluster down: cluster.sh down runs after m.Run, or here.
	ourCluster := !clusterUp()
	down := func() {
		if ourCluster && os.Getenv("KDROP_E2E_KEEP") == "" {
			if out, err := sh("deploy/cluster/cluster.sh", "down"); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: cluster down: %v\n%s", err, out)
			}
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "e2e: interrupted: taking the cluster down")
		down()
		os.Exit(130)
	}()
	start := time.Now()
	if ourCluster {
		out, err := sh("deploy/cluster/cluster.sh", "up")
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: cluster up: %v\n%s", err, out)
			down()
			return 1
		}
	}
	fmt.Printf("KDROP-E2E cluster up in %.1fs (already up: %v)\n", time.Since(start).Seconds(), !ourCluster)
	code := func() int {
		if err := readClusterEnv(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		for _, img := range []string{"kdrop-image.tar", "testapp-image.tar"} {
			if out, err := sh("deploy/cluster/cluster.sh", "import", filepath.Join(work, img)); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: importing %s: %v\n%s", img, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	down()
	return code
}

// sh runs a command in the repository's root, returning its combined output.
func sh(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = repo
	return cmd.CombinedOutput()
}

func clusterUp() bool {
	out, err := sh("deploy/cluster/cluster.sh", "status")
	return err == nil && bytes.Contains(out, []byte("Ready"))
}

// readClusterEnv takes the cluster's kubeconfig and node from cluster.sh env.
func readClusterEnv() error {
	out, err := sh("deploy/cluster/cluster.sh", "env")
	if err != nil {
		return fmt.Errorf("cluster.sh env: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "KUBECONFIG":
			kubeconfig = v
		case "KDROP_CLUSTER_NODE":
			node = v
		case "KDROP_CLUSTER_HOME":
			clusterDir = v
		}
	}
	if kubeconfig == "" || node == "" {
		return fmt.Errorf("cluster.sh env gave no KUBECONFIG or KDROP_CLUSTER_NODE:\n%s", out)
	}
	return nil
}

// buildImages builds kdrop as `make image` does, tagged as deploy/ names
// it, and the test workload's image.
func buildImages() error {
	kdropBin = filepath.Join(work, "kdrop")
	steps := [][]string{
		{"go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v0.1.0", "-o", kdropBin, "./cmd/kdrop"},
		{"go", "run", "./cmd/mkimage", "-binary", kdropBin, "-tag", agentImage, "-out", filepath.Join(work, "kdrop-image.tar")},
		{"go", "build", "-trimpath", "-o", filepath.Join(work, "testapp"), "./deploy/e2e/testapp"},
		{"go", "run", "./cmd/mkimage", "-binary=", "-title", "kdrop-testapp", "-file", filepath.Join(work, "testapp") + "=/testapp",
			"-entrypoint", "/testapp", "-cmd", "sleep", "-tag", testappImage, "-out", filepath.Join(work, "testapp-image.tar")},
	}
	for _, s := range steps {
		cmd := exec.Command(s[0], s[1:]...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// kubectl runs kubectl against the cluster and fails the test if it fails.
func kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func kubectlErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectlBin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Dir = repo
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// applyYAML applies manifests given inline.
func applyYAML(t testing.TB, y string) {
	t.Helper()
	cmd := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(y)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, y)
	}
}
