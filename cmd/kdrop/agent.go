package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/agent"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
)

type agentFlags struct {
	traceFlags
	listen     string
	logFormat  string
	maxStreams int
	heartbeat  time.Duration
}

func agentCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run on a node as the DaemonSet's process: events to stdout, metrics and a stream over HTTP",
		Long: `The agent traces like "kdrop watch -o json", names pods through the API server,
and serves on --listen:

  /metrics  Prometheus counters (by event type, reason, namespace, workload),
            lost lines (counts still exact), missed occurrences (counts
            short), occurrences coarsened because the flow table was full
            (kdrop_coarsened_total: counts exact, destinations not told
            apart), hooks and their attach mode, identity state
  /healthz  the process is alive
  /readyz   hooks are attached and pod identity has synced once
  /events   a live NDJSON stream of events, with the filters of kdrop watch as
            query parameters (type, reason, cidr, port, proto, netns,
            namespace, pod). Callers must present a bearer token (Authorization,
            or X-Kdrop-Authorization through the API server's pod proxy, which
            strips Authorization); it is checked with a TokenReview and the
            caller must be allowed "get" on "events" in API group kdrop.dev
            in the agent's namespace ($POD_NAMESPACE), a SubjectAccessReview:
            a RoleBinding there or a ClusterRoleBinding to kdrop-viewer.
            At most --max-streams streams at once; more get 503 and
            Retry-After.

Every event also goes to stdout as a JSON line, so "kubectl logs" works
with no client at all.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", ":9965", "address for /metrics, /healthz, /readyz and /events")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format on stderr: json or console")
	fl.IntVar(&f.maxStreams, "max-streams", 32, fmt.Sprintf("most /events streams served at once (each buffers up to %d lines); more are refused with 503 and Retry-After", stream.SubBuffer))
	fl.DurationVar(&f.heartbeat, "heartbeat", 15*time.Second, "how long an /events stream may be quiet before it gets a heartbeat line (kdrop tail calls a stream silent past --idle-timeout lost)")
	f.register(fl)
	fl.Lookup("identity").DefValue = "on"
	f.id.mode = "on"
	return cmd
}

func agentLogger(format string, verbose bool) (*zap.Logger, error) {
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.TimeKey = "time"
		cfg.EncoderConfig.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.DisableStacktrace = true
	default:
		return nil, fmt.Errorf("--log-format %q: use json or console", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(zapcore.InfoLevel)
	if verbose {
		cfg.Level = zap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	cfg.OutputPaths = []string{"stderr"} // stdout is the event stream
	return cfg.Build()
}

func runAgent(parent context.Context, f *agentFlags) error {
	if f.heartbeat < time.Second {
		return fmt.Errorf("--heartbeat %v: must be at least 1s", f.heartbeat)
	}
	if f.maxStreams < 1 {
		return fmt.Errorf("--max-streams %d: must be at least 1 (the limit of /events streams served at once)", f.maxStreams)
	}
	log, err := agentLogger(f.logFormat, f.verbose)
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg, err := f.id.restConfig()
	if err != nil {
		return err
	}
	f.id.rest = cfg
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ln, err := agent.Listen(ctx, f.listen, 30*time.Second, log)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	p, err := newPipeline(ctx, &f.traceFlags, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer p.Close()
	return agent.Run(ctx, p, ln, agent.Config{MaxStreams: f.maxStreams, Heartbeat: f.heartbeat, Clientset: cs, Namespace: stream.OwnNamespace(), Stdout: os.Stdout, Log: log})
}
