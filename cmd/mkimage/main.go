// Command mkimage builds container images without a Docker engine or a
// registry: an empty base and one layer. With its defaults it builds the kdrop
// image: the static binary as /kdrop and the same config as deploy/Dockerfile
// (ENTRYPOINT ["/kdrop"], CMD ["agent"], OCI labels). It writes a
// docker-archive tarball (the format of `docker save`), which `docker load`,
// `ctr images import`, `kind load image-archive` and `k3s ctr images import`
// all read.
//
//	go run ./cmd/mkimage -binary bin/kdrop -tag kdrop:v0.1.0 -out out/kdrop-image.tar
//
// Other images (the test cluster's pause image, a busybox toolbox) leave out
// the kdrop binary and list their files, links, entrypoint, command and
// environment:
//
//	go run ./cmd/mkimage -binary= -tag example.local/busybox:1 -title busybox \
//	    -file /bin/busybox=/bin/busybox -symlink busybox=/bin/sh \
//	    -entrypoint /bin/sh -cmd= -env PATH=/bin -out out/busybox.tar
//
// The image is reproducible: the layer's file times and the config's creation
// time are $SOURCE_DATE_EPOCH (0, 1970-01-01, when unset), owners are root,
// and nothing else varies, so the same inputs always give the same digest.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Defaults shared with deploy/Dockerfile; keep them in step.
const (
	binaryPath    = "kdrop" // in the layer, i.e. /kdrop
	defaultSource = "https://github.com/kdrop/kdrop"
	defaultTitle  = "kdrop"
)

var (
	entrypoint = []string{"/kdrop"}
	command    = []string{"agent"}
)

// Options describe one image. The zero value of every field but Binary and
// Tag means the kdrop image's default.
type Options struct {
	Binary  string    // static Linux binary to put at /kdrop; "" for none
	Tag     string    // e.g. kdrop:v0.1.0
	Version string    // org.opencontainers.image.version; "" means the tag's tag
	Source  string    // org.opencontainers.image.source
	Title   string    // org.opencontainers.image.title; "" means kdrop
	Created time.Time // layer file times and config creation time

	// Entrypoint and Cmd: nil means the kdrop image's (["/kdrop"],
	// ["agent"]); an empty, non-nil slice means none.
	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=VALUE
	Files      []File   // more layer entries, after /kdrop, in this order
}

// File is one more entry in the layer: a copy of the host file Src, or, when
// Link is set, a symbolic link to Link. Dst is the absolute path in the image.
type File struct {
	Src  string
	Dst  string
	Link string
}

// listFlag is a repeatable flag holding a list: each use appends, a value
// starting with "[" is a JSON array (for arguments holding commas, as in
// Dockerfile's exec form), any other value is split at commas. Using the flag
// at all replaces the default; "-cmd=" sets an empty list.
type listFlag struct {
	vals []string
	set  bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

func (l *listFlag) Set(s string) error {
	if !l.set {
		l.vals, l.set = []string{}, true
	}
	switch {
	case s == "":
	case strings.HasPrefix(s, "["):
		var a []string
		if err := json.Unmarshal([]byte(s), &a); err != nil {
			return fmt.Errorf("not a JSON array of strings: %w", err)
		}
		l.vals = append(l.vals, a...)
	default:
		l.vals = append(l.vals, strings.Split(s, ",")...)
	}
	return nil
}

// list returns the values, or nil when the flag was not used.
func (l *listFlag) list() []string {
	if !l.set {
		return nil
	}
	return l.vals
}

// pairFlag is a repeatable A=B flag.
type pairFlag struct {
	pairs [][2]string
}

func (p *pairFlag) String() string { return "" }

func (p *pairFlag) Set(s string) error {
	a, b, ok := strings.Cut(s, "=")
	if !ok || a == "" || b == "" {
		return fmt.Errorf("%q: want A=B", s)
	}
	p.pairs = append(p.pairs, [2]string{a, b})
	return nil
}

func main() {
	var o Options
	var ep, cmd listFlag
	var env []string
	var files, links pairFlag
	out := flag.String("out", "out/kdrop-image.tar", "docker-archive tarball to write")
	flag.StringVar(&o.Binary, "binary", "bin/kdrop", "static Linux binary to put at /kdrop (\"\" for none)")
	flag.StringVar(&o.Tag, "tag", "kdrop:dev", "image reference recorded in the archive (RepoTags)")
	flag.StringVar(&o.Version, "version", "", "org.opencontainers.image.version label (default: the tag's tag)")
	flag.StringVar(&o.Source, "source", defaultSource, "org.opencontainers.image.source label")
	flag.StringVar(&o.Title, "title", defaultTitle, "org.opencontainers.image.title label")
	flag.Var(&ep, "entrypoint", "ENTRYPOINT: comma-separated, a JSON array, or repeated (default /kdrop)")
	flag.Var(&cmd, "cmd", "CMD: comma-separated, a JSON array, or repeated; -cmd= for none (default agent)")
	flag.Func("env", "KEY=VALUE for the image's environment (repeatable)", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return fmt.Errorf("%q: want KEY=VALUE", s)
		}
		env = append(env, s)
		return nil
	})
	flag.Var(&files, "file", "SRC=DST: copy host file SRC to DST in the image (repeatable)")
	flag.Var(&links, "symlink", "TARGET=LINK: a symbolic link LINK -> TARGET in the image, as ln -s (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: mkimage [flags]\n\n"+
			"Builds an image (FROM scratch, one layer) as a docker-archive tarball;\n"+
			"by default the kdrop image: /kdrop, ENTRYPOINT [/kdrop], CMD [agent].\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	o.Entrypoint, o.Cmd, o.Env = ep.list(), cmd.list(), env
	for _, f := range files.pairs {
		o.Files = append(o.Files, File{Src: f[0], Dst: f[1]})
	}
	for _, l := range links.pairs {
		o.Files = append(o.Files, File{Link: l[0], Dst: l[1]})
	}
	created, err := sourceDateEpoch()
	if err != nil {
		fatal(err)
	}
	o.Created = created

	img, ref, err := Build(o)
	if err != nil {
		fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fatal(err)
	}
	// Write next to the target and rename, so an interrupted run never
	// leaves a truncated archive that looks finished.
	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		fatal(fmt.Errorf("write %s: %w", *out, err))
	}
	if err := os.Rename(tmp, *out); err != nil {
		fatal(err)
	}
	digest, err := img.Digest()
	if err != nil {
		fatal(err)
	}
	fmt.Printf("%s %s %s\n", *out, ref, digest)
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
	os.Exit(1)
}

// sourceDateEpoch returns $SOURCE_DATE_EPOCH (seconds) as a time, or the Unix
// epoch when it is unset (https://reproducible-builds.org/specs/source-date-epoch/).
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want a non-negative number of seconds", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// entry is one file, directory or symlink of the layer.
type entry struct {
	name string // relative, as in the layers docker makes: "bin/busybox"
	typ  byte
	mode int64
	data []byte
	link string
}

// Build returns the image and the tag it is to be saved under.
func Build(o Options) (v1.Image, name.Tag, error) {
	// WeakValidation accepts short names like kdrop:v0.1.0; the archive
	// records them as given, and containerd normalises them on import to
	// docker.io/library/kdrop:v0.1.0, which is what a pod's `image: kdrop:v0.1.0` means.
	ref, err := name.NewTag(o.Tag, name.WeakValidation)
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("-tag %q: %w", o.Tag, err)
	}
	if o.Version == "" {
		o.Version = ref.TagStr()
	}
	if o.Source == "" {
		o.Source = defaultSource
	}
	if o.Title == "" {
		o.Title = defaultTitle
	}
	if o.Entrypoint == nil {
		o.Entrypoint = entrypoint
	}
	if o.Cmd == nil {
		o.Cmd = command
	}
	entries, arch, createdBy, err := collect(o)
	if err != nil {
		return nil, name.Tag{}, err
	}
	if err := checkRunnable(o, entries); err != nil {
		return nil, name.Tag{}, err
	}
	layerTar, err := layerTarball(entries, o.Created)
	if err != nil {
		return nil, name.Tag{}, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, name.Tag{}, err
	}
	created := v1.Time{Time: o.Created}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   created,
			CreatedBy: createdBy,
			Comment:   o.Title + " " + o.Version,
		},
	})
	if err != nil {
		return nil, name.Tag{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, name.Tag{}, err
	}
	cf = cf.DeepCopy()
	cf.Created = created
	cf.OS = "linux"
	cf.Architecture = arch
	if len(o.Entrypoint) > 0 {
		cf.Config.Entrypoint = o.Entrypoint
	}
	if len(o.Cmd) > 0 {
		cf.Config.Cmd = o.Cmd
	}
	if len(o.Env) > 0 {
		cf.Config.Env = o.Env
	}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.version": o.Version,
		"org.opencontainers.image.source":  o.Source,
		"org.opencontainers.image.title":   o.Title,
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, name.Tag{}, err
	}
	return img, ref, nil
}

// collect reads the binary and the files into layer entries (parent
// directories first), and returns the image architecture, taken from the
// binary or else from the first ELF executable, and the history line.
func collect(o Options) ([]entry, string, string, error) {
	var entries []entry
	var steps []string
	arch := ""
	seen := map[string]bool{}
	setArch := func(what, a string) error {
		if arch != "" && a != arch {
			return fmt.Errorf("%s is %s, but the image is %s", what, a, arch)
		}
		arch = a
		return nil
	}
	if o.Binary != "" {
		bin, err := os.ReadFile(o.Binary)
		if err != nil {
			return nil, "", "", err
		}
		a, err := checkStaticELF(bin)
		if err != nil {
			return nil, "", "", fmt.Errorf("%s: %w", o.Binary, err)
		}
		arch = a
		entries = append(entries, entry{name: binaryPath, typ: tar.TypeReg, mode: 0o755, data: bin})
		seen[binaryPath] = true
		steps = append(steps, "COPY kdrop /kdrop")
	}
	for _, f := range o.Files {
		if !path.IsAbs(f.Dst) {
			return nil, "", "", fmt.Errorf("%q: the path in the image must be absolute", f.Dst)
		}
		rel := strings.TrimPrefix(path.Clean(f.Dst), "/")
		if rel == "" || seen[rel] {
			return nil, "", "", fmt.Errorf("%s: empty or given twice", f.Dst)
		}
		// Parent directories get entries of their own, so every unpacker
		// makes them 0755 root-owned rather than guessing.
		for i := 0; i < len(rel); i++ {
			if rel[i] != '/' {
				continue
			}
			dir := rel[:i+1]
			if seen[dir] {
				continue
			}
			if seen[rel[:i]] {
				return nil, "", "", fmt.Errorf("%s: /%s is a file, not a directory", f.Dst, rel[:i])
			}
			seen[dir] = true
			entries = append(entries, entry{name: dir, typ: tar.TypeDir, mode: 0o755})
		}
		seen[rel] = true
		if f.Link != "" {
			entries = append(entries, entry{name: rel, typ: tar.TypeSymlink, mode: 0o777, link: f.Link})
			steps = append(steps, "LINK "+f.Dst+" -> "+f.Link)
			continue
		}
		st, err := os.Stat(f.Src)
		if err != nil {
			return nil, "", "", err
		}
		if !st.Mode().IsRegular() {
			return nil, "", "", fmt.Errorf("%s: not a regular file", f.Src)
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, "", "", err
		}
		mode := int64(0o644)
		if st.Mode().Perm()&0o111 != 0 {
			mode = 0o755
		}
		// ELF files are checked as the binary is: a dynamically linked
		// one cannot run in an image without a loader.
		if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
			a, err := checkStaticELF(data)
			if err != nil {
				return nil, "", "", fmt.Errorf("%s: %w", f.Src, err)
			}
			if err := setArch(f.Src, a); err != nil {
				return nil, "", "", err
			}
		}
		entries = append(entries, entry{name: rel, typ: tar.TypeReg, mode: mode, data: data})
		steps = append(steps, "COPY "+filepath.Base(f.Src)+" "+f.Dst)
	}
	if arch == "" {
		arch = runtime.GOARCH
	}
	return entries, arch, strings.Join(steps, "; ") + " # mkimage", nil
}

// checkRunnable rejects an image whose first argument is an absolute path the
// layer does not hold: the container would fail at start with "no such file".
func checkRunnable(o Options, entries []entry) error {
	argv := append(append([]string{}, o.Entrypoint...), o.Cmd...)
	if len(argv) == 0 {
		return errors.New("no entrypoint and no command: the image cannot run anything")
	}
	if !path.IsAbs(argv[0]) {
		return nil
	}
	want := strings.TrimPrefix(path.Clean(argv[0]), "/")
	for _, e := range entries {
		if e.name == want && e.typ != tar.TypeDir {
			return nil
		}
	}
	return fmt.Errorf("the image runs %s, which it does not contain", argv[0])
}

// layerTarball is the uncompressed layer: the entries in order, owned by
// root, with every time set to mtime. Names are relative, as in the layers
// docker and buildkit make.
func layerTarball(entries []entry, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     e.name,
			Linkname: e.link,
			Mode:     e.mode,
			Size:     int64(len(e.data)),
			ModTime:  mtime,
			Uname:    "root",
			Gname:    "root",
			Format:   tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkStaticELF rejects what cannot run in a FROM-scratch image: anything but
// a Linux ELF executable, and dynamically linked binaries (there is no libc or
// loader in the image; the failure would be a baffling "no such file or
// directory" at container start). It returns the image architecture.
func checkStaticELF(b []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("not an ELF binary (build it with GOOS=linux): %w", err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("ELF type %v is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errors.New("dynamically linked (has an ELF interpreter): build with CGO_ENABLED=0")
		}
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return "amd64", nil
	case elf.EM_AARCH64:
		return "arm64", nil
	default:
		return "", fmt.Errorf("ELF machine %v: only amd64 and arm64 are supported", f.Machine)
	}
}
