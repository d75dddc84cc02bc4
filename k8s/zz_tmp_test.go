package k8s

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestTmpScale(t *testing.T) {
	if os.Getenv("KDROP_TMP") == "" {
		t.Skip()
	}
	it := startEnv(t)
	start := time.Now()
	it.populate(10000, 2000)
	t.Logf("populated in %v", time.Since(start))
	for _, rv := range []string{"0", ""} {
		l, err := it.admin.CoreV1().Pods("").List(context.Background(), metav1.ListOptions{ResourceVersion: rv, Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("RV=%q limit=500: %d items, continue=%v", rv, len(l.Items), l.Continue != "")
	}
	raw, err := it.admin.CoreV1().RESTClient().Get().AbsPath("/api/v1/pods").Param("resourceVersion", "0").SetHeader("Accept", "application/vnd.kubernetes.protobuf").DoRaw(context.Background())
	t.Logf("protobuf list body: %d bytes, err %v", len(raw), err)
	raw, err = it.admin.CoreV1().RESTClient().Get().AbsPath("/api/v1/pods").Param("resourceVersion", "0").SetHeader("Accept", "application/json").DoRaw(context.Background())
	t.Logf("json list body: %d bytes, err %v", len(raw), err)
	for _, variant := range strings.Split(os.Getenv("KDROP_TMP_VARIANTS"), ";") {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestScaleChild$", "-test.count", "1", "-test.v")
		cmd.Env = append(os.Environ(), "KDROP_SCALE_KUBECONFIG="+it.env.Kubeconfig())
		if variant != "" {
			cmd.Env = append(cmd.Env, strings.Split(variant, ",")...)
		}
		out, err := cmd.CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "KDROP-SCALE-RESULT") || strings.Contains(line, "FAIL") {
				t.Logf("variant %q: %s", variant, line)
			}
		}
		if err != nil {
			t.Logf("child err %v: %s", err, out)
		}
	}
	if os.Getenv("KDROP_TMP_WAIT") != "" {
		os.WriteFile("/tmp/kdrop-kubeconfig", []byte(it.env.Kubeconfig()), 0o644)
		time.Sleep(20 * time.Minute)
	}
}
