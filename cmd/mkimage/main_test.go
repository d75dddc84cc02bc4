package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testBinary builds a tiny static linux/amd64 program once per test run.
var testBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "mkimage-test-")
	if err != nil {
		return "", err
	}
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nfunc main() { println(\"hello from a test binary\") }\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command(goTool(), "build", "-trimpath", "-o", bin, src)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GO111MODULE=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New("go build of the test binary: " + err.Error() + "\n" + string(out))
	}
	return bin, nil
})

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := testBinary(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

func mustBinary(t *testing.T) (string, []byte) {
	t.Helper()
	bin, err := testBinary()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return bin, data
}

// runMkimage runs main() in a child process (the test binary itself), as the
// Makefile runs `go run ./cmd/mkimage`, and returns the archive's path.
func runMkimage(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out", "kdrop-image.tar")
	cmd := exec.Command(os.Args[0], append([]string{"-out", out}, args...)...)
	cmd.Env = append(os.Environ(), append(env, "MKIMAGE_TEST_RUN_MAIN=1")...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("mkimage %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if !strings.HasPrefix(string(stdout), out+" ") {
		t.Errorf("mkimage printed %q, want it to start with the output path", stdout)
	}
	return out
}

func init() {
	// The child process of runMkimage: be mkimage, not the test binary.
	if os.Getenv("MKIMAGE_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"mkimage"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
}

func TestImageReadBack(t *testing.T) {
	bin, want := mustBinary(t)
	archive := runMkimage(t, []string{"SOURCE_DATE_EPOCH="}, "-binary", bin, "-tag", "kdrop:v0.1.0")

	tag, err := name.NewTag("kdrop:v0.1.0", name.WeakValidation)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatalf("read back %s as kdrop:v0.1.0: %v", archive, err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, []string{"/kdrop"}) {
		t.Errorf("Entrypoint %q, want [/kdrop]", cf.Config.Entrypoint)
	}
	if !reflect.DeepEqual(cf.Config.Cmd, []string{"agent"}) {
		t.Errorf("Cmd %q, want [agent]", cf.Config.Cmd)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.version": "v0.1.0",
		"org.opencontainers.image.source":  "https://github.com/kdrop/kdrop",
		"org.opencontainers.image.title":   "kdrop",
	}
	if !reflect.DeepEqual(cf.Config.Labels, wantLabels) {
		t.Errorf("labels %v, want %v", cf.Config.Labels, wantLabels)
	}
	if cf.Config.User != "" {
		t.Errorf("User %q: the agent must run as root (see deploy/Dockerfile)", cf.Config.User)
	}
	if !cf.Created.Time.Equal(time.Unix(0, 0)) {
		t.Errorf("created %v, want the Unix epoch without SOURCE_DATE_EPOCH", cf.Created.Time)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if len(cf.RootFS.DiffIDs) != 1 {
		t.Fatalf("config lists %d diff IDs, want 1", len(cf.RootFS.DiffIDs))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var entries []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("layer tar: %v", err)
		}
		entries = append(entries, hdr.Name)
		if strings.TrimPrefix(hdr.Name, "/") != "kdrop" {
			continue
		}
		if hdr.Typeflag != tar.TypeReg {
			t.Errorf("/kdrop has type %q, want a regular file", hdr.Typeflag)
		}
		if hdr.Mode != 0o755 {
			t.Errorf("/kdrop has mode %#o, want 0755", hdr.Mode)
		}
		if hdr.Uid != 0 || hdr.Gid != 0 {
			t.Errorf("/kdrop is owned by %d:%d, want 0:0", hdr.Uid, hdr.Gid)
		}
		if !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("/kdrop mtime %v, want the Unix epoch", hdr.ModTime)
		}
		got, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("/kdrop holds %d bytes that differ from the %d of the binary", len(got), len(want))
		}
	}
	if !reflect.DeepEqual(entries, []string{"kdrop"}) {
		t.Errorf("layer entries %q, want just [kdrop]", entries)
	}

	// The archive's manifest.json must name the tag, for ctr/docker load.
	if _, err := tarball.ImageFromPath(archive, nil); err != nil {
		t.Errorf("read back without a tag (single image): %v", err)
	}
	other, err := name.NewTag("kdrop:other", name.WeakValidation)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tarball.ImageFromPath(archive, &other); err == nil {
		t.Errorf("the archive also answers to kdrop:other; want only kdrop:v0.1.0")
	}
}

func TestReproducible(t *testing.T) {
	bin, _ := mustBinary(t)
	args := []string{"-binary", bin, "-tag", "kdrop:v0.1.0"}
	a := runMkimage(t, []string{"SOURCE_DATE_EPOCH="}, args...)
	// Another mtime on the input and another run: same bytes out.
	if err := os.Chtimes(bin, time.Now(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	b := runMkimage(t, []string{"SOURCE_DATE_EPOCH="}, args...)
	da, db := digestOf(t, a), digestOf(t, b)
	if da != db {
		t.Errorf("two builds of the same binary: digests %s and %s", da, db)
	}
	ba, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ba, bb) {
		t.Errorf("two builds of the same binary: archives differ")
	}

	// SOURCE_DATE_EPOCH moves the times, and so the digest.
	c := runMkimage(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, args...)
	if dc := digestOf(t, c); dc == da {
		t.Errorf("SOURCE_DATE_EPOCH did not change the digest")
	}
	img, err := tarball.ImageFromPath(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !cf.Created.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created %v with SOURCE_DATE_EPOCH=1700000000", cf.Created.Time)
	}

	// In-process builds agree with the command.
	img2, _, err := Build(Options{Binary: bin, Tag: "kdrop:v0.1.0", Created: time.Unix(0, 0).UTC()})
	if err != nil {
		t.Fatal(err)
	}
	d2, err := img2.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d2.String() != da {
		t.Errorf("Build() digest %s, command %s", d2, da)
	}
}

func digestOf(t *testing.T, archive string) string {
	t.Helper()
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestVersionLabel(t *testing.T) {
	bin, _ := mustBinary(t)
	img, _, err := Build(Options{Binary: bin, Tag: "registry.example/kdrop:v9", Version: "v9.1.2-3-gabc", Source: "https://example.invalid/kdrop"})
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Labels["org.opencontainers.image.version"]; got != "v9.1.2-3-gabc" {
		t.Errorf("version label %q", got)
	}
	if got := cf.Config.Labels["org.opencontainers.image.source"]; got != "https://example.invalid/kdrop" {
		t.Errorf("source label %q", got)
	}
}

func TestRejectsUnrunnableBinaries(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		script:      "not an ELF",
		"/bin/true": "dynamically linked",
	}
	if !fileExists("/bin/true") {
		t.Fatal("/bin/true is missing: the test needs a dynamically linked binary")
	}
	for path, want := range cases {
		_, _, err := Build(Options{Binary: path, Tag: "kdrop:v0.1.0"})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Build(%s): error %v, want one saying %q", path, err, want)
		}
	}
	if _, _, err := Build(Options{Binary: filepath.Join(dir, "missing"), Tag: "kdrop:v0.1.0"}); err == nil {
		t.Errorf("Build of a missing file succeeded")
	}
	bin, _ := mustBinary(t)
	if _, _, err := Build(Options{Binary: bin, Tag: "Not A Tag"}); err == nil {
		t.Errorf("Build with tag %q succeeded", "Not A Tag")
	}
}

// TestOtherImage builds a non-kdrop image the way the test cluster does
// (deploy/cluster/cluster.sh images): no /kdrop, files in directories, a
// symlink, an entrypoint given as JSON, no command, an environment.
func TestOtherImage(t *testing.T) {
	bin, want := mustBinary(t)
	archive := runMkimage(t, []string{"SOURCE_DATE_EPOCH="}, "-binary=", "-tag", "example.local/tool:1",
		"-title", "tool", "-file", bin+"=/bin/hello", "-symlink", "hello=/bin/sh",
		"-entrypoint", `["/bin/sh","-c","echo a, b"]`, "-cmd=", "-env", "PATH=/bin", "-env", "A=1")
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Entrypoint; !reflect.DeepEqual(got, []string{"/bin/sh", "-c", "echo a, b"}) {
		t.Errorf("Entrypoint %q", got)
	}
	if cf.Config.Cmd != nil {
		t.Errorf("Cmd %q, want none", cf.Config.Cmd)
	}
	if got := cf.Config.Env; !reflect.DeepEqual(got, []string{"PATH=/bin", "A=1"}) {
		t.Errorf("Env %q", got)
	}
	if got := cf.Config.Labels["org.opencontainers.image.title"]; got != "tool" {
		t.Errorf("title label %q", got)
	}
	if cf.Architecture != "amd64" {
		t.Errorf("architecture %q, want amd64 from /bin/hello", cf.Architecture)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var got []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, hdr.Name)
		switch hdr.Name {
		case "bin/":
			if hdr.Typeflag != tar.TypeDir || hdr.Mode != 0o755 {
				t.Errorf("bin/: type %q mode %#o", hdr.Typeflag, hdr.Mode)
			}
		case "bin/hello":
			data, _ := io.ReadAll(tr)
			if hdr.Mode != 0o755 || !bytes.Equal(data, want) {
				t.Errorf("bin/hello: mode %#o, %d bytes (want 0755, %d)", hdr.Mode, len(data), len(want))
			}
		case "bin/sh":
			if hdr.Typeflag != tar.TypeSymlink || hdr.Linkname != "hello" {
				t.Errorf("bin/sh: type %q -> %q, want a symlink to hello", hdr.Typeflag, hdr.Linkname)
			}
		}
		if hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: owner %d:%d, mtime %v", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
	}
	if !reflect.DeepEqual(got, []string{"bin/", "bin/hello", "bin/sh"}) {
		t.Errorf("layer entries %q", got)
	}
}

func TestListFlags(t *testing.T) {
	var l listFlag
	for _, s := range []string{"/a,-b", "c", `["d, e"]`} {
		if err := l.Set(s); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"/a", "-b", "c", "d, e"}; !reflect.DeepEqual(l.list(), want) {
		t.Errorf("list %q, want %q", l.list(), want)
	}
	var unset, empty listFlag
	if unset.list() != nil {
		t.Errorf("an unused flag must keep the default")
	}
	if err := empty.Set(""); err != nil || empty.list() == nil || len(empty.list()) != 0 {
		t.Errorf("-cmd= must give an empty, non-nil list: %q %v", empty.list(), err)
	}
	if err := new(listFlag).Set("[broken"); err == nil {
		t.Errorf("a broken JSON array was accepted")
	}
}

func TestRejectsUnrunnableImages(t *testing.T) {
	bin, _ := mustBinary(t)
	cases := []struct {
		o    Options
		want string
	}{
		// No binary, and the default entrypoint /kdrop is then missing.
		{Options{Tag: "x:1"}, "does not contain"},
		{Options{Tag: "x:1", Files: []File{{Src: bin, Dst: "/hello"}}, Entrypoint: []string{"/nothere"}}, "does not contain"},
		{Options{Tag: "x:1", Files: []File{{Src: bin, Dst: "/hello"}}, Entrypoint: []string{}, Cmd: []string{}}, "cannot run anything"},
		{Options{Tag: "x:1", Files: []File{{Src: "/bin/true", Dst: "/true"}}, Entrypoint: []string{"/true"}}, "dynamically linked"},
		{Options{Tag: "x:1", Files: []File{{Src: bin, Dst: "hello"}}, Entrypoint: []string{"hello"}}, "absolute"},
		{Options{Tag: "x:1", Files: []File{{Src: bin, Dst: "/a"}, {Link: "a", Dst: "/a/b"}}, Entrypoint: []string{"/a"}}, "not a directory"},
		{Options{Tag: "x:1", Files: []File{{Src: bin, Dst: "/a"}, {Link: "x", Dst: "/a"}}, Entrypoint: []string{"/a"}}, "twice"},
	}
	for _, c := range cases {
		_, _, err := Build(c.o)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Build(%+v): error %v, want one saying %q", c.o, err, c.want)
		}
	}
}
