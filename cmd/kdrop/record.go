package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/cmd/kdrop/report"
)

func recordCmd() *cobra.Command {
	var f watchFlags
	var out string
	cmd := &cobra.Command{
		Use:   "record -o FILE",
		Short: "Record a window of events to a file for an incident (then: kdrop report FILE)",
		Long: `Record traces like "kdrop watch" and writes the events, with a header
(node, kernel, kdrop version, filters) and a trailer (event and loss counts),
to a gzip-compressed file of JSON lines. Stop it with --duration or Ctrl-C;
"kdrop report FILE" turns the file into an HTML page and a Markdown summary.`,
		Example: `  sudo kdrop record -o incident.jsonl.gz --duration 5m
  kdrop report incident.jsonl.gz --html incident.html --markdown incident.md`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRecord(cmd.Context(), f, out) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&out, "output", "o", "", "file to write (gzip JSON lines); required")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long; 0 records until interrupted")
	fl.StringVar(&f.readyFile, "ready-file", "", "create this file once recording has started (for scripts)")
	f.register(fl)
	return cmd
}

// recordHeader is the first line of a recording (see cmd/kdrop/report).
type recordHeader struct {
	Record    int            `json:"kdrop_record"`
	Started   time.Time      `json:"started"`
	Version   string         `json:"version"`
	Cluster   string         `json:"cluster,omitempty"`
	Nodes     []report.Node  `json:"nodes"`
	Filters   report.Filters `json:"filters"`
	RateLimit uint32         `json:"rate_limit"`
}

func runRecord(parent context.Context, f watchFlags, out string) error {
	if out == "" {
		return fmt.Errorf("-o FILE is required: where to write the recording")
	}
	f.output = "json"
	log := newLogger(f.verbose)
	defer log.Sync()
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := newPipeline(ctx, f, log)
	if err != nil {
		return err
	}
	defer p.close()
	if err := p.ready(ctx, ""); err != nil {
		return err
	}
	// Write to a temporary name, renamed when complete: a file with the
	// final name always has its trailer.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".kdrop-record-*")
	if err != nil {
		return fmt.Errorf("creating %s: %w", out, err)
	}
	defer os.Remove(tmp.Name())
	gz := gzip.NewWriter(tmp)
	w := bufio.NewWriterSize(gz, 64<<10)

	var u unix.Utsname
	_ = unix.Uname(&u)
	node := p.node
	if node == "" {
		node, _ = os.Hostname()
	}
	hdr := recordHeader{Record: 1, Started: time.Now().UTC(), Version: version,
		Nodes:     []report.Node{{Name: node, Kernel: unix.ByteSliceToString(u.Release[:])}},
		Filters:   report.Filters{Types: f.types, Reasons: f.reasons, CIDRs: f.cidrs, Port: f.port, Namespace: f.id.namespace, Pod: f.id.pod, Selector: f.id.selector},
		RateLimit: f.rateLimit}
	if ino, err := parseNetnsIfSet(f.netns); err == nil {
		hdr.Filters.Netns = uint64(ino)
	}
	b, _ := json.Marshal(hdr)
	w.Write(append(b, '\n'))
	if f.readyFile != "" {
		if err := os.WriteFile(f.readyFile, nil, 0o644); err != nil {
			return fmt.Errorf("--ready-file: %w", err)
		}
	}
	log.Info("recording", zap.String("file", out))

	if f.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.duration)
		defer cancel()
	}
	var events, lost uint64
	var buf []byte
	lostNotice := func() {
		if n := p.newLost(); n > 0 {
			lost += n
			fmt.Fprintf(w, `{"time":%q,"type":"lost","node":%q,"lost":%d}`+"\n", time.Now().UTC().Format(time.RFC3339Nano), node, n)
		}
	}
	p.every(ctx, time.Second, lostNotice)
	err = p.run(ctx, func(rec *record) {
		buf = rec.appendJSON(buf[:0])
		w.Write(append(buf, '\n'))
		events++
	})
	if err != nil {
		return err
	}
	p.t.Lock()
	lostNotice()
	fmt.Fprintf(w, `{"kdrop_record_end":1,"ended":%q,"events":%d,"lost":%d}`+"\n", time.Now().UTC().Format(time.RFC3339Nano), events, lost)
	p.t.Unlock()
	if err := w.Flush(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	log.Info("recorded", zap.String("file", out), zap.Uint64("lines", events), zap.Uint64("lost", lost))
	return nil
}

func parseNetnsIfSet(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	return parseNetns(s)
}

func reportCmd() *cobra.Command {
	var html, md string
	cmd := &cobra.Command{
		Use:   "report FILE",
		Short: "Turn a recording into an HTML page and a Markdown summary, with hints on what to fix",
		Example: `  kdrop report incident.jsonl.gz                       # Markdown summary on stdout
  kdrop report incident.jsonl.gz --html incident.html --markdown incident.md`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			rec, err := report.Read(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			write := func(path string, fn func(*os.File) error) error {
				if path == "" {
					return nil
				}
				if path == "-" {
					return fn(os.Stdout)
				}
				o, err := os.Create(path)
				if err != nil {
					return err
				}
				if err := fn(o); err != nil {
					o.Close()
					return err
				}
				return o.Close()
			}
			if html == "" && md == "" {
				md = "-"
			}
			if err := write(html, func(o *os.File) error { return report.WriteHTML(o, rec) }); err != nil {
				return fmt.Errorf("--html: %w", err)
			}
			if err := write(md, func(o *os.File) error { return report.WriteMarkdown(o, rec) }); err != nil {
				return fmt.Errorf("--markdown: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&html, "html", "", "write a self-contained HTML page here (- for stdout)")
	cmd.Flags().StringVar(&md, "markdown", "", "write a Markdown summary here (- for stdout; the default when neither is given)")
	return cmd
}
