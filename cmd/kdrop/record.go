package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/recording"
	"github.com/kdrop/kdrop/cmd/kdrop/tail"
	"github.com/kdrop/kdrop/k8s"
)

type recordFlags struct {
	traceFlags
	agents    tail.Agents
	out, from string
	duration  time.Duration
	readyFile string
}

func recordCmd() *cobra.Command {
	var f recordFlags
	cmd := &cobra.Command{
		Use:   "record -o FILE",
		Short: "Record a window of events to a file for an incident (then: kdrop report FILE)",
		Long: `Record writes the events, with a header (cluster, nodes, kernels, kdrop
version, filters) and a trailer (event and loss counts), to a gzip-compressed
file of JSON lines. Stop it with --duration or Ctrl-C; "kdrop report FILE"
turns the file into an HTML page and a Markdown summary with hints.

  --from watch  (default) traces this machine, like "kdrop watch" (needs root)
  --from tail   records the whole cluster through the agents, like "kdrop tail";
                agents that restart or disappear are recorded as gaps

With --from tail, only the stream filters apply (--type, --reason, --cidr,
--port, --proto, --namespace, --pod); the agents' own settings decide the
rest.

The file is flushed every second. A write error (a full disk) stops the
recording at once with a non-zero exit; what reached the disk stays under
the file's name, and kdrop report reads it. Nothing written is deleted.`,
		Example: `  sudo kdrop record -o incident.jsonl.gz --duration 5m
  kdrop record --from tail -o incident.jsonl.gz -n shop      # every node, until Ctrl-C
  kdrop report incident.jsonl.gz --html incident.html --markdown incident.md`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.out == "" {
				return fmt.Errorf("-o FILE is required: where to write the recording")
			}
			switch f.from {
			case "watch":
				return recordWatch(cmd.Context(), &f)
			case "tail":
				for _, name := range traceOnly() {
					if fl := cmd.Flags().Lookup(name); fl != nil && fl.Changed {
						return fmt.Errorf("--%s applies to --from watch only: with --from tail the agents' own settings decide it", name)
					}
				}
				return recordTail(cmd.Context(), &f)
			}
			return fmt.Errorf("--from %q: use watch (this machine) or tail (every agent in the cluster)", f.from)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.out, "output", "o", "", "file to write (gzip JSON lines); required")
	fl.StringVar(&f.from, "from", "watch", "where events come from: watch (trace this machine) or tail (the cluster's agents)")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long; 0 records until interrupted")
	fl.StringVar(&f.readyFile, "ready-file", "", "create this file once recording has started, with --from tail once every agent streams (for scripts)")
	f.register(fl)
	registerAgents(fl, &f.agents)
	return cmd
}

// finish ends a recording (early, if why is not "") and logs what it
// holds.
func finish(r *recording.Writer, why, path string, log *zap.Logger) error {
	if err := r.Finish(why); err != nil {
		return err
	}
	log.Info("recorded", zap.String("file", path), zap.Uint64("lines", r.Events), zap.Uint64("lost_lines", r.Lost), zap.Uint64("missed", r.Missed))
	if r.Missed > 0 {
		log.Warn("the recording's counts are short: occurrences were missed (kdrop report says why)", zap.Uint64("missed", r.Missed))
	}
	return nil
}

// flushing flushes a recording while it is written (every second), so a
// write error (a full disk) is said at once: the first one is logged, stops
// the recording (stop) and is kept in err.
type flushing struct {
	r    *recording.Writer
	log  *zap.Logger
	stop func()
	err  error
}

func (w *flushing) flush() {
	if w.err != nil {
		return
	}
	if w.err = w.r.Flush(); w.err != nil {
		w.log.Error("the recording cannot be written: stopping, and keeping what reached the disk", zap.Error(w.err))
		w.stop()
	}
}

// recordWatch records what this machine's kernel does.
func recordWatch(parent context.Context, f *recordFlags) error {
	log := newLogger(f.verbose)
	defer log.Sync()
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := newPipeline(ctx, &f.traceFlags, log)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Ready(ctx, ""); err != nil {
		return err
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	node := p.Node
	if node == "" {
		node, _ = os.Hostname()
	}
	r, err := recording.Create(f.out, line.Header{Version: version, From: "watch", RateLimit: f.rateLimit, Filters: f.filter.Header(),
		Nodes: []line.Node{{Name: node, Kernel: unix.ByteSliceToString(u.Release[:])}}})
	if err != nil {
		return err
	}
	if err := enrich.WriteReadyFile(f.readyFile); err != nil {
		finish(r, err.Error(), f.out, log)
		return err
	}
	log.Info("recording", zap.String("file", f.out))
	// counted from now: loading and syncing are not part of the window
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()
	w := &flushing{r: r, log: log, stop: cancel}
	every := func() { // loss notices, and a full disk said at once
		r.LossNotices(node, p.NewLoss())
		w.flush()
	}
	p.Every(ctx, time.Second, every)
	if err := p.Run(ctx, r.Event); err != nil {
		finish(r, "tracing failed: "+err.Error(), f.out, log)
		return err
	}
	p.Locked(every)
	if w.err != nil {
		finish(r, w.err.Error(), f.out, log)
		return w.err
	}
	return finish(r, "", f.out, log)
}

// recordTail records the cluster through its agents.
func recordTail(parent context.Context, f *recordFlags) error {
	log := newLogger(f.verbose)
	defer log.Sync()
	filter := f.filter
	filter.Netns, filter.Selector = "", "" // --from watch only
	t, err := newTailer(parent, filter, &f.id, f.agents)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()
	hdr := line.Header{Version: version, From: "tail", Cluster: k8s.ClusterName(f.id.kubeconfig, f.id.context), Filters: filter.Header()}
	if hdr.Nodes, err = t.Nodes(ctx); err != nil {
		return err
	}
	r, err := recording.Create(f.out, hdr)
	if err != nil {
		return err
	}
	log.Info("recording the cluster's agents", zap.String("file", f.out), zap.Int("nodes", len(hdr.Nodes)))
	// Ready once every agent found at the start streams, so a script can
	// start the incident knowing nothing is missed.
	var mu sync.Mutex // fn runs on a stream's goroutine
	var readyErr error
	t.WhenStreaming(hdr.Nodes, func() {
		mu.Lock()
		defer mu.Unlock()
		if readyErr = enrich.WriteReadyFile(f.readyFile); readyErr != nil {
			cancel()
		}
	})
	w := &flushing{r: r, log: log, stop: cancel}
	flushed := time.Now()
	t.Run(ctx, func(lines []tail.Line) {
		for _, l := range lines {
			r.Raw(l.Raw)
			switch l.Kind { // counted as the agents report it
			case line.KindNotice:
				r.Lost += l.Lost
				r.Missed += l.Missed
			case line.KindEvent:
				r.Events++
			}
		}
		if time.Since(flushed) >= time.Second {
			flushed = time.Now()
			w.flush()
		}
	})
	// A node still unseen at the end is a gap up to now.
	now := time.Now().UTC()
	for node, since := range t.OpenGaps() {
		r.Raw(tail.NoticeLine(now, node, "no agent stream from node "+node+" since "+since.Format(time.RFC3339)+" until the recording ended", since, now))
	}
	mu.Lock()
	err = readyErr
	mu.Unlock()
	var unreached error
	if !t.Reached() {
		unreached = errNoAgent(f.agents, "in "+f.out)
	}
	for _, e := range []error{w.err, err, unreached} {
		if e != nil {
			finish(r, e.Error(), f.out, log)
			return e
		}
	}
	return finish(r, "", f.out, log)
}
