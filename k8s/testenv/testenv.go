// Package testenv starts a real etcd and kube-apiserver on 127.0.0.1 for
// integration tests. There is no kubelet or controller-manager: pods stay
// Pending until a test sets their status through the status subresource, and
// no default service accounts are created.
//
// Binaries come from $KDROP_KUBE_BIN, else <repo root>/.cache/kube/bin (the
// repo root is the directory of the go.mod found walking up from the working
// directory); `make kube-bins` builds them. etcd comes from $KDROP_ETCD, else
// PATH, else /usr/bin/etcd.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// ServiceAccountIssuer is the apiserver's --service-account-issuer, and so
// the issuer and audience of tokens signed with Env.ServiceAccountKey.
const ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

const (
	makeHint     = "run `make kube-bins` (or point KDROP_KUBE_BIN at a directory with the v1.34 binaries)"
	startTries   = 3 // fresh ports each time, in case another process took one
	etcdTimeout  = 30 * time.Second
	readyTimeout = 90 * time.Second // ~2.5 s when idle; much more on a busy 2-core CI
	stopGrace    = 30 * time.Second // SIGTERM exit takes ~1.2 s here, but has been seen to take >15 s
	logLines     = 40
)

// Env is one etcd plus one kube-apiserver, private to a test.
type Env struct {
	dir    string // temp dir: PKI, logs, etcd data, kubeconfigs
	binDir string
	ca     *ca

	etcd      *proc
	etcdURL   string
	apiserver *proc
	args      []string // kube-apiserver's flags, reused by StartAPIServer
	url       string

	admin      *rest.Config
	kubeconfig string
	saKey      string
	files      atomic.Int32 // numbers the user kubeconfigs
}

// Start starts etcd and kube-apiserver and waits until /readyz answers. It
// registers a cleanup that stops both and deletes the temp dir, printing the
// end of their logs if the test failed.
func Start(t testing.TB) *Env {
	t.Helper()
	binDir, err := kubeBinDir()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	apiserverBin := filepath.Join(binDir, "kube-apiserver")
	if !isExecutable(apiserverBin) {
		t.Fatalf("testenv: %s is missing: %s", apiserverBin, makeHint)
	}
	etcdBin := findEtcd()
	if !isExecutable(etcdBin) {
		t.Fatalf("testenv: etcd not found (KDROP_ETCD=%q, PATH, /usr/bin/etcd): run `make kube-bins` (it installs Debian's etcd-server)", os.Getenv("KDROP_ETCD"))
	}

	removeStaleDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("kdrop-testenv-%d-", os.Getpid()))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	e := &Env{dir: dir, binDir: binDir}
	t.Cleanup(func() { e.cleanup(t) })

	if err := e.writePKI(); err != nil {
		t.Fatalf("testenv: PKI: %v", err)
	}
	if err := retryPorts(func() error { return e.startEtcd(etcdBin) }); err != nil {
		t.Fatalf("testenv: %v (log tail below)", err)
	}
	if err := retryPorts(func() error { return e.startFirstAPIServer(apiserverBin) }); err != nil {
		t.Fatalf("testenv: %v (log tail below)", err)
	}
	return e
}

func retryPorts(start func() error) error {
	var err error
	for range startTries {
		if err = start(); !errors.Is(err, errPortInUse) {
			return err
		}
	}
	return err
}

func (e *Env) cleanup(t testing.TB) {
	// No grace: the data is thrown away, and a graceful apiserver exit takes
	// seconds per test.
	e.apiserver.stop(0)
	e.etcd.stop(0)
	if t.Failed() {
		for _, name := range []string{"etcd", "kube-apiserver"} {
			if p := filepath.Join(e.dir, name+".log"); fileExists(p) {
				t.Logf("testenv: last %d lines of %s:\n%s", logLines, p, tail(p, logLines))
			}
		}
	}
	os.RemoveAll(e.dir)
}

// removeStaleDirs deletes the temp dirs (~120 MB each, mostly etcd's
// preallocated WAL) of test processes that died without running their
// cleanups; the children died with them (Pdeathsig). Each dir is named after
// the pid of the test process that made it.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "kdrop-testenv-*-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.Split(filepath.Base(d), "-")[2])
		if err == nil && pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// writePKI creates the CA, the apiserver's serving certificate, the admin
// client certificate and kubeconfig, and the service-account signing key.
func (e *Env) writePKI() error {
	var err error
	if e.ca, err = newCA(); err != nil {
		return err
	}
	servingCert, servingKey, err := e.ca.issue("kube-apiserver", nil, true)
	if err != nil {
		return err
	}
	saKey, saPub, err := newKeyPair()
	if err != nil {
		return err
	}
	e.saKey = e.path("sa.key")
	for name, data := range map[string][]byte{
		"ca.crt": e.ca.certPEM, "apiserver.crt": servingCert, "apiserver.key": servingKey,
		"sa.key": saKey, "sa.pub": saPub,
	} {
		if err := os.WriteFile(e.path(name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (e *Env) startEtcd(bin string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	// A failed try may have left a half-initialised data dir behind.
	data := e.path("etcd-data")
	os.RemoveAll(data)
	p, err := startProc("etcd", e.path("etcd.log"), bin,
		"--name", "default",
		"--data-dir", data,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
	)
	if err != nil {
		return err
	}
	e.etcd, e.etcdURL = p, client
	c := &http.Client{Timeout: time.Second}
	err = p.waitReady(etcdTimeout, func() bool {
		resp, err := c.Get(client + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return bytes.Contains(body, []byte(`"health":"true"`))
	})
	if err != nil {
		p.stop(0)
	}
	return err
}

func (e *Env) startFirstAPIServer(bin string) error {
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	e.url = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
	e.args = []string{
		"--etcd-servers", e.etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[0]),
		"--cert-dir", e.path("apiserver-certs"), // unused with the files below, but keeps it out of /var/run
		"--tls-cert-file", e.path("apiserver.crt"), "--tls-private-key-file", e.path("apiserver.key"),
		"--client-ca-file", e.path("ca.crt"),
		"--service-account-issuer", ServiceAccountIssuer,
		// The verifying key file takes public keys only, not PKCS#8.
		"--service-account-key-file", e.path("sa.pub"), "--service-account-signing-key-file", e.saKey,
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--authorization-mode", "RBAC",
		"--allow-privileged=true", // as real clusters run it: kdrop's DaemonSet is privileged
		// Nothing here maintains the kubernetes Service endpoints, and no
		// controller-manager creates the "default" service account that the
		// ServiceAccount admission plugin would demand of every pod.
		"--endpoint-reconciler-type", "none",
		"--disable-admission-plugins", "ServiceAccount",
	}
	certPEM, keyPEM, err := e.ca.issue("kdrop-test-admin", []string{"system:masters"}, false)
	if err != nil {
		return err
	}
	e.admin = e.restConfig(certPEM, keyPEM)
	e.kubeconfig = e.path("admin.kubeconfig")
	if err := writeKubeconfig(e.kubeconfig, e.url, e.ca.certPEM, certPEM, keyPEM); err != nil {
		return err
	}
	return e.runAPIServer()
}

func (e *Env) runAPIServer() error {
	p, err := startProc("kube-apiserver", e.path("kube-apiserver.log"), filepath.Join(e.binDir, "kube-apiserver"), e.args...)
	if err != nil {
		return err
	}
	e.apiserver = p
	c, err := rest.HTTPClientFor(e.admin)
	if err != nil {
		return err
	}
	c.Timeout = 2 * time.Second
	err = p.waitReady(readyTimeout, func() bool {
		resp, err := c.Get(e.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		p.stop(0)
	}
	return err
}

// StopAPIServer stops kube-apiserver only; etcd keeps the data.
func (e *Env) StopAPIServer(t testing.TB) {
	t.Helper()
	e.apiserver.stop(stopGrace)
}

// StartAPIServer restarts kube-apiserver on the same address, port and
// certificates, and waits for /readyz.
func (e *Env) StartAPIServer(t testing.TB) {
	t.Helper()
	select {
	case <-e.apiserver.done:
	default:
		t.Fatalf("testenv: StartAPIServer: kube-apiserver is still running")
	}
	if err := e.runAPIServer(); err != nil {
		t.Fatalf("testenv: restart: %v (log tail below)", err)
	}
}

// Config returns a fresh admin (system:masters) client config.
func (e *Env) Config() *rest.Config { return rest.CopyConfig(e.admin) }

// Kubeconfig returns the path of the admin kubeconfig (context "kdrop-test").
func (e *Env) Kubeconfig() string { return e.kubeconfig }

// URL returns the apiserver's https URL.
func (e *Env) URL() string { return e.url }

// ServiceAccountKey returns the path of the PEM (PKCS#8 ECDSA) key that the
// apiserver uses to sign and verify service-account tokens.
func (e *Env) ServiceAccountKey() string { return e.saKey }

// UserConfig returns a client config authenticating as user in groups, with a
// certificate signed by the env's client CA. The user has no rights until a
// test grants them with RBAC.
func (e *Env) UserConfig(user string, groups ...string) *rest.Config {
	certPEM, keyPEM := e.userCert(user, groups)
	return e.restConfig(certPEM, keyPEM)
}

// UserKubeconfig is UserConfig as a kubeconfig file (context "kdrop-test").
func (e *Env) UserKubeconfig(user string, groups ...string) string {
	certPEM, keyPEM := e.userCert(user, groups)
	path := e.path(fmt.Sprintf("user-%d.kubeconfig", e.files.Add(1)))
	if err := writeKubeconfig(path, e.url, e.ca.certPEM, certPEM, keyPEM); err != nil {
		panic(fmt.Sprintf("testenv: %v", err))
	}
	return path
}

func (e *Env) userCert(user string, groups []string) (certPEM, keyPEM []byte) {
	certPEM, keyPEM, err := e.ca.issue(user, groups, false)
	if err != nil {
		panic(fmt.Sprintf("testenv: client certificate for %q: %v", user, err)) // crypto/rand failing
	}
	return certPEM, keyPEM
}

func (e *Env) restConfig(certPEM, keyPEM []byte) *rest.Config {
	return &rest.Config{
		Host: e.url,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: e.ca.certPEM, CertData: certPEM, KeyData: keyPEM,
		},
		// No client-side throttling (a negative QPS turns it off): the
		// server is local and tests should not wait on client-go's 5 QPS.
		QPS:     -1,
		Timeout: 30 * time.Second,
	}
}

// Kubectl runs kubectl with the admin kubeconfig and returns its stdout; it
// fails the test if kubectl fails.
func (e *Env) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	bin := filepath.Join(e.binDir, "kubectl")
	if !isExecutable(bin) {
		t.Fatalf("testenv: %s is missing: %s", bin, makeHint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Its own cache dir: the default ~/.kube/cache is shared between envs
	// that may reuse a port.
	full := append([]string{"--kubeconfig", e.kubeconfig, "--cache-dir", e.path("kubectl-cache")}, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("testenv: kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// Bin is the path of one of the Kubernetes binaries (kubectl, ...); the
// test fails if it is missing.
func Bin(t testing.TB, name string) string {
	t.Helper()
	dir, err := kubeBinDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if !isExecutable(bin) {
		t.Fatalf("testenv: %s is missing: %s", bin, makeHint)
	}
	return bin
}

func (e *Env) path(name string) string { return filepath.Join(e.dir, name) }

func kubeBinDir() (string, error) {
	if d := os.Getenv("KDROP_KUBE_BIN"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(dir, "go.mod")) {
			return filepath.Join(dir, ".cache", "kube", "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory to find .cache/kube/bin: set KDROP_KUBE_BIN")
		}
		dir = parent
	}
}

func findEtcd() string {
	if p := os.Getenv("KDROP_ETCD"); p != "" {
		return p
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	if isExecutable("/usr/bin/etcd") {
		return "/usr/bin/etcd"
	}
	return ""
}

// freePorts returns n ports that were free a moment ago. All listeners stay
// open until every port is chosen, so the n differ.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}
