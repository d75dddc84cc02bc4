// Package deploy holds only tests: they check the kustomize manifests and the
// Helm chart in this directory against each other, against k8s/rbac.go, and
// against a real kube-apiserver (server-side dry runs).
//
// Prerequisites, each a loud failure when missing (never a skip): kubectl and
// kube-apiserver in $KDROP_KUBE_BIN, else <repo>/.cache/kube/bin (`make
// kube-bins`), and etcd (see k8s/testenv); helm at $KDROP_HELM, else
// <repo>/.cache/bin/helm, which the tests build with
// deploy/helm/install-helm.sh when it is missing (minutes, once).
//
//	KDROP_KUBE_BIN=$PWD/.cache/kube/bin go test -count=1 -timeout 30m ./deploy/
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/kdrop/kdrop/k8s"
)

const (
	kustomizeDir    = "kustomize"
	capabilitiesDir = "kustomize/overlays/capabilities"
	monitoringDir   = "kustomize/overlays/monitoring"
	chartDir        = "helm/kdrop"
	releaseName     = "kdrop"
	namespace       = "kdrop"
	version         = "v0.1.0"
	listenPort      = 9965
	streamPort      = 9966
)

// monitoringValues turn on all of the chart's monitoring objects: those of
// kustomize/overlays/monitoring.
var monitoringValues = []string{"--set", "monitoring.prometheusRule.enabled=true",
	"--set", "monitoring.rulesConfigMap.enabled=true", "--set", "monitoring.dashboard.enabled=true"}

// helmOnlyLabels are the labels Helm charts conventionally add that a
// kustomize build has no counterpart for; the comparison ignores them.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by"}

// ---------------------------------------------------------------------------
// Tools

func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			t.Fatalf("no go.mod above %s", dir)
		}
	}
}

func kubectlBin(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("KDROP_KUBE_BIN")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), ".cache", "kube", "bin")
	}
	bin := filepath.Join(dir, "kubectl")
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("kubectl is missing at %s: run `make kube-bins` (or set KDROP_KUBE_BIN to a directory holding kubectl v1.34)", bin)
	}
	return bin
}

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helmBin returns $KDROP_HELM, or builds helm into <repo>/.cache/bin with
// install-helm.sh (a no-op when it is there already).
func helmBin(t testing.TB) string {
	t.Helper()
	helmOnce.Do(func() {
		if p := os.Getenv("KDROP_HELM"); p != "" {
			if _, err := os.Stat(p); err != nil {
				helmErr = fmt.Errorf("KDROP_HELM=%s: %v", p, err)
			}
			helmPath = p
			return
		}
		root := repoRoot(t)
		cache := filepath.Join(root, ".cache", "bin")
		start := time.Now()
		cmd := exec.Command("bash", filepath.Join(root, "deploy", "helm", "install-helm.sh"), cache)
		out, err := cmd.CombinedOutput()
		if err != nil {
			helmErr = fmt.Errorf("deploy/helm/install-helm.sh %s: %v\n%s", cache, err, out)
			return
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Logf("built helm in %v:\n%s", d.Round(time.Second), out)
		}
		helmPath = filepath.Join(cache, "helm")
	})
	if helmErr != nil {
		t.Fatalf("helm is unavailable: %v", helmErr)
	}
	return helmPath
}

func run(t testing.TB, bin string, args ...string) []byte {
	t.Helper()
	out, err := runErr(bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runErr(bin string, args ...string) ([]byte, error) {
	return runEnv(nil, bin, args...)
}

// runEnv runs bin with env added to the test's environment and returns its
// stdout, also on failure.
func runEnv(env []string, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

func kustomize(t testing.TB, dir string) []byte {
	t.Helper()
	return run(t, kubectlBin(t), "kustomize", dir)
}

func helmTemplate(t testing.TB, args ...string) []byte {
	t.Helper()
	return run(t, helmBin(t), append([]string{"template", releaseName, chartDir}, args...)...)
}

// ---------------------------------------------------------------------------
// Objects

// object is one manifest, as generic JSON (numbers are float64).
type object map[string]any

func (o object) kind() string { s, _ := o["kind"].(string); return s }
func (o object) meta() map[string]any {
	m, _ := o["metadata"].(map[string]any)
	return m
}
func (o object) name() string      { s, _ := o.meta()["name"].(string); return s }
func (o object) namespace() string { s, _ := o.meta()["namespace"].(string); return s }
func (o object) key() string {
	return fmt.Sprintf("%s %s/%s", o.kind(), o.namespace(), o.name())
}

// resourceName is how kubectl names the object in its output: daemonset.apps/kdrop.
func (o object) resourceName() string {
	kind := strings.ToLower(o.kind())
	if api, _ := o["apiVersion"].(string); strings.Contains(api, "/") {
		kind += "." + strings.Split(api, "/")[0]
	}
	return kind + "/" + o.name()
}

// into decodes the object into a typed API struct, rejecting unknown fields.
func (o object) into(t testing.TB, v any) {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", o.key(), err)
	}
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// parse splits a multi-document YAML stream into objects, keyed by
// "Kind namespace/name"; empty documents (Helm leaves some) are dropped.
func parse(t testing.TB, stream []byte) map[string]object {
	t.Helper()
	objs := map[string]object{}
	for _, doc := range docSep.Split(string(stream), -1) {
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("parse: %v\n%s", err, doc)
		}
		if len(o) == 0 {
			continue
		}
		if o.kind() == "" || o.name() == "" {
			t.Fatalf("parse: a document without kind or name:\n%s", doc)
		}
		if _, dup := objs[o.key()]; dup {
			t.Fatalf("parse: %s twice", o.key())
		}
		objs[o.key()] = o
	}
	return objs
}

func find(t testing.TB, objs map[string]object, kind, name string) object {
	t.Helper()
	for _, o := range objs {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	t.Fatalf("no %s %s among %v", kind, name, keys(objs))
	return nil
}

func keys(objs map[string]object) []string {
	var ks []string
	for k := range objs {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// dropHelmLabels removes helmOnlyLabels from the object's labels and from a
// pod template's.
func dropHelmLabels(o object) {
	strip := func(meta any) {
		m, _ := meta.(map[string]any)
		labels, _ := m["labels"].(map[string]any)
		for _, l := range helmOnlyLabels {
			delete(labels, l)
		}
	}
	strip(o["metadata"])
	if spec, ok := o["spec"].(map[string]any); ok {
		if tmpl, ok := spec["template"].(map[string]any); ok {
			strip(tmpl["metadata"])
		}
	}
}

// sameObjects fails the test unless the two sets hold the same objects.
func sameObjects(t *testing.T, wantName string, want map[string]object, gotName string, got map[string]object) {
	t.Helper()
	if !reflect.DeepEqual(keys(want), keys(got)) {
		t.Fatalf("%s has objects %q,\n%s has %q", wantName, keys(want), gotName, keys(got))
	}
	for _, k := range keys(want) {
		if !reflect.DeepEqual(want[k], got[k]) {
			a, _ := yaml.Marshal(want[k])
			b, _ := yaml.Marshal(got[k])
			t.Errorf("%s differs (- %s, + %s):\n%s", k, wantName, gotName, lineDiff(string(a), string(b)))
		}
	}
}

// lineDiff is a minimal diff of two short texts (an LCS over lines).
func lineDiff(a, b string) string {
	x, y := strings.Split(a, "\n"), strings.Split(b, "\n")
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var sb strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			sb.WriteString("  " + x[i] + "\n")
			i, j = i+1, j+1
		case j < len(y) && (i == len(x) || lcs[i][j+1] >= lcs[i+1][j]):
			sb.WriteString("+ " + y[j] + "\n")
			j++
		default:
			sb.WriteString("- " + x[i] + "\n")
			i++
		}
	}
	return sb.String()
}

// ---------------------------------------------------------------------------
// RBAC drift

// agentRules is what the agent's ClusterRole must say: identity's rules from
// k8s/rbac.go, then the one /events needs to check stream tokens and the
// one Kubernetes Events need (sinks/k8sevents).
func agentRules() []rbacv1.PolicyRule {
	return append(k8s.ClusterRoleRules(),
		rbacv1.PolicyRule{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
		rbacv1.PolicyRule{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	)
}

func viewerRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, ResourceNames: []string{"kdrop-stream"}, Verbs: []string{"create"}},
		{APIGroups: []string{""}, Resources: []string{"pods/proxy"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
	}
}

// TestRBACMatchesK8sPackage fails when the manifests' agent ClusterRole and
// k8s/rbac.go drift apart, in meaning and in text.
func TestRBACMatchesK8sPackage(t *testing.T) {
	// k8s.ClusterRoleYAML and ClusterRoleRules agree (k8s has its own test;
	// this one keeps ours honest if that changes).
	var fromYAML rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict([]byte(k8s.ClusterRoleYAML), &fromYAML); err != nil {
		t.Fatalf("k8s.ClusterRoleYAML: %v", err)
	}
	if !reflect.DeepEqual(fromYAML.Rules, k8s.ClusterRoleRules()) {
		t.Fatalf("k8s.ClusterRoleYAML's rules %+v differ from k8s.ClusterRoleRules() %+v", fromYAML.Rules, k8s.ClusterRoleRules())
	}

	objs := parse(t, kustomize(t, kustomizeDir))
	var agent, viewer rbacv1.ClusterRole
	find(t, objs, "ClusterRole", "kdrop-agent").into(t, &agent)
	find(t, objs, "ClusterRole", "kdrop-viewer").into(t, &viewer)
	if !reflect.DeepEqual(agent.Rules, agentRules()) {
		t.Errorf("ClusterRole kdrop-agent rules:\n%s\nwant k8s.ClusterRoleRules() + tokenreviews + events:\n%s", rulesYAML(agent.Rules), rulesYAML(agentRules()))
	}
	if !reflect.DeepEqual(viewer.Rules, viewerRules()) {
		t.Errorf("ClusterRole kdrop-viewer rules:\n%s\nwant:\n%s", rulesYAML(viewer.Rules), rulesYAML(viewerRules()))
	}
	var binding rbacv1.ClusterRoleBinding
	find(t, objs, "ClusterRoleBinding", "kdrop-agent").into(t, &binding)
	wantSubjects := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kdrop", Namespace: namespace}}
	if binding.RoleRef.Name != "kdrop-agent" || binding.RoleRef.Kind != "ClusterRole" || !reflect.DeepEqual(binding.Subjects, wantSubjects) {
		t.Errorf("ClusterRoleBinding kdrop-agent binds %+v to %+v, want ClusterRole kdrop-agent to %+v", binding.RoleRef, binding.Subjects, wantSubjects)
	}

	// The text too: the rules block of k8s.ClusterRoleYAML is copied
	// verbatim into both manifests, so a reader can compare them by eye.
	_, rulesText, ok := strings.Cut(k8s.ClusterRoleYAML, "\nrules:\n")
	if !ok {
		t.Fatalf("k8s.ClusterRoleYAML has no rules block")
	}
	for _, f := range []string{"kustomize/base/rbac.yaml", "helm/kdrop/templates/rbac.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "\nrules:\n"+rulesText) {
			t.Errorf("%s does not contain k8s.ClusterRoleYAML's rules verbatim after `rules:`:\n%s", f, rulesText)
		}
	}
}

func rulesYAML(r []rbacv1.PolicyRule) string {
	b, _ := yaml.Marshal(r)
	return string(b)
}

// ---------------------------------------------------------------------------
// What the manifests must say

// TestManifests checks the kustomize build against the agent's needs (the
// Helm chart is compared with it in TestHelmMatchesKustomize).
func TestManifests(t *testing.T) {
	objs := parse(t, kustomize(t, kustomizeDir))
	want := []string{
		"Namespace /kdrop",
		"ServiceAccount kdrop/kdrop",
		"ServiceAccount kdrop/kdrop-stream",
		"ClusterRole /kdrop-agent",
		"ClusterRoleBinding /kdrop-agent",
		"ClusterRole /kdrop-viewer",
		"DaemonSet kdrop/kdrop",
		"Service kdrop/kdrop-metrics",
	}
	slices.Sort(want)
	if got := keys(objs); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects %q, want %q", got, want)
	}
	checkAgentObjects(t, objs, false)
}

func TestCapabilitiesOverlay(t *testing.T) {
	base := parse(t, kustomize(t, kustomizeDir))
	caps := parse(t, kustomize(t, capabilitiesDir))
	checkAgentObjects(t, caps, true)
	// Only the container's securityContext differs from the base.
	for k, o := range caps {
		if o.kind() == "DaemonSet" {
			ds := base[k]
			bc := containerOf(ds)
			cc := containerOf(o)
			bsc, csc := bc["securityContext"], cc["securityContext"]
			delete(bc, "securityContext")
			delete(cc, "securityContext")
			if !reflect.DeepEqual(ds, o) {
				a, _ := yaml.Marshal(ds)
				b, _ := yaml.Marshal(o)
				t.Errorf("the overlay changes more than the securityContext:\n%s", lineDiff(string(a), string(b)))
			}
			bc["securityContext"], cc["securityContext"] = bsc, csc
			continue
		}
		if !reflect.DeepEqual(base[k], o) {
			t.Errorf("the overlay changes %s", k)
		}
	}
}

func containerOf(o object) map[string]any {
	spec := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	return spec["containers"].([]any)[0].(map[string]any)
}

// checkAgentObjects checks what the brief for the agent asks of the
// manifests, on typed objects (decoding rejects unknown fields).
func checkAgentObjects(t *testing.T, objs map[string]object, capabilities bool) {
	t.Helper()
	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet", "kdrop").into(t, &ds)
	var svc corev1.Service
	find(t, objs, "Service", "kdrop-metrics").into(t, &svc)
	var sa corev1.ServiceAccount
	find(t, objs, "ServiceAccount", "kdrop").into(t, &sa)
	var ns corev1.Namespace
	find(t, objs, "Namespace", namespace).into(t, &ns)

	errorf := func(format string, args ...any) { t.Helper(); t.Errorf("DaemonSet: "+format, args...) }

	// Labels and selectors.
	for k, o := range objs {
		labels, _ := o.meta()["labels"].(map[string]any)
		if labels["app.kubernetes.io/name"] != "kdrop" || labels["app.kubernetes.io/instance"] != releaseName ||
			labels["app.kubernetes.io/version"] != version || labels["app.kubernetes.io/part-of"] != "kdrop" {
			t.Errorf("%s: labels %v lack name/instance/part-of kdrop and version %s", k, labels, version)
		}
		if o.kind() != "Namespace" && labels["app.kubernetes.io/component"] == nil {
			t.Errorf("%s: no app.kubernetes.io/component label", k)
		}
		if ns := o.namespace(); ns != "" && ns != namespace {
			t.Errorf("%s: in namespace %q, want %q", k, ns, namespace)
		}
	}
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("Namespace: pod-security.kubernetes.io/enforce is %q, want privileged", ns.Labels["pod-security.kubernetes.io/enforce"])
	}
	pod := ds.Spec.Template
	sel := ds.Spec.Selector.MatchLabels
	if sel["app.kubernetes.io/name"] != "kdrop" || sel["app.kubernetes.io/version"] != "" {
		errorf("selector %v: want the name label and no version (selectors are immutable)", sel)
	}
	for k, v := range sel {
		if pod.Labels[k] != v {
			errorf("selector %s=%s does not match the pod template's labels %v", k, v, pod.Labels)
		}
	}
	if len(svc.Spec.Selector) == 0 {
		t.Errorf("Service: no selector")
	}
	for k, v := range svc.Spec.Selector {
		if pod.Labels[k] != v {
			t.Errorf("Service: selector %s=%s does not match the agent pods' labels %v", k, v, pod.Labels)
		}
	}

	// Pod.
	ps := pod.Spec
	if !ps.HostPID || !ps.HostNetwork {
		errorf("hostPID %v, hostNetwork %v: want both", ps.HostPID, ps.HostNetwork)
	}
	if ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		errorf("dnsPolicy %q, want ClusterFirstWithHostNet with hostNetwork", ps.DNSPolicy)
	}
	if ps.ServiceAccountName != sa.Name {
		errorf("serviceAccountName %q, the ServiceAccount is %q", ps.ServiceAccountName, sa.Name)
	}
	if !reflect.DeepEqual(ps.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}}) {
		errorf("tolerations %+v, want one that tolerates everything", ps.Tolerations)
	}
	if ps.PriorityClassName != "" {
		errorf("priorityClassName %q, want it unset by default", ps.PriorityClassName)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("DaemonSet: %d containers, want 1", len(ps.Containers))
	}
	c := ps.Containers[0]
	if c.Image != "kdrop:"+version || c.ImagePullPolicy != corev1.PullIfNotPresent {
		errorf("image %q (%s), want kdrop:%s, IfNotPresent", c.Image, c.ImagePullPolicy, version)
	}
	if len(c.Command) != 0 || len(c.Args) == 0 || c.Args[0] != "agent" || !slices.Contains(c.Args, fmt.Sprintf("--listen=:%d", listenPort)) ||
		!slices.Contains(c.Args, fmt.Sprintf("--stream-listen=:%d", streamPort)) || !slices.Contains(c.Args, "--stream-account=kdrop-stream") {
		errorf("command %q args %q: want the image's entrypoint, then agent --listen=:%d --stream-listen=:%d --stream-account=kdrop-stream", c.Command, c.Args, listenPort, streamPort)
	}
	var nodeName *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			nodeName = &c.Env[i]
		}
	}
	if nodeName == nil || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil || nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		errorf("NODE_NAME does not come from spec.nodeName: %+v", nodeName)
	}
	if len(c.Ports) != 2 || c.Ports[0].ContainerPort != listenPort || c.Ports[0].Name != "http" || c.Ports[1].ContainerPort != streamPort || c.Ports[1].Name != "stream" {
		errorf("ports %+v, want http %d and stream %d", c.Ports, listenPort, streamPort)
	}
	for name, p := range map[string]*corev1.Probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != name || p.HTTPGet.Port.String() != "http" {
			errorf("probe %s: %+v", name, p)
		}
	}
	wantRes := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	if !equalResources(c.Resources, wantRes) {
		errorf("resources %+v, want %+v", c.Resources, wantRes)
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("DaemonSet: no securityContext")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		errorf("runAsUser %v: the BPF loader runs as root", sc.RunAsUser)
	}
	if capabilities {
		wantCaps := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "SYSLOG"}
		if sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Add, wantCaps) {
			errorf("capabilities mode: securityContext %+v, want privileged: false and add %v", sc, wantCaps)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined ||
			sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
			errorf("capabilities mode: seccomp %+v, AppArmor %+v, want both Unconfined", sc.SeccompProfile, sc.AppArmorProfile)
		}
	} else if sc.Privileged == nil || !*sc.Privileged || sc.Capabilities != nil {
		errorf("securityContext %+v, want privileged: true", sc)
	}

	// Host mounts: read-only, netns ones with HostToContainer propagation.
	wantMounts := map[string]bool{ // path -> HostToContainer
		"/sys/kernel/btf": false, "/sys/kernel/tracing": false, "/sys/kernel/debug": false,
		"/sys/fs/cgroup": false, "/run/netns": true, "/var/run/netns": true,
	}
	hostPaths := map[string]string{}
	for _, v := range ps.Volumes {
		if v.HostPath == nil {
			errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		hostPaths[v.Name] = v.HostPath.Path
	}
	seen := map[string]bool{}
	for _, m := range c.VolumeMounts {
		if hostPaths[m.Name] != m.MountPath {
			errorf("mount %s at %s shows host path %q: want the same path", m.Name, m.MountPath, hostPaths[m.Name])
		}
		propagate, ok := wantMounts[m.MountPath]
		if !ok {
			errorf("unexpected mount %s", m.MountPath)
			continue
		}
		seen[m.MountPath] = true
		if !m.ReadOnly {
			errorf("mount %s is writable, want read-only", m.MountPath)
		}
		got := m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationHostToContainer
		if got != propagate {
			errorf("mount %s: HostToContainer propagation %v, want %v", m.MountPath, got, propagate)
		}
	}
	for p := range wantMounts {
		if !seen[p] {
			errorf("no mount of %s", p)
		}
	}

	// Service.
	wantAnn := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": fmt.Sprint(listenPort), "prometheus.io/path": "/metrics"}
	if !reflect.DeepEqual(svc.Annotations, wantAnn) {
		t.Errorf("Service: annotations %v, want %v", svc.Annotations, wantAnn)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != listenPort || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("Service: ports %+v, want %d -> http", svc.Spec.Ports, listenPort)
	}
}

func equalResources(a, b corev1.ResourceRequirements) bool {
	eq := func(x, y corev1.ResourceList) bool {
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || v.Cmp(w) != 0 {
				return false
			}
		}
		return true
	}
	return eq(a.Requests, b.Requests) && eq(a.Limits, b.Limits)
}

// TestImageDefinitions keeps the Dockerfile, the chart's appVersion and the
// kustomize image tag in step.
func TestImageDefinitions(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var instr []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			instr = append(instr, l)
		}
	}
	for _, want := range []string{"FROM scratch", `ENTRYPOINT ["/kdrop"]`, `CMD ["agent"]`} {
		if !slices.Contains(instr, want) {
			t.Errorf("Dockerfile lacks %q; its instructions are %q", want, instr)
		}
	}
	for _, l := range instr {
		if strings.HasPrefix(l, "USER") {
			t.Errorf("Dockerfile: %q: the agent must run as root", l)
		}
	}

	var chart struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	cb, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(cb, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion != version {
		t.Errorf("Chart.yaml appVersion %q, kustomize uses %q", chart.AppVersion, version)
	}
	if "v"+chart.Version != version {
		t.Errorf("Chart.yaml version %q does not follow appVersion %q", chart.Version, chart.AppVersion)
	}
}

// ---------------------------------------------------------------------------
// Helm

func TestHelmLint(t *testing.T) {
	run(t, helmBin(t), "lint", "--strict", chartDir)
	run(t, helmBin(t), append([]string{"lint", "--strict", chartDir}, monitoringValues...)...)
}

// TestHelmMatchesKustomize: the chart with default values renders the objects
// of the kustomize build (ignoring Helm's own labels), with
// securityContext.mode=capabilities those of the capabilities overlay, and
// with the monitoring values on those of the monitoring overlay (the
// PrometheusRule, the rules and dashboard ConfigMaps of
// kustomize/components).
func TestHelmMatchesKustomize(t *testing.T) {
	for _, c := range []struct {
		name, dir string
		args      []string
	}{
		{"defaults", kustomizeDir, nil},
		{"capabilities", capabilitiesDir, []string{"--set", "securityContext.mode=capabilities"}},
		{"monitoring", monitoringDir, monitoringValues},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := parse(t, kustomize(t, c.dir))
			h := parse(t, helmTemplate(t, c.args...))
			for _, o := range h {
				labels, _ := o.meta()["labels"].(map[string]any)
				if labels["app.kubernetes.io/managed-by"] != "Helm" || labels["helm.sh/chart"] != "kdrop-0.1.0" {
					t.Errorf("%s: Helm labels missing: %v", o.key(), labels)
				}
				dropHelmLabels(o)
			}
			sameObjects(t, "kustomize "+c.dir, k, "helm template", h)
		})
	}
}

// TestHelmValues renders the chart with non-default values and checks that
// each lands where it should.
func TestHelmValues(t *testing.T) {
	objs := parse(t, helmTemplate(t,
		"--namespace", "monitoring",
		"--set", "namespace.name=,namespace.create=false",
		"--set", "image.repository=registry.example.com/kdrop,image.tag=v9.9.9,image.pullPolicy=Always",
		"--set", "priorityClassName=system-node-critical",
		"--set", "listenPort=9100,streamPort=9101,logFormat=console",
		"--set", "extraArgs={--ifindex=3,--reason=NO_SOCKET}",
		"--set", "nodeSelector.role=edge",
		"--set", "tolerations=null",
		"--set", "resources.limits.memory=512Mi,resources.requests.cpu=100m",
		"--set", "rbac.createViewerRole=false,service.enabled=false",
	))
	want := []string{"ClusterRole /kdrop-agent", "ClusterRoleBinding /kdrop-agent", "DaemonSet monitoring/kdrop", "ServiceAccount monitoring/kdrop"}
	if got := keys(objs); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects %q, want %q", got, want)
	}
	var binding rbacv1.ClusterRoleBinding
	find(t, objs, "ClusterRoleBinding", "kdrop-agent").into(t, &binding)
	if binding.Subjects[0].Namespace != "monitoring" {
		t.Errorf("ClusterRoleBinding subject %+v: want the release namespace", binding.Subjects[0])
	}
	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet", "kdrop").into(t, &ds)
	ps := ds.Spec.Template.Spec
	c := ps.Containers[0]
	if c.Image != "registry.example.com/kdrop:v9.9.9" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("image %s (%s)", c.Image, c.ImagePullPolicy)
	}
	if ds.Labels["app.kubernetes.io/version"] != "v9.9.9" {
		t.Errorf("version label %q, want the image tag", ds.Labels["app.kubernetes.io/version"])
	}
	if ps.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", ps.PriorityClassName)
	}
	wantArgs := []string{"agent", "--listen=:9100", "--stream-listen=:9101", "--stream-account=kdrop-stream", "--log-format=console", "--ifindex=3", "--reason=NO_SOCKET"}
	if !reflect.DeepEqual(c.Args, wantArgs) {
		t.Errorf("args %q, want %q", c.Args, wantArgs)
	}
	if c.Ports[0].ContainerPort != 9100 || c.Ports[1].ContainerPort != 9101 {
		t.Errorf("containerPorts %d, %d", c.Ports[0].ContainerPort, c.Ports[1].ContainerPort)
	}

	// The stream's service account follows the release's name, in the
	// agent's flag and in the viewer role that grants its tokens.
	named := parse(t, helmTemplate(t, "--set", "fullnameOverride=drops"))
	var drops appsv1.DaemonSet
	find(t, named, "DaemonSet", "drops").into(t, &drops)
	if args := drops.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--stream-account=drops-stream") {
		t.Errorf("fullnameOverride=drops: args %q, want --stream-account=drops-stream", args)
	}
	var viewer rbacv1.ClusterRole
	find(t, named, "ClusterRole", "drops-viewer").into(t, &viewer)
	if !slices.Equal(viewer.Rules[0].ResourceNames, []string{"drops-stream"}) || viewer.Rules[0].Resources[0] != "serviceaccounts/token" {
		t.Errorf("fullnameOverride=drops: viewer rule %+v, want tokens of drops-stream", viewer.Rules[0])
	}
	find(t, named, "ServiceAccount", "drops-stream")
	if !reflect.DeepEqual(ps.NodeSelector, map[string]string{"kubernetes.io/os": "linux", "role": "edge"}) {
		t.Errorf("nodeSelector %v", ps.NodeSelector)
	}
	if len(ps.Tolerations) != 0 {
		t.Errorf("tolerations %+v, want none", ps.Tolerations)
	}
	if m := c.Resources.Limits.Memory(); m.String() != "512Mi" {
		t.Errorf("memory limit %s", m)
	}
	if cpu := c.Resources.Requests.Cpu(); cpu.String() != "100m" {
		t.Errorf("cpu request %s", cpu)
	}

	// Without a memory limit there is no GOMEMLIMIT to derive.
	objs = parse(t, helmTemplate(t, "--set", "resources.limits=null"))
	find(t, objs, "DaemonSet", "kdrop").into(t, &ds)
	for _, e := range ds.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "GOMEMLIMIT" {
			t.Errorf("GOMEMLIMIT set without a memory limit")
		}
	}

	// SELinux options in capabilities mode.
	objs = parse(t, helmTemplate(t, "--set", "securityContext.mode=capabilities,securityContext.seLinuxOptions.type=spc_t"))
	find(t, objs, "DaemonSet", "kdrop").into(t, &ds)
	if sc := ds.Spec.Template.Spec.Containers[0].SecurityContext; sc.SELinuxOptions == nil || sc.SELinuxOptions.Type != "spc_t" {
		t.Errorf("seLinuxOptions %+v, want type spc_t", sc.SELinuxOptions)
	}

	// A mode that is neither privileged nor capabilities is an error.
	out, err := runErr(helmBin(t), "template", releaseName, chartDir, "--set", "securityContext.mode=root")
	if err == nil || !strings.Contains(err.Error(), "want privileged or capabilities") {
		t.Errorf("securityContext.mode=root: err %v, output %.200s", err, out)
	}
}
