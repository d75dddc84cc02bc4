package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

type watchFlags struct {
	output        string
	types         []string
	reasons       []string
	includeBenign bool
	cidrs         []string
	port          uint16
	proto         string
	netns         string
	duration      time.Duration
	count         uint64
	rateLimit     uint32
	attach        string
	readyFile     string
	verbose       bool
	id            identityFlags
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
and "missed" (the kernel skipped kdrop's program: counts short).`,
		Example: `  # everything, as a table
  sudo kdrop watch

  # accept/SYN queue overflows only, as JSON, for one minute
  sudo kdrop watch --type overflow -o json --duration 1m

  # why are packets to 10.244.0.0/16 port 80 dropped?
  sudo kdrop watch --cidr 10.244.0.0/16 --port 80 --reason NO_SOCKET,NETFILTER_DROP`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runWatch(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "table", "output format: table or json (one JSON object per line)")
	fl.DurationVarP(&f.duration, "duration", "d", 0, "stop after this long (e.g. 30s, 5m); 0 runs until interrupted")
	fl.Uint64VarP(&f.count, "count", "c", 0, "stop after this many lines; 0 for no limit")
	fl.StringVar(&f.readyFile, "ready-file", "", "create this file once every hook is attached and pod identity synced (for scripts)")
	f.register(fl)
	return cmd
}

// register adds the flags every tracing command shares: filters, rate
// limit, attach modes, identity.
func (f *watchFlags) register(fl *pflag.FlagSet) {
	fl.StringSliceVarP(&f.types, "type", "t", nil, "event types to show: drop, overflow, unreach (default all)")
	fl.StringSliceVarP(&f.reasons, "reason", "r", nil, "drop reasons to show, e.g. NO_SOCKET,NETFILTER_DROP (see kdrop reasons)")
	fl.BoolVar(&f.includeBenign, "include-benign", false, "also show drop reasons that are not faults ("+strings.Join(tracer.DefaultBenignReasons, ", ")+")")
	fl.StringSliceVar(&f.cidrs, "cidr", nil, "only packets with either end in this address or CIDR (repeatable)")
	fl.Uint16VarP(&f.port, "port", "p", 0, "only packets with either port equal to this")
	fl.StringVar(&f.proto, "proto", "", "only this IP protocol: tcp, udp, icmp, icmpv6, sctp or a number")
	fl.StringVar(&f.netns, "netns", "", "only this network namespace: an inode number or a path such as /run/netns/NAME or /proc/PID/ns/net")
	fl.Uint32Var(&f.rateLimit, "rate-limit", 100, "events per second per flow before the rest are counted into that flow's summary line, which comes every second (0: no limit, every occurrence a line)")
	fl.StringVar(&f.attach, "attach", "auto", "attach modes to try, in order: auto, or a list of fentry,kprobe,tp_btf,raw_tp,sock_diag")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "log debug details to stderr")
	f.id.register(fl)
}

// options turns flags into tracer options, rejecting bad values with a
// message that says what is accepted.
func (f watchFlags) options(log *zap.Logger) (tracer.Options, error) {
	o := tracer.Options{RateLimit: f.rateLimit, Log: log}
	if f.output != "table" && f.output != "json" {
		return o, fmt.Errorf("--output %q: use table or json", f.output)
	}
	for _, s := range f.types {
		t, err := tracer.ParseEventType(s)
		if err != nil {
			return o, fmt.Errorf("--type: %w", err)
		}
		o.Filter.Types = append(o.Filter.Types, t)
	}
	o.Filter.Reasons = f.reasons
	if len(f.reasons) > 0 && len(o.Filter.Types) == 0 {
		o.Filter.Types = []tracer.EventType{tracer.Drop} // reasons only exist for drops
	}
	o.Filter.IncludeBenign = f.includeBenign
	for _, s := range f.cidrs {
		p, err := parseCIDR(s)
		if err != nil {
			return o, err
		}
		o.Filter.CIDRs = append(o.Filter.CIDRs, p)
	}
	o.Filter.Port = f.port
	if f.proto != "" {
		p, err := tracer.ParseProto(f.proto)
		if err != nil {
			return o, fmt.Errorf("--proto: %w", err)
		}
		o.Filter.Proto = p
	}
	if f.netns != "" {
		ino, err := parseNetns(f.netns)
		if err != nil {
			return o, err
		}
		o.Filter.Netns = ino
	}
	modes, err := tracer.ParseModes(f.attach)
	if err != nil {
		return o, fmt.Errorf("--attach: %w", err)
	}
	o.Modes = modes
	return o, nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("--cidr %q: not an address or CIDR (examples: 10.0.0.7, 10.244.0.0/16, fd00::/64)", s)
}

func parseNetns(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	var st unix.Stat_t
	if err := unix.Stat(s, &st); err != nil {
		return 0, fmt.Errorf("--netns %q: neither an inode number nor a readable namespace file: %v", s, err)
	}
	return uint32(st.Ino), nil
}

func newLogger(verbose bool) *zap.Logger {
	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(zapcore.InfoLevel)
	if verbose {
		cfg.Level = zap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	cfg.DisableStacktrace = true
	cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	log, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return log
}

// pipeline is what watch, record and agent share: the tracer, identity,
// and the --namespace/--pod filter.
type pipeline struct {
	// loops are the every goroutines, ended by run and close.
	loops     sync.WaitGroup
	stopLoops []context.CancelFunc

	t     *tracer.Tracer
	res   *k8s.Resolver
	node  string
	match func(*record) bool
	log   *zap.Logger
	// reported is the tracer's loss counters as last reported (see newLoss).
	reported tracer.Stats
}

// newPipeline checks the flags, starts identity (never blocking on the API
// server) and loads the tracer.
func newPipeline(ctx context.Context, f watchFlags, log *zap.Logger) (*pipeline, error) {
	opts, err := f.options(log)
	if err != nil {
		return nil, err
	}
	p := &pipeline{log: log}
	if p.res, err = f.id.resolver(log); err != nil {
		return nil, err
	}
	if p.match, err = f.id.matcher(p.res); err != nil {
		return nil, err
	}
	if p.res != nil {
		p.res.Start(ctx) // tracing starts at once, names follow
		p.node = p.res.Node()
	}
	if p.t, err = tracer.New(opts); err != nil {
		return nil, err
	}
	for _, h := range p.t.Hooks() {
		if h.Mode == "" {
			log.Warn("hook missing: its events will not be seen", zap.String("hook", h.Hook), zap.Strings("why", h.Failed))
		} else {
			log.Info("hook attached", zap.String("hook", h.Hook), zap.String("mode", string(h.Mode)))
		}
	}
	return p, nil
}

// ready waits (up to 30 s) for identity to sync, then creates readyFile if
// one was asked for: from then on events carry names, unless the API server
// is out of reach (then they are marked unresolved).
func (p *pipeline) ready(ctx context.Context, readyFile string) error {
	if p.res != nil {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if !p.res.WaitForSync(sctx) && ctx.Err() == nil {
			p.log.Warn("pod identity not synced after 30s: events are marked unresolved until it is")
		}
		cancel()
	}
	if readyFile != "" {
		if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
			return fmt.Errorf("--ready-file: %w", err)
		}
	}
	return nil
}

// run passes every enriched, matching event to sink until ctx is done;
// then it ends the every loops, so that what follows has the sink to itself.
func (p *pipeline) run(ctx context.Context, sink func(*record)) error {
	var rec record
	err := p.t.Run(ctx, func(e *tracer.Event) {
		enrich(p.res, p.node, e, &rec)
		if p.match(&rec) {
			sink(&rec)
		}
	})
	p.endLoops()
	return err
}

// newLoss returns how much the tracer's loss counters grew since the last
// call (tracer.Stats says what each one means).
func (p *pipeline) newLoss() tracer.Stats {
	st, err := p.t.Stats()
	if err != nil {
		return tracer.Stats{}
	}
	grew := func(now, then uint64) uint64 {
		if now < then { // a program went away, and its misses with it
			return 0
		}
		return now - then
	}
	d := tracer.Stats{Missed: grew(st.Missed, p.reported.Missed), Coarsened: grew(st.Coarsened, p.reported.Coarsened)}
	for i := range d.LostLines {
		d.LostLines[i] = grew(st.LostLines[i], p.reported.LostLines[i])
	}
	p.reported = st
	return d
}

// What missed occurrences are, and what to do, for the log.
const (
	missedWhy  = "the kernel skipped kdrop's program because it was already running on that CPU (e.g. a drop nested in softirq); it counts them before kdrop's filters, hence up to"
	missedTodo = "rare; if it keeps growing, check the attach modes (kdrop check): kprobe programs share one per-CPU guard with every other kprobe and tracepoint program, fentry ones do not. The kernel's own counters (nstat -az) miss nothing"
)

// warnLoss logs what the loss in st means: new since the last warning, or
// (total) for the whole run. Lost lines keep counts exact, missed
// occurrences make them short: "exact" is said only when nothing was missed.
func warnLoss(log *zap.Logger, st tracer.Stats, total bool) {
	lines := st.LostLinesTotal()
	if st.Coarsened > 0 {
		// Not a loss (every occurrence is counted), but what a summary
		// covers changed: say so, without claiming more than the loss
		// warnings below allow.
		msg := "flow table full: new flows rate-limited per (type, reason, namespace) instead; their summaries do not tell destinations apart"
		if total {
			msg = "flow table was full at times: occurrences rate-limited per (type, reason, namespace) in total"
		}
		log.Warn(msg, zap.Uint64("coarsened", st.Coarsened))
	}
	if st.Missed > 0 {
		msg := "occurrences missed: counts may be short by up to this many"
		if total {
			msg = "occurrences missed in total: counts may be short by up to this many"
		}
		log.Warn(msg, zap.Uint64("missed", st.Missed), zap.String("why", missedWhy), zap.String("todo", missedTodo))
	}
	if lines > 0 {
		msg := "ring buffer full: event lines lost; their occurrences still arrive in the next summary lines"
		if total {
			msg = "event lines lost in total; their occurrences came in summary lines"
			if st.Missed == 0 {
				msg += ", so counts are exact"
			}
		}
		log.Warn(msg, zap.Uint64("lost_lines", lines))
	}
}

func (p *pipeline) close() {
	p.endLoops() // they read the tracer's maps, which Close frees
	p.t.Close()
}

// every calls fn every d until ctx is done or run returns, holding back the
// emit path meanwhile, so fn may flush a sink that path writes to.
func (p *pipeline) every(ctx context.Context, d time.Duration, fn func()) {
	ctx, cancel := context.WithCancel(ctx)
	p.stopLoops = append(p.stopLoops, cancel)
	p.loops.Add(1)
	go func() {
		defer p.loops.Done()
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p.t.Lock()
			fn()
			p.t.Unlock()
		}
	}()
}

// endLoops ends the every loops and waits for them.
func (p *pipeline) endLoops() {
	for _, cancel := range p.stopLoops {
		cancel()
	}
	p.loops.Wait()
}

// withDuration ends ctx after d (--duration; 0: never), and its cancel ends
// it sooner (--count).
func withDuration(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if d > 0 {
		return context.WithTimeout(ctx, d)
	}
	return context.WithCancel(ctx)
}

func runWatch(parent context.Context, f watchFlags) error {
	log := newLogger(f.verbose)
	defer log.Sync()
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := newPipeline(ctx, f, log)
	if err != nil {
		return err
	}
	defer p.close()
	if err := p.ready(ctx, f.readyFile); err != nil {
		return err
	}
	ctx, cancel := withDuration(ctx, f.duration)
	defer cancel()

	out := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer out.Flush()
	json := f.output == "json"
	if !json {
		fmt.Fprintln(out, tracer.TableHeader)
	}
	var lines uint64
	var buf []byte
	sink := func(rec *record) {
		if f.count > 0 && lines >= f.count {
			return
		}
		if json {
			buf = rec.appendJSON(buf[:0])
			buf = append(buf, '\n')
			out.Write(buf)
		} else {
			fmt.Fprintln(out, rec.tableRow())
		}
		lines++
		if f.count > 0 && lines >= f.count {
			cancel()
		}
		// summaries come at the end of a sweep: a good moment to flush
		if rec.Summary || out.Buffered() > 32<<10 {
			out.Flush()
		}
	}
	// Flush at least every 200ms so a quiet stream still shows promptly,
	// and report loss as soon as it is known.
	p.every(ctx, 200*time.Millisecond, func() {
		out.Flush()
		warnLoss(log, p.newLoss(), false)
	})
	if err := p.run(ctx, sink); err != nil {
		return err
	}
	p.t.Lock()
	out.Flush()
	p.t.Unlock()
	if st, err := p.t.Stats(); err == nil {
		warnLoss(log, st, true)
	}
	return nil
}
