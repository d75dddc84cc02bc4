package enrich

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/k8s/testenv"
)

func createPod(t *testing.T, cs kubernetes.Interface, ns, name, ip string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	p, err := cs.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// A selected pod deleted stays selected for the deleted window, then not;
// at most max deleted pods are kept, those deleted first forgotten first.
func TestPodSetBounds(t *testing.T) {
	s := newPodSet(200*time.Millisecond, 3)
	s.add("web/a")
	s.remove("web/a", time.Now())
	if !s.has("web", "a") {
		t.Error("a pod deleted just now no longer matches")
	}
	time.Sleep(250 * time.Millisecond)
	if s.has("web", "a") {
		t.Error("a pod deleted past the window still matches")
	}
	now := time.Now()
	for i := range 5 {
		s.remove(fmt.Sprintf("web/p%d", i), now)
	}
	if len(s.deleted) != 3 || len(s.order) != 3 {
		t.Errorf("%d deleted pods kept (%d in order), want the cap, 3", len(s.deleted), len(s.order))
	}
	for i, want := range []bool{false, false, true, true, true} {
		if got := s.has("web", fmt.Sprintf("p%d", i)); got != want {
			t.Errorf("p%d selected: %v, want %v", i, got, want)
		}
	}
	// Back under the same name: live again, no longer a deleted one.
	s.add("web/p4")
	if !s.has("web", "p4") || len(s.deleted) != 2 {
		t.Errorf("a pod back after deletion: selected %v, %d deleted kept", s.has("web", "p4"), len(s.deleted))
	}
}

// --selector against a real API server: a deleted pod still matches for
// --deleted-window, then not.
func TestSelectorForgetsDeletedPods(t *testing.T) {
	env := testenv.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config())
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sel"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPod(t, cs, "sel", "api", "198.18.9.1")
	set, err := selectPods(env.Config(), "app=api", "sel", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !set.has("sel", "api") {
		t.Fatal("the pod the selector matches is not selected")
	}
	if err := cs.CoreV1().Pods("sel").Delete(ctx, "api", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for {
		set.mu.RLock()
		_, gone := set.deleted["sel/api"]
		set.mu.RUnlock()
		if gone {
			break
		}
		if time.Since(deleted) > 10*time.Second {
			t.Fatal("the watch never delivered the delete")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !set.has("sel", "api") && time.Since(deleted) < time.Second {
		t.Error("a pod deleted just now no longer matches")
	}
	time.Sleep(2500 * time.Millisecond)
	if set.has("sel", "api") {
		t.Error("a pod deleted past --deleted-window still matches")
	}
}
