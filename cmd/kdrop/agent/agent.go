// Package agent is kdrop's node agent: it runs the pipeline (package
// enrich) and writes every line to stdout, counts them in Prometheus
// metrics and fans them out to /events clients, serving on two addresses:
//
//	/metrics  Prometheus (package sinks/metrics)      plain HTTP, --listen
//	/healthz  the process is alive                     plain HTTP, --listen
//	/readyz   hooks attached, pod identity synced once plain HTTP, --listen
//	/events   the NDJSON stream, behind stream tokens  HTTPS, --stream-listen
//
// The stream has its own listener so that scrapes and probes never queue
// behind streams, and streams never behind them.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/k8sevents"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/metrics"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stdout"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
	"github.com/kdrop/kdrop/tracer"
)

// Config is what the agent needs besides its pipeline.
type Config struct {
	MaxStreams int                  // most /events streams at once (kdrop agent --max-streams)
	Heartbeat  time.Duration        // a quiet stream's heartbeat interval (0: 15 s)
	Clientset  kubernetes.Interface // for TokenReviews
	Account    stream.Account       // whose stream tokens are taken (kdrop agent --stream-account)
	Stdout     io.Writer            // every line, for kubectl logs
	Events     *k8sevents.Recorder  // Kubernetes Events of findings; nil: none
	Log        *zap.Logger
}

// handlerTimeout bounds /metrics and the probes.
const handlerTimeout = 30 * time.Second

// Server is the agent's HTTP side: metrics and probes, and the stream.
type Server struct {
	Hub     *stream.Hub
	Metrics *metrics.Agent
	mux     *http.ServeMux
	events  http.Handler
	ready   atomic.Bool
}

// Node is what the server says about the node: its name, the running
// kernel's drop reasons, the hooks and whether identity is healthy.
type Node struct {
	Name    string
	Reasons *tracer.Reasons
	Hooks   []tracer.HookStatus
	Healthy func() bool
	// Rules reports naming netfilter rules (reads, read errors, unknown).
	Rules func() netfilter.Stats
}

// NewServer builds the agent's handlers; /events streams until ctx is done.
// /readyz answers 503 until SetReady.
func NewServer(ctx context.Context, n Node, cfg Config) *Server {
	reg := prometheus.NewRegistry()
	s := &Server{Hub: stream.NewHub(n.Name, n.Reasons, cfg.MaxStreams), mux: http.NewServeMux()}
	s.Hub.Heartbeat = cfg.Heartbeat
	auth := stream.NewAuthorizer(cfg.Clientset, cfg.Account, n.Name, cfg.Log)
	src := metrics.Sources{Hooks: n.Hooks, Healthy: n.Healthy, Clients: s.Hub.Clients, Refused: auth.Refused, Rules: n.Rules}
	if e := cfg.Events; e != nil {
		src.EventWrites = map[string]*atomic.Uint64{"ok": &e.Writes, "failed": &e.Failed}
		src.EventsUnrecorded = &e.Unrecorded
	}
	s.Metrics = metrics.NewAgent(reg, src)
	// The server has no write timeout (streams last); the other handlers
	// get one of their own.
	bounded := func(h http.Handler) http.Handler { return http.TimeoutHandler(h, handlerTimeout, "timed out") }
	s.mux.Handle("/metrics", bounded(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))
	s.mux.Handle("/healthz", bounded(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })))
	s.mux.Handle("/readyz", bounded(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "starting: waiting for pod identity to sync", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})))
	events := http.NewServeMux()
	events.Handle("/events", auth.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Hub.Serve(ctx, w, r)
	})))
	s.events = events
	return s
}

// Handler serves /metrics, /healthz and /readyz.
func (s *Server) Handler() http.Handler { return s.mux }

// StreamHandler serves /events.
func (s *Server) StreamHandler() http.Handler { return s.events }

// SetReady makes /readyz answer ok: hooks attached, identity synced once.
func (s *Server) SetReady() { s.ready.Store(true) }

// Run serves metrics and probes on ln, the stream over TLS on sln, and
// runs p until ctx is done. On ctx's end it stops taking connections at
// once (a tail that reconnects must reach the next agent, not this one on
// its way out), then drains the tracer.
func Run(ctx context.Context, p *enrich.Pipeline, ln, sln net.Listener, cfg Config) error {
	log := cfg.Log
	s := NewServer(ctx, Node{Name: p.Node, Reasons: p.T.Reasons, Hooks: p.T.Hooks(),
		Healthy: func() bool { return p.Res != nil && p.Res.Status().Healthy }, Rules: p.RuleStats}, cfg)
	go func() {
		p.Ready(ctx, "")
		s.SetReady()
		log.Info("ready", zap.String("node", p.Node))
	}()
	tlsConf, err := stream.ServingTLS(p.Node)
	if err != nil {
		return fmt.Errorf("making the stream's TLS certificate: %w", err)
	}
	servers := []*http.Server{newHTTPServer(s.Handler()), newHTTPServer(s.StreamHandler())}
	for i, l := range []net.Listener{ln, tls.NewListener(sln, tlsConf)} {
		go func() {
			if err := servers[i].Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("HTTP server stopped", zap.String("listen", l.Addr().String()), zap.Error(err))
			}
		}()
	}
	log.Info("serving", zap.String("listen", ln.Addr().String()), zap.String("stream-listen", sln.Addr().String()))
	serving, stopServing := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-serving.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range servers {
			srv.Shutdown(shutdown)
		}
	}()

	out := stdout.New(cfg.Stdout, false, 0, nil)
	var buf []byte
	p.Every(ctx, 200*time.Millisecond, func() { // flush stdout and count losses even when quiet
		out.Flush()
		d := p.NewLoss()
		s.Metrics.AddLoss(d)
		s.Hub.Loss(d.LostLinesTotal(), d.Missed)
		enrich.WarnLoss(log, d, false)
	})
	if cfg.Events != nil {
		go cfg.Events.Run(ctx)
	}
	err = p.Run(ctx, func(ev *line.Event) {
		buf = line.AppendEvent(buf[:0], ev)
		s.Hub.Publish(ev, buf)
		out.Encoded(ev, buf)
		s.Metrics.Observe(ev)
		if cfg.Events != nil {
			cfg.Events.Observe(ev)
		}
	})
	p.Locked(func() { out.Flush() })
	if cfg.Events != nil { // what came last, within the node's budget
		flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		cfg.Events.Flush(flush)
		cancel()
	}
	stopServing()
	<-stopped
	return err
}

// newHTTPServer has no write timeout (streams last); the handlers that
// must not last have their own.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
}

// Listen listens on addr, waiting up to wait while it is in use: with
// hostNetwork, the agent this one replaces may still hold the port while it
// shuts down.
func Listen(ctx context.Context, addr string, wait time.Duration, log *zap.Logger) (net.Listener, error) {
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
