// Command mkimage builds the kdrop container image without a Docker engine or
// a registry: an empty base, one layer holding the static binary as /kdrop,
// and the same config as deploy/Dockerfile (ENTRYPOINT ["/kdrop"],
// CMD ["agent"], OCI labels). It writes a docker-archive tarball (the format
// of `docker save`), which `docker load`, `ctr images import`, `kind load
// image-archive` and `k3s ctr images import` all read.
//
//	go run ./cmd/mkimage -binary bin/kdrop -tag kdrop:v0.1.0 -out out/kdrop-image.tar
//
// The image is reproducible: the layer's file times and the config's creation
// time are $SOURCE_DATE_EPOCH (0, 1970-01-01, when unset), owners are root,
// and nothing else varies, so the same binary always gives the same digest.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
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
)

var (
	entrypoint = []string{"/kdrop"}
	command    = []string{"agent"}
)

// Options describe one image.
type Options struct {
	Binary  string    // path of the static Linux binary
	Tag     string    // e.g. kdrop:v0.1.0
	Version string    // org.opencontainers.image.version; "" means the tag's tag
	Source  string    // org.opencontainers.image.source
	Created time.Time // layer file times and config creation time
}

func main() {
	var o Options
	out := flag.String("out", "out/kdrop-image.tar", "docker-archive tarball to write")
	flag.StringVar(&o.Binary, "binary", "bin/kdrop", "static Linux binary to put at /kdrop")
	flag.StringVar(&o.Tag, "tag", "kdrop:dev", "image reference recorded in the archive (RepoTags)")
	flag.StringVar(&o.Version, "version", "", "org.opencontainers.image.version label (default: the tag's tag)")
	flag.StringVar(&o.Source, "source", defaultSource, "org.opencontainers.image.source label")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: mkimage [flags]\n\nBuilds the kdrop image (FROM scratch, /kdrop) as a docker-archive tarball.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
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
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, name.Tag{}, err
	}
	arch, err := checkStaticELF(bin)
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("%s: %w", o.Binary, err)
	}
	layerTar, err := layerTarball(bin, o.Created)
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
			CreatedBy: "COPY kdrop /kdrop # mkimage",
			Comment:   "kdrop " + o.Version,
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
	cf.Config.Entrypoint = entrypoint
	cf.Config.Cmd = command
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.version": o.Version,
		"org.opencontainers.image.source":  o.Source,
		"org.opencontainers.image.title":   "kdrop",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, name.Tag{}, err
	}
	return img, ref, nil
}

// layerTarball is the uncompressed layer: one regular file, kdrop, mode 0755,
// owned by root, with every time set to mtime. Names are relative, as in the
// layers docker and buildkit make.
func layerTarball(bin []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     binaryPath,
		Mode:     0o755,
		Size:     int64(len(bin)),
		ModTime:  mtime,
		Uname:    "root",
		Gname:    "root",
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
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
