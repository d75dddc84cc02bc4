package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

type agentFlags struct {
	listen     string
	logFormat  string
	maxStreams int
}

func agentCmd() *cobra.Command {
	var f watchFlags
	var a agentFlags
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
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), f, a) },
	}
	fl := cmd.Flags()
	fl.StringVar(&a.listen, "listen", ":9965", "address for /metrics, /healthz, /readyz and /events")
	fl.StringVar(&a.logFormat, "log-format", "json", "log format on stderr: json or console")
	fl.IntVar(&a.maxStreams, "max-streams", 32, fmt.Sprintf("most /events streams served at once (each buffers up to %d lines); more are refused with 503 and Retry-After", subBuffer))
	f.register(fl)
	fl.Lookup("identity").DefValue = "on"
	f.id.mode = "on"
	f.output = "json"
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

// restConfig is the cluster config identity and authorization share.
func (f *identityFlags) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: f.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no cluster configuration (in-cluster or --kubeconfig): %w", err)
	}
	return cfg, nil
}

func runAgent(parent context.Context, f watchFlags, a agentFlags) error {
	if a.maxStreams < 1 {
		return fmt.Errorf("--max-streams %d: must be at least 1 (the limit of /events streams served at once)", a.maxStreams)
	}
	log, err := agentLogger(a.logFormat, f.verbose)
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
	ln, err := listenRetry(ctx, a.listen, 30*time.Second, log)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", a.listen, err)
	}
	p, err := newPipeline(ctx, f, log)
	if err != nil {
		ln.Close()
		return err
	}
	defer p.close()

	reg := prometheus.NewRegistry()
	hub := newHub(p, a.maxStreams)
	m := newAgentMetrics(reg, p, hub)
	auth := newAuthorizer(cs, ownNamespace(), log)
	var isReady atomic.Bool
	go func() {
		p.ready(ctx, "")
		isReady.Store(true)
		log.Info("ready", zap.String("node", p.node))
	}()

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !isReady.Load() {
			http.Error(w, "starting: waiting for pod identity to sync", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/events", auth.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hub.serve(ctx, w, r)
	})))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", zap.Error(err))
		}
	}()
	log.Info("serving", zap.String("listen", ln.Addr().String()))
	// On SIGTERM stop taking connections at once: a tail that reconnects
	// must reach the next agent, not this one on its way out.
	serving, stopServing := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-serving.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()

	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	var buf []byte
	p.every(ctx, 200*time.Millisecond, func() { // flush stdout and count losses even when quiet
		out.Flush()
		d := p.newLoss()
		m.loss.add(d)
		hub.loss(d.LostLinesTotal(), d.Missed)
		warnLoss(log, d, false)
	})
	err = p.run(ctx, func(rec *record) {
		buf = rec.appendJSON(buf[:0])
		buf = append(buf, '\n')
		out.Write(buf)
		m.observe(rec)
		hub.publish(rec, buf)
	})
	p.t.Lock()
	out.Flush()
	p.t.Unlock()
	stopServing()
	<-stopped
	return err
}

// listenRetry listens on addr, waiting up to wait while it is in use: with
// hostNetwork, the agent this one replaces may still hold the port while it
// shuts down.
func listenRetry(ctx context.Context, addr string, wait time.Duration, log *zap.Logger) (net.Listener, error) {
	deadline := time.Now().Add(wait)
	for logged := false; ; {
		ln, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return ln, err
		}
		if !logged {
			log.Info("address in use, waiting for it (the previous agent shutting down?)", zap.String("listen", addr))
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// agentMetrics: label sets stay bounded — event type, reason, namespace,
// workload; never addresses, ports or pod names.
type agentMetrics struct {
	counts *eventCounter // adds to events, at most maxEventSeries label sets
	events *prometheus.CounterVec
	loss   *lossMetrics
}

// lossMetrics count the ways kdrop's output fell short of the kernel, from
// the tracer's Stats. Their help says which ones leave kdrop_events_total
// exact and which make it short.
type lossMetrics struct {
	lostLines, missed, coarsened prometheus.Counter
}

func newLossMetrics(reg prometheus.Registerer) *lossMetrics {
	m := &lossMetrics{
		lostLines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kdrop_lost_lines_total",
			Help: "Events whose line found the ring buffer full: their lines (stdout, /events) are missing, but their occurrences came back in later summary lines, so kdrop_events_total stays exact.",
		}),
		missed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kdrop_missed_total",
			Help: "Occurrences kdrop never saw, because the kernel skipped its program (it was already running on that CPU, e.g. a drop nested in softirq): kdrop_events_total is short by up to this much (the kernel counts them before kdrop's filters).",
		}),
		coarsened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kdrop_coarsened_total",
			Help: "Occurrences rate-limited under a coarser key than their flow because the in-kernel flow table was full: kdrop_events_total stays exact, but their summary lines do not tell destinations apart.",
		}),
	}
	reg.MustRegister(m.lostLines, m.missed, m.coarsened)
	return m
}

// add counts what the tracer's counters grew by (see pipeline.newLoss).
func (m *lossMetrics) add(d tracer.Stats) {
	m.lostLines.Add(float64(d.LostLinesTotal()))
	m.missed.Add(float64(d.Missed))
	m.coarsened.Add(float64(d.Coarsened))
}

func newAgentMetrics(reg *prometheus.Registry, p *pipeline, h *hub) *agentMetrics {
	m := &agentMetrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kdrop_events_total",
			Help: fmt.Sprintf("Occurrences of kernel drops, listen queue overflows and ICMP errors sent, by type, reason (drop reason, ICMP error or queue), and the namespace and workload of the pod concerned. At most %d label sets: past that, the one updated least recently is dropped.", maxEventSeries),
		}, []string{"type", "reason", "namespace", "workload"}),
		loss: newLossMetrics(reg),
	}
	m.counts = newEventCounter(m.events, maxEventSeries)
	hooks := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kdrop_hook_attached",
		Help: "1 for each hook attached, with its attach mode; 0 with mode \"none\" for a hook this kernel refused.",
	}, []string{"hook", "mode"})
	for _, h := range p.t.Hooks() {
		if h.Mode == "" {
			hooks.WithLabelValues(h.Hook, "none").Set(0)
		} else {
			hooks.WithLabelValues(h.Hook, string(h.Mode)).Set(1)
		}
	}
	reg.MustRegister(m.events, hooks,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kdrop_identity_healthy",
			Help: "1 when pod identity is synced and the API server answers; events are marked unresolved otherwise.",
		}, func() float64 {
			if p.res != nil && p.res.Status().Healthy {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kdrop_stream_clients",
			Help: "Clients connected to /events.",
		}, func() float64 { return float64(h.clients()) }),
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *agentMetrics) observe(rec *record) {
	who := &rec.Where
	if who.Kind != k8s.KindPod {
		who = &rec.Dst
	}
	ns, wl := "", ""
	if who.Kind == k8s.KindPod {
		ns = who.Namespace
		if who.WorkloadKind != "" {
			wl = who.WorkloadKind + "/" + who.WorkloadName
		}
	}
	m.counts.add(eventLabels{rec.Type.String(), rec.What(), ns, wl}, float64(rec.Count))
}
