package testenv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdrop/kdrop/k8s/testenv"
)

const ns = "kdrop-test"

func TestEnv(t *testing.T) {
	start := time.Now()
	env := testenv.Start(t)
	t.Logf("etcd + kube-apiserver ready in %v at %s", time.Since(start).Round(time.Millisecond), env.URL())
	ctx := t.Context()
	admin := kubernetes.NewForConfigOrDie(env.Config())

	// A pod with an IP, as a kubelet would report it.
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example.invalid/web:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = "10.244.0.7"
	pod.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.7"}}
	if _, err := admin.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wantPod(t, admin)
	if got := env.Kubectl(t, "get", "pods", "-n", ns, "-o", "jsonpath={.items[*].status.podIP}"); got != "10.244.0.7" {
		t.Fatalf("kubectl: pod IPs %q, want 10.244.0.7", got)
	}
	if got := strings.TrimSpace(env.Kubectl(t, "config", "current-context")); got != "kdrop-test" {
		t.Fatalf("admin kubeconfig context %q, want kdrop-test", got)
	}

	// RBAC is enforced: alice may list pods only once a Role allows it.
	alice := kubernetes.NewForConfigOrDie(env.UserConfig("alice"))
	if _, err := alice.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("alice listing pods before any grant: err = %v, want Forbidden", err)
	}
	grantPodReader(t, admin, "alice")
	// The RBAC authorizer reads through an informer: the grant takes effect
	// a moment after it is written.
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := alice.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("alice still cannot list pods after the RoleBinding")
	}
	// The same user through a kubeconfig file; bob, in no group that the
	// binding names, stays locked out.
	aliceFile, err := clientcmd.BuildConfigFromFlags("", env.UserKubeconfig("alice"))
	if err != nil {
		t.Fatal(err)
	}
	wantPod(t, kubernetes.NewForConfigOrDie(aliceFile))
	bob := kubernetes.NewForConfigOrDie(env.UserConfig("bob", "developers"))
	if _, err := bob.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("bob listing pods: err = %v, want Forbidden", err)
	}

	checkServiceAccountToken(t, env, admin)

	// Restarting the apiserver keeps etcd's data.
	start = time.Now()
	env.StopAPIServer(t)
	t.Logf("kube-apiserver stopped in %v", time.Since(start).Round(time.Millisecond))
	if _, err := admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("listing pods with the apiserver stopped succeeded")
	}
	start = time.Now()
	env.StartAPIServer(t)
	t.Logf("kube-apiserver restarted and ready in %v", time.Since(start).Round(time.Millisecond))
	wantPod(t, admin)
	wantPod(t, alice)
}

// wantPod checks that the client lists exactly the pod that the test created.
func wantPod(t *testing.T, c kubernetes.Interface) {
	t.Helper()
	pods, err := c.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 1 || pods.Items[0].Status.PodIP != "10.244.0.7" || pods.Items[0].Status.Phase != corev1.PodRunning {
		t.Fatalf("pods = %+v, want web with IP 10.244.0.7, Running", pods.Items)
	}
}

func grantPodReader(t *testing.T, admin kubernetes.Interface, user string) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}},
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader-" + user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// checkServiceAccountToken has the apiserver issue a service-account token,
// checks that it was signed with env.ServiceAccountKey(), and that the
// apiserver accepts it.
func checkServiceAccountToken(t *testing.T, env *testenv.Env, admin kubernetes.Interface) {
	t.Helper()
	ctx := t.Context()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "agent"}}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "agent", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := tr.Status.Token

	keyPEM, err := os.ReadFile(env.ServiceAccountKey())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(token, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		t.Fatalf("token signature: %d bytes, %v; want 64 (ES256)", len(sig), err)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(&key.(*ecdsa.PrivateKey).PublicKey, digest[:], r, s) {
		t.Fatal("service-account token is not signed with ServiceAccountKey()")
	}

	cfg := &rest.Config{Host: env.URL(), BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: env.Config().CAData}}
	review, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := review.Status.UserInfo.Username, "system:serviceaccount:"+ns+":agent"; got != want {
		t.Fatalf("token authenticates as %q, want %q", got, want)
	}
}
