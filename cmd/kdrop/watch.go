package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stdout"
)

type watchFlags struct {
	traceFlags
	output    string
	duration  time.Duration
	count     uint64
	readyFile string
}

func watchCmd() *cobra.Command {
	var f watchFlags
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Stream drop, overflow and unreachable events live",
		Long: `Stream kernel drop events live, as a table (default) or JSON lines (-o json).

Each line is one event, or a summary ("+N" in COUNT) of the occurrences of
one flow (type, reason, network namespace, destination) that the per-flow rate
limit folded together in the last second; summaries come every second while a
flow is busy, so COUNT adds up to the kernel's own counters at any moment,
within a second. Filters are applied in the kernel.

When one second brings more distinct flows than kdrop's table holds (65,536:
a port scan, say), further flows are rate-limited per (type, reason, network
namespace) instead: their lines say "coarse":"netns" and carry no
destination in summaries; counts stay exact.

Warnings on stderr tell two kinds of loss apart: "lost lines" (the ring
buffer was full: counts still exact, those events come back in summaries)
and "missed" (the kernel skipped kdrop's program: counts short).

The JSON lines are described, field by field with units, in
cmd/kdrop/line/schema.json.`,
		Example: `  # everything, as a table
  sudo kdrop watch

  # accept/SYN queue overflows only, as JSON, for one minute
  sudo kdrop watch --type overflow -o json --duration 1m

  # why are packets to 10.244.0.0/16 port 80 dropped?
  sudo kdrop watch --cidr 10.244.0.0/16 --port 80 --reason NO_SOCKET,NETFILTER_DROP`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runWatch(cmd.Context(), &f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json (one JSON object per line)")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long (e.g. 30s, 5m); 0 runs until interrupted")
	fl.Uint64VarP(&f.count, "count", "c", 0, "stop after this many lines; 0 for no limit")
	fl.StringVar(&f.readyFile, "ready-file", "", "create this file once every hook is attached and pod identity synced (for scripts)")
	f.register(fl)
	return cmd
}

func runWatch(parent context.Context, f *watchFlags) error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: use table or json", f.output)
	}
	log := newLogger(f.verbose)
	defer log.Sync()
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := newPipeline(ctx, &f.traceFlags, log)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Ready(ctx, f.readyFile); err != nil {
		return err
	}
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()

	out := stdout.New(os.Stdout, f.output == "table", f.count, cancel)
	defer out.Flush()
	// Flush at least every 200ms so a quiet stream still shows promptly,
	// and report loss as soon as it is known.
	p.Every(ctx, 200*time.Millisecond, func() {
		out.Flush()
		enrich.WarnLoss(log, p.NewLoss(), false)
	})
	if err := p.Run(ctx, out.Event); err != nil {
		return err
	}
	p.Locked(func() { out.Flush() })
	if st, err := p.T.Stats(); err == nil {
		enrich.WarnLoss(log, st, true)
	}
	return nil
}
