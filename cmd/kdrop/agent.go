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
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/k8sevents"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
)

type agentFlags struct {
	traceFlags
	listen       string
	streamListen string
	streamAcct   string
	logFormat    string
	maxStreams   int
	k8sEvents    bool
	eventsRate   int
	heartbeat    time.Duration
}

func agentCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run on a node as the DaemonSet's process: events to stdout, metrics and a stream over HTTP",
		Long: `The agent traces like "kdrop watch -o json", names pods through the API server,
and serves on --listen (plain HTTP, for Prometheus and the kubelet):

  /metrics  Prometheus counters (by event type, reason, namespace, workload),
            lost lines (counts still exact), missed occurrences (counts
            short), occurrences coarsened because the flow table was full
            (kdrop_coarsened_total: counts exact, destinations not told
            apart), hooks and their attach mode, identity state
  /healthz  the process is alive
  /readyz   hooks are attached and pod identity has synced once

and on --stream-listen (HTTPS, a certificate made at start):

  /events   a live NDJSON stream of events, with the filters of kdrop watch as
            query parameters (type, reason, cidr, port, proto, netns,
            namespace, pod). Callers show a stream token, never their own
            credentials: a token of service account --stream-account in the
            agent's namespace ($POD_NAMESPACE), for audience kdrop.dev/stream
            only, bound to this node ($NODE_NAME or --node). kdrop tail asks
            the API server for one (a TokenRequest: "create" on
            serviceaccounts/token for that account, which ClusterRole
            kdrop-viewer grants) and sends it in X-Kdrop-Authorization through
            the API server's pod proxy. The API server refuses such a token,
            and so does any other node's agent. The agent checks it with a
            TokenReview, at most 5 new tokens a second.
            At most --max-streams streams at once; more get 503 and
            Retry-After.

Every event also goes to stdout as a JSON line, so "kubectl logs" works
with no client at all.

Findings also become Kubernetes Events (events.k8s.io/v1, type Warning) on
the object they are about, one series per object and reason (and port, for
NothingListening) whose count is the number of occurrences ("kubectl
describe pod", "kubectl events --for pod/NAME", "kubectl get events
--field-selector reason=ListenQueueOverflow"):

` + k8sevents.ReasonsHelp(2, 78) + `

A series is written at most every 10 s and the node writes Events at
--k8s-events-per-minute (default 60) a minute, in a token bucket that also
allows a burst of a sixth of that at once (10): at most rate + burst in any
minute (70 by default). Occurrences meanwhile are added to the next write's
count, never dropped from it. --k8s-events=false turns them off.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", ":9965", "address for /metrics, /healthz and /readyz (plain HTTP)")
	fl.StringVar(&f.streamListen, "stream-listen", ":9966", "address for /events (HTTPS); kdrop tail's --agent-port")
	fl.StringVar(&f.streamAcct, "stream-account", stream.DefaultAccount, "service account, in the agent's namespace, whose stream tokens open /events (kdrop tail's --stream-account)")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format on stderr: json or console")
	fl.IntVar(&f.maxStreams, "max-streams", 32, fmt.Sprintf("most /events streams served at once (each buffers up to %d lines); more are refused with 503 and Retry-After", stream.SubBuffer))
	fl.BoolVar(&f.k8sEvents, "k8s-events", true, "post findings as Kubernetes Events on the pods and Services they are about (needs create and patch on events.k8s.io events)")
	fl.IntVar(&f.eventsRate, "k8s-events-per-minute", k8sevents.DefaultPerMinute, "Kubernetes Events this node writes (creates or updates) a minute, after a burst of a sixth of it: at most this plus the burst in any minute; occurrences past it are folded into the next write's count")
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
	if f.eventsRate < 1 {
		return fmt.Errorf("--k8s-events-per-minute %d: must be at least 1 (turn Events off with --k8s-events=false)", f.eventsRate)
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
	acct := stream.Account{Namespace: stream.OwnNamespace(), Name: f.streamAcct}
	if acct.Namespace == "" {
		log.Warn("the agent's namespace is unknown (no $POD_NAMESPACE, no service account namespace file): /events will refuse every caller")
	}
	ln, err := agent.Listen(ctx, f.listen, 30*time.Second, log)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", f.listen, err)
	}
	defer ln.Close()
	sln, err := agent.Listen(ctx, f.streamListen, 30*time.Second, log)
	if err != nil {
		return fmt.Errorf("--stream-listen %s: %w", f.streamListen, err)
	}
	defer sln.Close()
	p, err := newPipeline(ctx, &f.traceFlags, log)
	if err != nil {
		return err
	}
	defer p.Close()
	ac := agent.Config{MaxStreams: f.maxStreams, Heartbeat: f.heartbeat, Clientset: cs, Account: acct, Stdout: os.Stdout, Log: log}
	if f.k8sEvents {
		// A clientset of its own: client-go's rate limiter is per clientset,
		// and Events must not wait behind stream token reviews, nor these
		// behind Events.
		ecs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		ecfg := k8sevents.Config{Node: p.Node, PerMinute: f.eventsRate, Log: log}
		if p.Res != nil { // a nil *k8s.Resolver in the interface would not be nil
			ecfg.Services = p.Res
		}
		ac.Events = k8sevents.New(ecs, ecfg)
	}
	return agent.Run(ctx, p, ln, sln, ac)
}
