// Package agent is kdrop's node agent: it runs the pipeline (package
// enrich) and writes every line to stdout, counts them in Prometheus
// metrics and fans them out to /events clients, serving on one address:
//
//	/metrics  Prometheus (package sinks/metrics)
//	/healthz  the process is alive
//	/readyz   hooks attached and pod identity synced once
//	/events   the NDJSON stream, behind bearer-token authorization (package sinks/stream)
package agent

import (
	"bufio"
	"context"
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
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/metrics"
	"github.com/kdrop/kdrop/cmd/kdrop/sinks/stream"
)

// Config is what the agent needs besides its pipeline.
type Config struct {
	MaxStreams int                  // most /events streams at once (kdrop agent --max-streams)
	Clientset  kubernetes.Interface // for TokenReviews and SubjectAccessReviews
	Namespace  string               // where stream access is asked for (stream.OwnNamespace)
	Stdout     io.Writer            // every line, for kubectl logs
	Log        *zap.Logger
}

// Run serves on ln and runs p until ctx is done. On ctx's end it stops
// taking connections at once (a tail that reconnects must reach the next
// agent, not this one on its way out), then drains the tracer.
func Run(ctx context.Context, p *enrich.Pipeline, ln net.Listener, cfg Config) error {
	log := cfg.Log
	reg := prometheus.NewRegistry()
	hub := stream.NewHub(p.Node, p.T.Reasons, cfg.MaxStreams)
	m := metrics.NewAgent(reg, metrics.Sources{
		Hooks:   p.T.Hooks(),
		Healthy: func() bool { return p.Res != nil && p.Res.Status().Healthy },
		Clients: hub.Clients,
	})
	auth := stream.NewAuthorizer(cfg.Clientset, cfg.Namespace, log)
	var isReady atomic.Bool
	go func() {
		p.Ready(ctx, "")
		isReady.Store(true)
		log.Info("ready", zap.String("node", p.Node))
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
	mux.Handle("/events", auth.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hub.Serve(ctx, w, r)
	})))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", zap.Error(err))
		}
	}()
	log.Info("serving", zap.String("listen", ln.Addr().String()))
	serving, stopServing := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-serving.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()

	out := bufio.NewWriterSize(cfg.Stdout, 64<<10)
	var buf []byte
	p.Every(ctx, 200*time.Millisecond, func() { // flush stdout and count losses even when quiet
		out.Flush()
		d := p.NewLoss()
		m.AddLoss(d)
		hub.Loss(d.LostLinesTotal(), d.Missed)
		enrich.WarnLoss(log, d, false)
	})
	err := p.Run(ctx, func(ev *line.Event) {
		buf = line.AppendEvent(buf[:0], ev)
		hub.Publish(ev, buf)
		out.Write(append(buf, '\n'))
		m.Observe(ev)
	})
	p.Locked(func() { out.Flush() })
	stopServing()
	<-stopped
	return err
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
