// The tests that need a kube-apiserver (k8s/testenv).

package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/kdrop/kdrop/k8s/testenv"
)

// TestServerSideDryRun validates every object of the kustomize build, its
// overlay and the Helm chart with the API server (kubectl apply
// --dry-run=server: schema, strict field validation, defaulting and
// admission), then applies the kustomize build for real and checks that the
// RBAC grants what the agent and a viewer need.
func TestServerSideDryRun(t *testing.T) {
	env := testenv.Start(t)
	dir := t.TempDir()
	kubectl := func(args ...string) (stdout string, err error) {
		out, err := runErr(kubectlBin(t), append([]string{"--kubeconfig", env.Kubeconfig()}, args...)...)
		return string(out), err
	}

	// The namespace for real first: namespaced objects in a dry run are
	// validated only if their namespace exists.
	objs := parse(t, kustomize(t, kustomizeDir))
	nsFile := writeObjects(t, filepath.Join(dir, "namespace.yaml"), find(t, objs, "Namespace", namespace))
	out := env.Kubectl(t, "apply", "-f", nsFile)
	if !strings.Contains(out, "namespace/kdrop created") {
		t.Fatalf("creating the namespace said %q", out)
	}

	// Real clusters run kube-apiserver with --allow-privileged=true (kubeadm,
	// kind, k3s, the managed ones); its default is false, and k8s/testenv
	// does not set it. Against such a server the privileged DaemonSet is
	// checked twice: the manifests as they are must fail with that policy
	// error and nothing else, and with privileged: false they must pass.
	allowPrivileged := probePrivileged(t, kubectl, namespace)
	if !allowPrivileged {
		t.Logf("NOTE: the test kube-apiserver runs without --allow-privileged=true; privileged: true is checked as the only error, and the rest with privileged: false")
	}

	// dryRun applies with --dry-run=server and checks that kubectl reports
	// each of objs; source is the kubectl arguments that name them.
	dryRun := func(t *testing.T, name string, objs map[string]object, source ...string) {
		t.Helper()
		args := append([]string{"apply", "--dry-run=server", "--validate=strict"}, source...)
		out, err := kubectl(args...)
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
		want := objs
		if !allowPrivileged && hasPrivileged(objs) {
			const policyErr = `The DaemonSet "kdrop" is invalid: spec.template.spec.containers[0].securityContext.privileged: Forbidden: disallowed by cluster policy`
			msg := ""
			if err != nil {
				msg = err.Error()
			}
			_, stderr, _ := strings.Cut(msg, "\n")
			if strings.TrimSpace(stderr) != policyErr {
				t.Errorf("kubectl %s: want only the cluster-policy error about privileged, got err %v", strings.Join(args, " "), err)
			}
			// The rest were accepted; then the DaemonSet without privileged.
			want = map[string]object{}
			for k, o := range objs {
				if o.kind() != "DaemonSet" {
					want[k] = o
				}
			}
			checkDryRunOutput(t, out, want)
			unpriv := withoutPrivileged(objs)
			f := writeObjects(t, filepath.Join(dir, name+"-unprivileged.yaml"), sortedObjects(unpriv)...)
			args = []string{"apply", "--dry-run=server", "--validate=strict", "-f", f}
			out, err = kubectl(args...)
			t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
			want = unpriv
		}
		if err != nil {
			t.Fatalf("%v", err)
		}
		checkDryRunOutput(t, out, want)
	}

	t.Run("kustomize", func(t *testing.T) {
		dryRun(t, "kustomize", objs, "-k", kustomizeDir)
	})
	t.Run("kustomize-capabilities", func(t *testing.T) {
		dryRun(t, "kustomize-capabilities", parse(t, kustomize(t, capabilitiesDir)), "-k", capabilitiesDir)
	})
	for _, c := range []struct {
		name string
		args []string
	}{
		{"helm", nil},
		{"helm-capabilities", []string{"--set", "securityContext.mode=capabilities"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			rendered := helmTemplate(t, c.args...)
			f := filepath.Join(dir, c.name+".yaml")
			if err := os.WriteFile(f, rendered, 0o644); err != nil {
				t.Fatal(err)
			}
			dryRun(t, c.name, parse(t, rendered), "-f", f)
		})
	}

	// The monitoring objects, the PrometheusRule against the operator's
	// own CRD (its schema rejects unknown or mistyped fields).
	t.Run("monitoring", func(t *testing.T) {
		env.Kubectl(t, "apply", "--server-side", "-f", prometheusRuleCRD(t))
		env.Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/prometheusrules.monitoring.coreos.com")
		dryRun(t, "kustomize-monitoring", parse(t, kustomize(t, monitoringDir)), "-k", monitoringDir)
		rendered := helmTemplate(t, monitoringValues...)
		f := filepath.Join(dir, "helm-monitoring.yaml")
		if err := os.WriteFile(f, rendered, 0o644); err != nil {
			t.Fatal(err)
		}
		dryRun(t, "helm-monitoring", parse(t, rendered), "-f", f)
	})

	// Dry runs leave nothing behind.
	if out := env.Kubectl(t, "get", "daemonsets,serviceaccounts,services,clusterroles,clusterrolebindings", "-A", "-o", "name"); strings.Contains(out, "kdrop") {
		t.Fatalf("the dry runs created objects:\n%s", out)
	}

	// For real, then ask the authorizer what the identities may do.
	t.Run("rbac", func(t *testing.T) {
		if allowPrivileged {
			env.Kubectl(t, "apply", "-k", kustomizeDir)
		} else {
			env.Kubectl(t, "apply", "-f", writeObjects(t, filepath.Join(dir, "apply.yaml"), sortedObjects(withoutPrivileged(objs))...))
		}
		// SubjectAccessReviews: what may each identity do?
		cs, err := kubernetes.NewForConfig(env.Config())
		if err != nil {
			t.Fatal(err)
		}
		type access struct {
			verb, group, resource, subresource, namespace, name string
		}
		canI := func(user string, groups []string, a access) bool {
			t.Helper()
			sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User: user, Groups: groups,
				ResourceAttributes: &authzv1.ResourceAttributes{
					Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource, Namespace: a.namespace, Name: a.name,
				},
			}}
			res, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("SubjectAccessReview: %v", err)
			}
			return res.Status.Allowed
		}

		agent := "system:serviceaccount:kdrop:kdrop"
		agentGroups := []string{"system:serviceaccounts", "system:serviceaccounts:kdrop", "system:authenticated"}
		for _, c := range []struct {
			access
			want bool
		}{
			{access{"list", "", "pods", "", "", ""}, true},
			{access{"watch", "", "services", "", "", ""}, true},
			{access{"list", "discovery.k8s.io", "endpointslices", "", "", ""}, true},
			{access{"watch", "apps", "replicasets", "", "", ""}, true},
			{access{"list", "batch", "jobs", "", "", ""}, true},
			{access{"watch", "", "namespaces", "", "", ""}, true},
			{access{"list", "networking.k8s.io", "networkpolicies", "", "", ""}, true},
			{access{"update", "networking.k8s.io", "networkpolicies", "", "shop", ""}, false},
			{access{"create", "authentication.k8s.io", "tokenreviews", "", "", ""}, true},
			{access{"create", "authorization.k8s.io", "subjectaccessreviews", "", "", ""}, false},
			{access{"create", "events.k8s.io", "events", "", "shop", ""}, true},
			{access{"patch", "events.k8s.io", "events", "", "shop", ""}, true},
			{access{"delete", "events.k8s.io", "events", "", "shop", ""}, false},
			{access{"update", "", "events", "", "shop", ""}, false},
			{access{"get", "", "secrets", "", "", ""}, false},
			{access{"list", "", "nodes", "", "", ""}, false},
			{access{"update", "", "pods", "", "", ""}, false},
			{access{"get", "", "pods", "proxy", namespace, ""}, false},
			{access{"create", "", "serviceaccounts", "token", namespace, "kdrop-stream"}, false},
		} {
			if got := canI(agent, agentGroups, c.access); got != c.want {
				t.Errorf("agent may %+v: %v, want %v", c.access, got, c.want)
			}
		}

		// alice is bound with a ClusterRoleBinding, bob with a RoleBinding
		// in kdrop, carol not at all. Both alice and bob may ask for stream
		// tokens of kdrop-stream and reach the agents; only alice (the
		// ClusterRoleBinding) reaches other pods; nobody gets tokens of
		// another account, the agent's included.
		env.Kubectl(t, "create", "clusterrolebinding", "kdrop-viewer-alice", "--clusterrole=kdrop-viewer", "--user=alice")
		env.Kubectl(t, "-n", namespace, "create", "rolebinding", "kdrop-viewer-bob", "--clusterrole=kdrop-viewer", "--user=bob")
		users := []string{"alice", "bob", "carol"}
		for _, c := range []struct {
			access
			want []bool // alice, bob, carol
		}{
			{access{"create", "", "serviceaccounts", "token", namespace, "kdrop-stream"}, []bool{true, true, false}},
			{access{"create", "", "serviceaccounts", "token", namespace, "kdrop"}, []bool{false, false, false}},
			{access{"create", "", "serviceaccounts", "token", namespace, ""}, []bool{false, false, false}},
			{access{"get", "", "serviceaccounts", "token", namespace, "kdrop-stream"}, []bool{false, false, false}},
			{access{"get", "", "pods", "proxy", namespace, ""}, []bool{true, true, false}},
			{access{"get", "", "pods", "proxy", "default", ""}, []bool{true, false, false}},
			{access{"list", "", "pods", "", namespace, ""}, []bool{true, true, false}},
			{access{"create", "", "pods", "proxy", namespace, ""}, []bool{false, false, false}},
		} {
			for i, u := range users {
				if got := canI(u, []string{"system:authenticated"}, c.access); got != c.want[i] {
					t.Errorf("%s may %+v: %v, want %v", u, c.access, got, c.want[i])
				}
			}
		}
	})
}

// checkDryRunOutput checks that kubectl's output names each object as created,
// configured or unchanged by a server dry run, and nothing else.
func checkDryRunOutput(t *testing.T, out string, objs map[string]object) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(objs) {
		t.Errorf("%d lines of output for %d objects", len(lines), len(objs))
	}
	for _, o := range objs {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(o.resourceName()) + ` (created|configured|unchanged) \(server dry run\)$`)
		if !re.MatchString(out) {
			t.Errorf("the dry run does not list %s as created, configured or unchanged", o.resourceName())
		}
	}
}

// probePrivileged reports whether the API server admits privileged
// containers (kube-apiserver --allow-privileged=true).
func probePrivileged(t *testing.T, kubectl func(...string) (string, error), ns string) bool {
	t.Helper()
	f := filepath.Join(t.TempDir(), "probe.yaml")
	probe := `apiVersion: v1
kind: Pod
metadata: {name: privileged-probe, namespace: ` + ns + `}
spec:
  containers:
  - {name: c, image: probe, securityContext: {privileged: true}}
`
	if err := os.WriteFile(f, []byte(probe), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := kubectl("create", "--dry-run=server", "-f", f)
	switch {
	case err == nil:
		return true
	case strings.Contains(err.Error(), "privileged: Forbidden: disallowed by cluster policy"):
		return false
	default:
		t.Fatalf("probing for --allow-privileged: %v", err)
		return false
	}
}

func hasPrivileged(objs map[string]object) bool {
	for _, o := range objs {
		if o.kind() == "DaemonSet" {
			if sc, ok := containerOf(o)["securityContext"].(map[string]any); ok && sc["privileged"] == true {
				return true
			}
		}
	}
	return false
}

// withoutPrivileged returns a deep copy of objs with privileged: false in the
// DaemonSet's container.
func withoutPrivileged(objs map[string]object) map[string]object {
	b, err := json.Marshal(objs)
	if err != nil {
		panic(err)
	}
	var cp map[string]object
	if err := json.Unmarshal(b, &cp); err != nil {
		panic(err)
	}
	for _, o := range cp {
		if o.kind() == "DaemonSet" {
			if sc, ok := containerOf(o)["securityContext"].(map[string]any); ok {
				sc["privileged"] = false
			}
		}
	}
	return cp
}

func sortedObjects(objs map[string]object) []object {
	var out []object
	for _, k := range keys(objs) {
		out = append(out, objs[k])
	}
	return out
}

// writeObjects writes objs as a multi-document YAML file and returns its path.
func writeObjects(t *testing.T, path string, objs ...object) string {
	t.Helper()
	var buf bytes.Buffer
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		buf.WriteString("---\n")
		buf.Write(b)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHelmInstall installs and uninstalls the chart for real, in the ways
// deploy/README.md gives: the chart creating the kdrop namespace while the
// release is recorded in default, and Helm creating the namespace
// (--create-namespace) with the chart's Namespace turned off. It also checks
// the README's warning that --namespace kdrop alone fails.
func TestHelmInstall(t *testing.T) {
	env := testenv.Start(t)
	home := t.TempDir()
	helmEnv := []string{
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"KUBECONFIG=" + env.Kubeconfig(),
	}
	helm := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := runEnv(helmEnv, helmBin(t), args...)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	kubectl := func(args ...string) (string, error) {
		out, err := runErr(kubectlBin(t), append([]string{"--kubeconfig", env.Kubeconfig()}, args...)...)
		return string(out), err
	}
	var set []string
	if !probePrivileged(t, kubectl, "default") {
		t.Logf("NOTE: the test kube-apiserver runs without --allow-privileged=true: installing with securityContext.mode=capabilities")
		set = []string{"--set", "securityContext.mode=capabilities"}
	}

	t.Run("namespace-alone-fails", func(t *testing.T) {
		out, err := runEnv(helmEnv, helmBin(t), append([]string{"install", releaseName, chartDir, "--namespace", "kdrop-missing"}, set...)...)
		if err == nil || !strings.Contains(err.Error(), `namespaces "kdrop-missing" not found`) {
			t.Errorf("helm install --namespace <missing>: err %v, output %s; the README says it fails for want of the namespace", err, out)
		}
	})

	// check looks for the release's objects in ns, or their absence.
	check := func(t *testing.T, ns string, present bool) {
		t.Helper()
		for _, w := range []string{
			"serviceaccount/kdrop", "clusterrole.rbac.authorization.k8s.io/kdrop-agent",
			"clusterrolebinding.rbac.authorization.k8s.io/kdrop-agent", "clusterrole.rbac.authorization.k8s.io/kdrop-viewer",
			"daemonset.apps/kdrop", "service/kdrop-metrics",
		} {
			kind, name, _ := strings.Cut(w, "/")
			args := []string{"get", kind, name, "--ignore-not-found", "-o", "name"}
			if !strings.HasPrefix(kind, "cluster") {
				args = append(args, "-n", ns)
			}
			want := ""
			if present {
				want = w
			}
			if out, err := kubectl(args...); err != nil || strings.TrimSpace(out) != want {
				t.Errorf("kubectl get %s -n %s: %q, %v; want %q", w, ns, out, err, want)
			}
		}
	}

	for _, c := range []struct {
		name, releaseNS, objectsNS string
		args                       []string
	}{
		{"chart-creates-namespace", "default", namespace, nil},
		{"helm-creates-namespace", "kdrop-helm", "kdrop-helm", []string{"--create-namespace", "--set", "namespace.create=false,namespace.name="}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"install", releaseName, chartDir, "--namespace", c.releaseNS}, c.args...)
			helm(t, append(args, set...)...)
			check(t, c.objectsNS, true)
			if out, err := kubectl("get", "namespace", c.objectsNS, "-o", "jsonpath={.metadata.labels}"); err != nil {
				t.Errorf("namespace %s: %v", c.objectsNS, err)
			} else if c.objectsNS == namespace && !strings.Contains(out, `"pod-security.kubernetes.io/enforce":"privileged"`) {
				t.Errorf("namespace %s labels %s: no privileged Pod Security level", c.objectsNS, out)
			}
			if out := helm(t, "list", "--namespace", c.releaseNS, "-q"); strings.TrimSpace(out) != releaseName {
				t.Errorf("helm list -n %s: %q", c.releaseNS, out)
			}
			// Namespaces are finalized by a controller this apiserver lacks,
			// so only the other objects are checked for removal.
			helm(t, "uninstall", releaseName, "--namespace", c.releaseNS, "--wait=false")
			check(t, c.objectsNS, false)
		})
	}
}

// prometheusOperator is the prometheus-operator release whose PrometheusRule
// CRD the tests validate against, from the Go module proxy.
const prometheusOperator = "github.com/prometheus-operator/prometheus-operator@v0.85.0"

// prometheusRuleCRD returns the path of the PrometheusRule CRD in the
// module cache (downloaded, checksum verified, on first use).
func prometheusRuleCRD(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", prometheusOperator).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v\n%s", prometheusOperator, err, out)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", prometheusOperator, err, mod.Error)
	}
	return filepath.Join(mod.Dir, "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml")
}
