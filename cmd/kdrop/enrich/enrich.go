// Package enrich turns the tracer's events into lines: it runs the tracer,
// names both ends and the namespace where the kernel acted through pod
// identity (package k8s), and applies the filter users asked for (Filter:
// the kernel part in the tracer, the pod part here). Its output, a
// line.Event, goes to the sinks.
package enrich

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netfilter"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/netpol"
	"github.com/kdrop/kdrop/cmd/kdrop/enrich/route"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// Enrich fills out for ev: the node and, with a resolver, the identity of
// both ends and of the namespace. Lookups never block on the API server.
// out's endpoints point into out's own storage, reused by the next call.
func Enrich(r *k8s.Resolver, node string, ev *tracer.Event, out *Scratch) *line.Event {
	out.ev = line.Event{Event: *ev, Node: node}
	if r == nil {
		return &out.ev
	}
	if ev.Src.Addr().IsValid() {
		out.src = r.LookupIP(ev.Src.Addr(), ev.Src.Port(), ev.Time)
		out.ev.SrcK8s = &out.src
	}
	if ev.Dst.Addr().IsValid() {
		out.dst = r.LookupIP(ev.Dst.Addr(), ev.Dst.Port(), ev.Time)
		out.ev.DstK8s = &out.dst
	}
	if ev.Netns != 0 {
		out.where = r.LookupNetns(ev.Netns)
		out.ev.WhereK8s = &out.where
	}
	return &out.ev
}

// Scratch is Enrich's storage, so that enriching allocates nothing.
type Scratch struct {
	ev              line.Event
	src, dst, where k8s.Endpoint
}

// Pipeline is what watch, record and the agent share: the tracer, pod
// identity and the pod filter, ending in a sink of lines.
type Pipeline struct {
	T    *tracer.Tracer
	Res  *k8s.Resolver // nil: identity off
	Node string        // this node's name ("" outside a cluster)
	// Rules configures naming the netfilter rule of NETFILTER_DROP drops
	// (package netfilter): such a drop is held, at most Rules.MaxWait,
	// until its namespace's rules are read, then goes to the sink with
	// line.Event.Rule set, and line.Event.Conntrack when conntrack caused
	// it (Rules.NoConntrack: not told). nil: off, drops go out at once
	// without a rule.
	Rules *netfilter.Config
	// Host are the host network namespace's addresses, which tell kubelet
	// probe connections (MarkProbe); nil: only node IPs the resolver knows
	// count as the node. New reads kdrop's own namespace's when identity
	// is on.
	Host *HostAddrs
	// rules is the running Attributor's Stats (RuleStats), once started.
	rules atomic.Pointer[func() netfilter.Stats]
	// attr names the rules of NETFILTER_DROP drops (Rules), started by
	// Ready or Run; it hands held drops to sink, which Run sets before the
	// first drop is submitted.
	attrMu   sync.Mutex // Ready and Run may start it at once (the agent)
	attr     *netfilter.Attributor[line.Event]
	sink     atomic.Pointer[func(*line.Event)]
	policies *netpol.Evaluator // NetworkPolicy meaning, with identity
	match    func(*line.Event) bool
	log      *zap.Logger

	// the Every loops, ended by Run and Close
	loops     sync.WaitGroup
	stopLoops []context.CancelFunc
	// reported is the tracer's loss counters as last reported (NewLoss).
	reported tracer.Stats
}

// New starts identity (never blocking on the API server) and loads the
// tracer. res may be nil (identity off); match nil lets every event pass.
func New(ctx context.Context, opts tracer.Options, res *k8s.Resolver, match func(*line.Event) bool, log *zap.Logger) (*Pipeline, error) {
	if match == nil {
		match = func(*line.Event) bool { return true }
	}
	p := &Pipeline{Res: res, match: match, log: log, Rules: &netfilter.Config{}}
	if res != nil {
		res.Start(ctx) // tracing starts at once, names follow
		p.Node = res.Node()
		host, err := NewHostAddrs("")
		if err != nil {
			log.Warn("kubelet probes are told only by node IPs: "+err.Error(), zap.String("todo", "run kdrop in the host's network namespace (hostNetwork: true)"))
		}
		p.Host = host
	}
	var err error
	if p.T, err = tracer.New(opts); err != nil {
		return nil, err
	}
	for _, h := range p.T.Hooks() {
		if h.Mode == "" {
			log.Warn("hook missing: its events will not be seen", zap.String("hook", h.Hook), zap.Strings("why", h.Failed))
		} else {
			log.Info("hook attached", zap.String("hook", h.Hook), zap.String("mode", string(h.Mode)))
		}
	}
	return p, nil
}

// Ready waits (up to 30 s) for identity to sync, then creates readyFile if
// one was asked for: from then on events carry names, unless the API server
// is out of reach (then they are marked unresolved).
func (p *Pipeline) Ready(ctx context.Context, readyFile string) error {
	if p.Res != nil {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if !p.Res.WaitForSync(sctx) && ctx.Err() == nil {
			p.log.Warn("pod identity not synced after 30s: events are marked unresolved until it is")
		}
		cancel()
	}
	// the namespaces' rules read once, so that a drop from now on is
	// named by its counter moving (not by counters kept since the rule
	// was made)
	if a, _ := p.startRules(); a != nil {
		select {
		case <-a.Baselined():
		case <-ctx.Done():
		case <-time.After(baselineWait):
			p.log.Warn("the namespaces' netfilter rules not read after " + baselineWait.String() + ": the first drops may be named by lifetime counters")
		}
	}
	return WriteReadyFile(readyFile)
}

// attributor is the Attributor, if one was started.
func (p *Pipeline) attributor() (*netfilter.Attributor[line.Event], *netpol.Evaluator) {
	p.attrMu.Lock()
	defer p.attrMu.Unlock()
	return p.attr, p.policies
}

// baselineWait bounds how long Ready waits for the first read of the
// namespaces' rules.
const baselineWait = 10 * time.Second

// startRules starts the Attributor, once, when Rules asks for one.
func (p *Pipeline) startRules() (*netfilter.Attributor[line.Event], *netpol.Evaluator) {
	p.attrMu.Lock()
	defer p.attrMu.Unlock()
	if p.Rules == nil || p.attr != nil {
		return p.attr, p.policies
	}
	var policies *netpol.Evaluator // NetworkPolicy meaning, with identity
	if p.Res != nil {
		policies = netpol.NewEvaluator(p.Res)
	}
	p.policies = policies
	// Held drops come back on the attributor's goroutine: the emit path
	// is held back for them as for the tracer's own.
	p.attr = netfilter.New(*p.Rules, func(ev *line.Event, r *netfilter.Rule, ct *conntrack.Drop) {
		ev.Rule, ev.Conntrack = r, ct
		policyMeaning(policies, ev)
		p.T.Lock()
		(*p.sink.Load())(ev)
		p.T.Unlock()
	})
	stats := p.attr.Stats
	p.rules.Store(&stats)
	return p.attr, p.policies
}

// WriteReadyFile creates path (--ready-file) if it is not "".
func WriteReadyFile(path string) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	return nil
}

// Run passes every enriched, matching event to sink until ctx is done;
// then it ends the Every loops, so that what follows has the sink to
// itself. The event is reused by the next call.
func (p *Pipeline) Run(ctx context.Context, sink func(*line.Event)) error {
	var s Scratch
	p.sink.Store(&sink) // before any drop is submitted
	rules, policies := p.startRules()
	if rules == nil && p.Res != nil {
		policies = netpol.NewEvaluator(p.Res)
	}
	var routes route.Finder // route drops: the route behind them
	err := p.T.Run(ctx, func(e *tracer.Event) {
		ev := Enrich(p.Res, p.Node, e, &s)
		if p.Res != nil {
			MarkProbe(ev, p.Host, p.Node)
		}
		if !p.match(ev) {
			return
		}
		if route.Wants(e) {
			ev.Route = routes.Lookup(e.Netns, e.Dst.Addr())
		}
		if rules != nil && netfilter.Wants(e) {
			if ev.Rule = rules.Submit(e, detach(ev)); ev.Rule == nil {
				return // held: it comes out with its rule
			}
			policyMeaning(policies, ev)
		}
		sink(ev)
	})
	if rules != nil {
		rules.Close() // what is held goes out now, before the loops end
	}
	p.endLoops()
	return err
}

// policyMeaning sets, when NetworkPolicies isolate an end of ev's drop
// and allow nothing like it, that as the meaning of ev's rule, unless
// the rule already has one. When that one is an engine's NetworkPolicy
// rule (kube-router's), kdrop's own evaluation is compared with it and
// both are said (netpol.Evaluator.Check). One evaluation per event at
// most.
func policyMeaning(e *netpol.Evaluator, ev *line.Event) {
	if e == nil || ev.Rule == nil {
		return
	}
	f := netpol.Flow{Proto: ev.Proto, Src: ev.Src, Dst: ev.Dst, SrcK8s: ev.SrcK8s, DstK8s: ev.DstK8s, At: ev.Time}
	if k := ev.Rule.K8s; k != nil {
		if k.Kind == netfilter.MeaningNetworkPolicy && k.Engine != "" {
			e.Check(k, f)
		}
		return
	}
	ev.Rule.K8s = e.Meaning(f)
}

// detach copies ev with its own endpoints (Enrich's point into Scratch,
// which the next event reuses), so it can be held.
func detach(ev *line.Event) line.Event {
	c := *ev
	for _, e := range []**k8s.Endpoint{&c.SrcK8s, &c.DstK8s, &c.WhereK8s} {
		if *e != nil {
			v := **e
			*e = &v
		}
	}
	return c
}

// NewLoss returns how much the tracer's loss counters grew since the last
// call (tracer.Stats says what each one means).
func (p *Pipeline) NewLoss() tracer.Stats {
	st, err := p.T.Stats()
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

// Close ends the Every loops (they read the tracer's maps, which Close
// frees) and the tracer.
func (p *Pipeline) Close() {
	if a, _ := p.attributor(); a != nil { // started by Ready, with no Run after it
		a.Close()
	}
	p.endLoops()
	p.T.Close()
	p.Host.Close()
}

// Every calls fn every d until ctx is done or Run returns, holding back the
// emit path meanwhile, so fn may flush a sink that path writes to.
func (p *Pipeline) Every(ctx context.Context, d time.Duration, fn func()) {
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
			p.T.Lock()
			fn()
			p.T.Unlock()
		}
	}()
}

func (p *Pipeline) endLoops() {
	for _, cancel := range p.stopLoops {
		cancel()
	}
	p.loops.Wait()
}

// Locked runs fn with the emit path held back (see Every).
func (p *Pipeline) Locked(fn func()) {
	p.T.Lock()
	defer p.T.Unlock()
	fn()
}

// What missed occurrences are, and what to do, for the log.
const (
	missedWhy  = "the kernel skipped kdrop's program because it was already running on that CPU (e.g. a drop nested in softirq); it counts them before kdrop's filters, hence up to"
	missedTodo = "rare; if it keeps growing, check the attach modes (kdrop check): kprobe programs share one per-CPU guard with every other kprobe and tracepoint program, fentry ones do not. The kernel's own counters (nstat -az) miss nothing"
)

// WarnLoss logs what the loss in st means: new since the last warning, or
// (total) for the whole run. Lost lines keep counts exact, missed
// occurrences make them short: "exact" is said only when nothing was missed.
func WarnLoss(log *zap.Logger, st tracer.Stats, total bool) {
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

// RuleStats is what naming netfilter rules did so far (reads of
// namespaces' rules, failed reads, drops that went out unknown); zero
// before Run or without Rules.
func (p *Pipeline) RuleStats() netfilter.Stats {
	if f := p.rules.Load(); f != nil {
		return (*f)()
	}
	return netfilter.Stats{}
}
