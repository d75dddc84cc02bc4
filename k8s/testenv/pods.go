package testenv

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// RunningPod creates p (and its namespace, if missing) as the admin, then
// sets its status as a kubelet would once its sandbox is up: Running, with
// ip as its only pod IP. Nothing runs it: the test gives the IP to a
// network namespace of its own. It fails the test on any error.
func (e *Env) RunningPod(t testing.TB, p *corev1.Pod, ip string) *corev1.Pod {
	t.Helper()
	cs, err := kubernetes.NewForConfig(e.Config())
	if err != nil {
		t.Fatalf("testenv: client: %v", err)
	}
	ctx := t.Context()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: p.Namespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("testenv: namespace %s: %v", p.Namespace, err)
	}
	p, err = cs.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("testenv: creating pod: %v", err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if p, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("testenv: status of pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	return p
}
