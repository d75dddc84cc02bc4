package netfilter

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich/conntrack"
	"github.com/kdrop/kdrop/tracer"
)

// Config tunes an Attributor; zero fields take the defaults.
type Config struct {
	// Interval is the shortest time between two reads of one namespace's
	// rules: drops arriving meanwhile share the next read. Default 200 ms.
	Interval time.Duration
	// MaxWait is the longest an event is held for a read of its namespace;
	// past it, it goes out with Unknown "rules not read in time". Default 2 s;
	// longer in a namespace whose reads take long (up to four times the
	// last read, at most 10 s).
	MaxWait time.Duration
	// MaxHeld bounds the events held at once, all namespaces together; one
	// more goes out at once with Unknown "too many drops waiting". Default
	// 16384: a 10k/s storm of lines without a rate limit holds about 3000.
	MaxHeld int
	// SummarySpan is how far back the occurrences of a summary event go: two
	// of the tracer's sweep intervals. Default 2 s.
	SummarySpan time.Duration
	// ReadTimeout bounds one read of a namespace's rules (netlink socket
	// deadline), and one of its conntrack statistics. Default 1 s.
	ReadTimeout time.Duration
	// KeepWindows is how long what moved between reads is kept, for
	// events that reach userspace late (a slow ring buffer reader): at
	// least SummarySpan+MaxWait. Default 10 s.
	KeepWindows time.Duration
	// Keep is how long a namespace's last read is kept whole after its
	// last drop; past it only its counters are kept (the baseline of its
	// next drop, however late), until the namespace is gone. Default 60 s.
	Keep time.Duration
	// Baseline is how often namespaces are looked for, and each new one's
	// counters read once, so that its first drop compares with them.
	// Default 10 s; negative: never (a first drop is then attributed by
	// lifetime counters, HowLifetime).
	Baseline time.Duration
	// NetnsPaths lists namespaces by inode; default tracer.NetnsPaths.
	NetnsPaths func() map[uint32]string
	// NoConntrack: do not read the namespace's conntrack statistics with
	// its rules, so no drop is told to be conntrack's (package conntrack).
	NoConntrack bool

	// readHook, for tests: called with the namespace and the stage of a
	// read ("start", "listed").
	readHook func(ino uint32, stage string)
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Interval, 200*time.Millisecond)
	def(&c.MaxWait, 2*time.Second)
	def(&c.SummarySpan, 2*time.Second)
	def(&c.ReadTimeout, time.Second)
	def(&c.Keep, time.Minute)
	if c.Baseline == 0 {
		c.Baseline = 10 * time.Second
	}
	def(&c.KeepWindows, max(10*time.Second, c.SummarySpan+c.MaxWait))
	if c.MaxHeld <= 0 {
		c.MaxHeld = 16384
	}
	if c.NetnsPaths == nil {
		c.NetnsPaths = tracer.NetnsPaths
	}
}

// Why an event goes out without a rule, besides a failed read.
const (
	whyTooMany  = "too many drops waiting"
	whyTimeout  = "rules not read in time"
	whyStopping = "kdrop stopped before the rules were read"
	whyNoRule   = "no drop rule's counter moved and none matches"
	whyNoNetns  = "no network namespace"
	whyTooOld   = "event older than the counters kept"
)

// Attributor names the rule of NETFILTER_DROP events, asynchronously: an
// event handed to Submit is held (a copy, item) until a read of its
// namespace's rules taken after it, then given back to emit with its Rule,
// on the Attributor's goroutine. With the rules it reads the namespace's
// conntrack statistics and tells the drops conntrack caused (emit's
// *conntrack.Drop): its own (then the Rule is nil unless a rule's counter
// moved too) or an INVALID packet a rule matching conntrack state dropped
// (then both are given). Reads are coalesced: at most one per
// namespace per Config.Interval, only of namespaces with drops waiting,
// only of chains that can drop. No event is lost: each one reaches emit
// exactly once, by Close at the latest.
type Attributor[T any] struct {
	cfg  Config
	emit func(item *T, r *Rule, ct *conntrack.Drop)

	mu     sync.Mutex
	ns     map[uint32]*nsState[T]
	held   int
	closed bool

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
	// based is closed once the first scan read the namespaces found
	// (Baselined)
	based     chan struct{}
	basedOnce sync.Once

	// owned by the loop
	paths     map[uint32]string
	scanned   time.Time
	baselined time.Time

	reads, readErrors, unknown atomic.Uint64
	ctReadErrors               atomic.Uint64
}

// nsState is what the Attributor knows of one namespace.
type nsState[T any] struct {
	reader   netnsReader
	last     *ruleset      // the last successful read
	windows  []window      // deltas between successive reads, oldest first
	pending  []req[T]      // events waiting for a read after them
	lastRead time.Time     // when the last read (successful or not) started
	err      error         // the last read's error, if it failed
	errAt    time.Time     // when that read started
	seen     time.Time     // the last drop's arrival
	reads    uint64        // reads attempted
	took     time.Duration // how long the last successful read took
	timeout  time.Duration // what the next read may take beyond ReadTimeout
	walked   uint64        // reads when pending was last walked
	// movedTotal is what each counted rule moved over all windows since
	// the baseline; claimed, the drops named for it alone or shown with it
	// (at most movedTotal). No rule is named alone for more than it moved.
	movedTotal, claimed map[ruleKey]uint64
	// ct is what moved in the namespace's conntrack statistics;
	// ctWontRead: they cannot be read (no conntrack in the kernel)
	ct         conntrack.Windows
	ctWontRead bool
}

// window is what moved between two reads: the packets counted by the
// second but not the first happened after the first began and before the
// second ended, in (from, to]; successive windows overlap by a read's
// length. The first read of a namespace has no predecessor: its window
// starts at the zero time and its moves are the counters since each rule
// was made.
type window struct {
	from, to time.Time
	moved    []moved
}

type moved struct {
	ri    *ruleInfo
	delta uint64 // packets
}

type req[T any] struct {
	item     T
	ev       tracer.Event
	from, to time.Time // the occurrences' span
	deadline time.Time // arrived + MaxWait
	arrived  time.Time
}

// New starts an Attributor; emit receives each held event with its rule
// (nil: conntrack dropped it and no rule moved) and conntrack's part in it
// (nil: none seen).
func New[T any](cfg Config, emit func(item *T, r *Rule, ct *conntrack.Drop)) *Attributor[T] {
	cfg.defaults()
	a := &Attributor[T]{cfg: cfg, emit: emit, ns: map[uint32]*nsState[T]{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), based: make(chan struct{})}
	if cfg.Baseline < 0 {
		a.basedOnce.Do(func() { close(a.based) })
	}
	go a.loop()
	return a
}

// Baselined is closed once the namespaces found at the start have had
// their counters read (Config.Baseline): a drop after it compares with
// them and is named by its counter, not by lifetime counters. Closed at
// once when Baseline is negative, and on Close.
func (a *Attributor[T]) Baselined() <-chan struct{} { return a.based }

// Submit hands over a NETFILTER_DROP event (Wants) and its item, a copy the
// Attributor keeps. It never blocks on a read: it returns nil when the
// event is held (emit gets it later), or the rule to attach now when it
// cannot be held (too many waiting, no namespace, stopped).
func (a *Attributor[T]) Submit(ev *tracer.Event, item T) *Rule {
	if ev.Netns == 0 {
		a.unknown.Add(1)
		return &Rule{Backend: BackendNftables, Unknown: whyNoNetns}
	}
	now := time.Now()
	r := req[T]{item: item, ev: *ev, from: ev.Time, to: ev.Time, deadline: now.Add(a.cfg.MaxWait), arrived: now}
	if ev.Summary {
		r.from = ev.Time.Add(-a.cfg.SummarySpan)
	}
	a.mu.Lock()
	if a.closed || a.held >= a.cfg.MaxHeld {
		why := whyTooMany
		if a.closed {
			why = whyStopping
		}
		a.mu.Unlock()
		a.unknown.Add(1)
		return &Rule{Backend: BackendNftables, Unknown: why}
	}
	s := a.state(ev.Netns)
	first := len(s.pending) == 0
	s.pending = append(s.pending, r)
	s.seen = now
	a.held++
	a.mu.Unlock()
	if first { // a namespace starts waiting: its read may be due now
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// state is the namespace's, made if new; a.mu held.
func (a *Attributor[T]) state(ino uint32) *nsState[T] {
	s := a.ns[ino]
	if s == nil {
		s = &nsState[T]{reader: netnsReader{ino: ino}}
		if h := a.cfg.readHook; h != nil {
			s.reader.hook = func(stage string) { h(ino, stage) }
		}
		a.ns[ino] = s
	}
	return s
}

// maxBaselineReads bounds the baseline reads of one step (new namespaces
// found by a scan); the rest wait for the next scans.
const maxBaselineReads = 16

// maxStates bounds the namespaces remembered.
const maxStates = 8192

// baseline looks for namespaces, reads the counters of new ones (the
// baseline their first drop compares with) and forgets those gone.
func (a *Attributor[T]) baseline(now time.Time) {
	a.baselined = now
	a.paths, a.scanned = a.cfg.NetnsPaths(), time.Now()
	var todo []uint32
	a.mu.Lock()
	for ino, s := range a.ns {
		if _, ok := a.paths[ino]; !ok && len(s.pending) == 0 {
			delete(a.ns, ino) // gone: its number may come back as another
		}
	}
	for ino := range a.paths {
		if len(a.ns) >= maxStates {
			break
		}
		// new, or its baseline read failed (tried again after a minute)
		if s := a.state(ino); s.last == nil && len(s.pending) == 0 && len(todo) < maxBaselineReads &&
			(s.reads == 0 || now.Sub(s.lastRead) > time.Minute) {
			todo = append(todo, ino)
		}
	}
	a.mu.Unlock()
	for _, ino := range todo {
		a.read(ino, true)
	}
	a.basedOnce.Do(func() { close(a.based) })
}

// Close attributes what is held (reading each namespace once more), gives
// every held event to emit, and stops. Submit after Close returns a rule
// at once.
func (a *Attributor[T]) Close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		<-a.done
		return
	}
	a.closed = true
	a.mu.Unlock()
	close(a.stop)
	<-a.done
}

// Stats are an Attributor's counters: reads of namespaces' rules, reads
// that failed, events that went out with Unknown set, events held now,
// reads of conntrack statistics that failed.
type Stats struct {
	Reads, ReadErrors, Unknown uint64
	Held                       int
	ConntrackReadErrors        uint64
}

// Stats returns the counters so far.
func (a *Attributor[T]) Stats() Stats {
	a.mu.Lock()
	held := a.held
	a.mu.Unlock()
	return Stats{Reads: a.reads.Load(), ReadErrors: a.readErrors.Load(), Unknown: a.unknown.Load(), Held: held,
		ConntrackReadErrors: a.ctReadErrors.Load()}
}

func (a *Attributor[T]) loop() {
	defer close(a.done)
	defer a.basedOnce.Do(func() { close(a.based) })
	tick := time.NewTicker(a.cfg.Interval / 10)
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			a.step(true)
			return
		case <-a.wake:
		case <-tick.C:
		}
		a.step(false)
	}
}

// step reads the namespaces that are due, then gives out the events that
// can be attributed, or waited too long.
func (a *Attributor[T]) step(final bool) {
	now := time.Now()
	var due []uint32
	if !final && a.cfg.Baseline > 0 && now.Sub(a.baselined) >= a.cfg.Baseline {
		a.baseline(now)
		now = time.Now()
	}
	a.mu.Lock()
	for ino, s := range a.ns {
		if len(s.pending) == 0 {
			// quiet since its last drop, or since a baseline read that
			// no drop followed yet (drops from before the read, still on
			// their way from the ring buffer, need its lifetime window)
			if now.Sub(maxTime(s.seen, s.lastRead)) > a.cfg.Keep && s.last != nil && !s.last.compact {
				// quiet: keep only the counters, as the next drop's baseline
				// (conntrack's statistics too: they count since the
				// namespace was made)
				s.last, s.windows = s.last.counters(), nil
				s.movedTotal, s.claimed = nil, nil
				s.ct = s.ct.Baseline()
			}
			continue
		}
		// a namespace whose reads are long (thousands of rules) is read at
		// most a third of the time
		if final || now.Sub(s.lastRead) >= max(a.cfg.Interval, 2*s.took) {
			due = append(due, ino)
		}
	}
	a.mu.Unlock()
	for _, ino := range due {
		a.read(ino, false)
	}
	type out struct {
		item *T
		r    *Rule
		ct   *conntrack.Drop
	}
	var outs []out
	now = time.Now()
	a.mu.Lock()
	for _, s := range a.ns {
		// Only a new read, or the oldest event's deadline (events are in
		// arrival order), can give events out.
		if s.reads == s.walked && !final && (len(s.pending) == 0 || now.Before(s.deadline(&s.pending[0]))) {
			continue
		}
		s.walked = s.reads
		type decision struct {
			r       *Rule
			sole    *ruleInfo   // the one counted rule named, to be credited
			counted []*ruleInfo // the counted rules listed
		}
		dec := make([]decision, len(s.pending))
		demand := map[ruleKey]uint64{}
		for i := range s.pending {
			p := &s.pending[i]
			var r *Rule
			var sole *ruleInfo
			var counted []*ruleInfo
			switch {
			case s.last != nil && s.last.at.After(p.to.Add(slack)) &&
				(a.cfg.NoConntrack || s.ctWontRead || s.ct.ReadAfter(p.to.Add(slack)) || final || now.After(s.deadline(p))):
				// the rules, and conntrack's statistics unless they
				// cannot be read here, read after it (a failed read of
				// the statistics is retried until the deadline)
				r, sole, counted = s.attribute(p, nil)
				if sole != nil {
					demand[sole.key()] += p.ev.Count
				}
			case s.err != nil && s.errAt.After(p.to) && !errors.Is(s.err, errReadTimeout):
				r = &Rule{Backend: BackendNftables, Unknown: s.err.Error()}
			case final:
				r = &Rule{Backend: BackendNftables, Unknown: whyStopping}
			case now.After(s.deadline(p)):
				why := whyTimeout
				if s.err != nil { // a read that timed out, retried until the deadline
					why = s.err.Error()
				}
				r = &Rule{Backend: BackendNftables, Unknown: why}
			}
			dec[i] = decision{r, sole, counted}
		}
		// A rule is credited with at most what its counter moved: when more
		// drops than that would name it alone, none does; each lists it with
		// the other verdicts that may have dropped the packet. A drop shown
		// with candidates may have been any of theirs: it counts against
		// each (up to what it moved).
		if s.claimed == nil {
			s.claimed = map[ruleKey]uint64{}
		}
		for i := range s.pending {
			d, n := &dec[i], s.pending[i].ev.Count
			if d.sole != nil {
				k := d.sole.key()
				if demand[k] <= s.movedTotal[k]-s.claimed[k] {
					s.claimed[k] += n
					continue
				}
				d.r, _, d.counted = s.attribute(&s.pending[i], d.sole)
			}
			for _, ri := range d.counted {
				k := ri.key()
				s.claimed[k] = min(s.movedTotal[k], s.claimed[k]+n)
			}
		}
		keep := s.pending[:0]
		for i := range s.pending {
			p := &s.pending[i]
			r := dec[i].r
			if r == nil {
				keep = append(keep, *p)
				continue
			}
			var ct *conntrack.Drop
			if s.ct.ReadAfter(p.to.Add(slack)) {
				ct = s.ct.Take(p.from.Add(-slack), p.to.Add(slack), p.ev.Count, conntrackMayDrop(&p.ev), stateRule(s.last, r))
			}
			if ct != nil && ct.Cause != conntrack.CauseInvalid && strings.HasPrefix(r.Unknown, whyNoRule) {
				r = nil // conntrack's own drop, and no rule moved
			}
			if r != nil && r.Known() {
				r.K8s = kubeProxyMeaning(r, &p.ev, s.last)
				if r.K8s == nil && strings.HasPrefix(r.Chain, krPodChainPrefix) {
					r.K8s = kubeRouterMeaning(r, s.info(r.Ref), &p.ev)
				}
			}
			item := p.item
			outs = append(outs, out{&item, r, ct})
		}
		clear(s.pending[len(keep):])
		s.pending = keep
		s.prune(now, a.cfg)
	}
	a.held -= len(outs)
	a.mu.Unlock()
	for _, o := range outs {
		if o.r != nil && !o.r.Known() {
			a.unknown.Add(1)
		}
		a.emit(o.item, o.r, o.ct)
	}
}

// deadline is when the event goes out without a rule: MaxWait after it
// arrived, or, in a namespace whose reads take long (thousands of rules)
// or timed out, long enough for the read after it (four of the last read's
// length, twice what the next may take; at most maxReadTimeout).
func (s *nsState[T]) deadline(p *req[T]) time.Time {
	return maxTime(p.deadline, p.arrived.Add(min(max(4*s.took, 2*s.timeout), maxReadTimeout)))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// maxReadTimeout bounds the read timeout, which grows with how long the
// namespace's reads take (Config.ReadTimeout at least).
const maxReadTimeout = 10 * time.Second

// maxWindows bounds the windows kept per namespace (10 s of reads every
// 200 ms is 50).
const maxWindows = 128

// slack widens an event's span on both sides: its time comes from the
// kernel's clock anchored to the wall clock, reads are timed by the wall
// clock, and the two may disagree by this much.
const slack = 5 * time.Millisecond

// read reads one namespace's rules and records what moved. A baseline
// read (no event waits for it) may take up to maxReadTimeout.
func (a *Attributor[T]) read(ino uint32, baseline bool) {
	a.mu.Lock()
	s := a.ns[ino]
	a.mu.Unlock()
	if s == nil {
		return
	}
	start := time.Now()
	s.reader.timeout = max(a.cfg.ReadTimeout, s.timeout)
	if baseline {
		s.reader.timeout = maxReadTimeout
	}
	var rs *ruleset
	var path string
	var ok bool
	err := errNetnsGone
	for try := 0; try < 2 && errors.Is(err, errNetnsGone); try++ {
		// A path found earlier may be gone (its process exited) while the
		// namespace lives on, or lives under the same inode number anew:
		// look again, at once, before calling it gone.
		path, ok = a.path(ino, try > 0)
		if !ok {
			continue
		}
		rs, err = s.reader.read(path) // the reader is the loop's alone
		if errors.Is(err, errNetnsGone) {
			delete(a.paths, ino)
		}
	}
	a.reads.Add(1)
	var cts conntrack.Stats
	var ctErr error = errNetnsGone
	var ctStart, ctEnd time.Time
	if ok && !a.cfg.NoConntrack {
		// after the rules: a drop the rules' read follows is followed by
		// this one too
		ctStart = time.Now()
		cts, ctErr = conntrack.Read(path, a.cfg.ReadTimeout)
		ctEnd = time.Now()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s.ctWontRead = errors.Is(ctErr, conntrack.ErrNotLoaded)
	switch {
	case ctErr == nil:
		s.ct.Add(cts, ctStart, ctEnd)
	case ok && !a.cfg.NoConntrack && !s.ctWontRead:
		a.ctReadErrors.Add(1)
	}
	s.lastRead = start
	if errors.Is(err, errReadTimeout) { // more time next time, up to maxReadTimeout
		s.timeout = min(2*s.reader.timeout, maxReadTimeout)
	}
	s.reads++
	if err != nil {
		a.readErrors.Add(1)
		s.err, s.errAt = err, start
		return
	}
	s.err = nil
	s.took = time.Since(start)
	s.timeout = min(4*s.took, maxReadTimeout) // a read may take four times the last
	if rs.renewed {                           // another namespace under this inode number: start afresh
		s.last, s.windows, s.movedTotal, s.claimed = nil, nil, nil, nil
		s.ct = conntrack.Windows{}
		if ctErr == nil {
			s.ct.Add(cts, ctStart, ctEnd)
		}
	}
	w := window{to: rs.end}
	var prev map[ruleKey]*ruleInfo
	if s.last != nil {
		w.from, prev = s.last.at, s.last.rules
	}
	for k, ri := range rs.rules {
		if !ri.hasCounter {
			continue
		}
		var before uint64
		if p := prev[k]; p != nil && p.hasCounter && p.packets <= ri.packets {
			before = p.packets
		}
		if d := ri.packets - before; d > 0 {
			w.moved = append(w.moved, moved{ri, d})
			if s.movedTotal == nil {
				s.movedTotal = map[ruleKey]uint64{}
			}
			s.movedTotal[k] += d
		}
	}
	s.windows = append(s.windows, w)
	s.last = rs
}

// path finds the namespace, scanning for it again at most once an
// Interval, or now when again (its known path just failed).
func (a *Attributor[T]) path(ino uint32, again bool) (string, bool) {
	if p, ok := a.paths[ino]; ok && !again {
		return p, true
	}
	if !again && time.Since(a.scanned) < a.cfg.Interval {
		return "", false
	}
	a.paths, a.scanned = a.cfg.NetnsPaths(), time.Now()
	p, ok := a.paths[ino]
	return p, ok
}

// prune forgets windows older than cfg.KeepWindows, and all but the
// last maxWindows.
func (s *nsState[T]) prune(now time.Time, cfg Config) {
	horizon := now.Add(-cfg.KeepWindows)
	i := 0
	for i < len(s.windows)-1 && (s.windows[i].to.Before(horizon) || len(s.windows)-i > maxWindows) {
		i++
	}
	if i > 0 {
		s.windows = slices.Delete(s.windows, 0, i)
	}
	s.ct.Prune(horizon)
}

// conntrackMayDrop says whether ev's packet may have been dropped by
// conntrack's own verdict: not when a rule's verdict freed it in
// nft_do_chain (kernels since 6.x free a rule's drop there, conntrack's
// at nf_hook_slow; older ones free both at nf_hook_slow).
func conntrackMayDrop(ev *tracer.Event) bool {
	return !strings.HasPrefix(ev.Location, "nft_do_chain+")
}

// stateRule says whether r names a rule (or candidates) that matches on
// conntrack state (ct state, -m conntrack/-m state, kube-proxy's INVALID
// drop), read in rs: such a rule drops what conntrack calls INVALID.
func stateRule(rs *ruleset, r *Rule) bool {
	if r == nil || !r.Known() {
		return false
	}
	if r.K8s != nil && r.K8s.Kind == MeaningInvalidConntrack {
		return true
	}
	if rs == nil {
		return false
	}
	refs := r.Candidates
	if r.Table != "" {
		refs = append(refs, r.Ref)
	}
	for _, ref := range refs {
		for _, ri := range rs.rules {
			if ri.Family == ref.Family && ri.Table == ref.Table && ri.Chain == ref.Chain && ri.Handle == ref.Handle &&
				ri.Position == ref.Position && ri.matchesCtState() {
				return true
			}
		}
	}
	return false
}

// attribute names the rule of one held event from the windows covering
// its span: the counted rules that moved (and whose expressions, and the
// jumps to whose chain, do not rule the packet out); else the rules
// without a counter that match it; else a base chain's drop policy. sole
// is the counted rule named alone (to be credited), if any. exhausted: a
// counted rule that moved less than the drops naming it alone; it is then
// listed with every other verdict that may have dropped the packet (the
// rules without a counter and policies that may match).
func (s *nsState[T]) attribute(p *req[T], exhausted *ruleInfo) (r *Rule, sole *ruleInfo, counted []*ruleInfo) {
	from, to := p.from.Add(-slack), p.to.Add(slack)
	sum := map[*ruleInfo]uint64{}
	byKey := map[ruleKey]*ruleInfo{}
	lifetime := false // a window without an earlier read: lifetime counters
	for _, w := range s.windows {
		if !w.from.Before(to) || w.to.Before(from) {
			continue
		}
		lifetime = lifetime || w.from.IsZero() && len(w.moved) > 0
		for _, m := range w.moved {
			k := m.ri.key()
			ri := byKey[k]
			if ri == nil {
				ri, byKey[k] = m.ri, m.ri
			}
			sum[ri] += m.delta
		}
	}
	var yes, maybe []Ref
	var one *ruleInfo // the last classified
	// classify puts ref among the rules that surely or may match the packet
	classify := func(ri *ruleInfo, ref Ref) bool {
		switch both(matches(ri, &p.ev), s.last.reached(ri, &p.ev, 0)) {
		case matchYes:
			ref.Verdict = vmapDrop(ref.Verdict)
			yes, one = append(yes, ref), ri
		case matchMaybe:
			maybe, one = append(maybe, ref), ri
		default:
			return false
		}
		return true
	}
	for ri, d := range sum {
		ref := ri.Ref
		ref.Packets = d
		if classify(ri, ref) {
			counted = append(counted, ri)
		}
	}
	how := HowCounter
	if lifetime {
		how = HowLifetime
	}
	nc := len(yes) + len(maybe)
	if nc > 0 && exhausted == nil {
		r = pick(how, yes, maybe)
		if nc == 1 && !lifetime {
			sole = one
		}
		return r, sole, counted
	}
	var policies []Ref
	for _, ri := range s.last.rules {
		if ri.hasCounter {
			continue
		}
		if strings.HasSuffix(ri.Verdict, "(policy)") {
			if matches(ri, &p.ev) != matchNo {
				policies = append(policies, ri.Ref)
			}
			continue
		}
		if !kubeProxyReached(s.last, ri, &p.ev) {
			continue
		}
		classify(ri, ri.Ref)
	}
	if exhausted != nil {
		// yes and maybe hold the exhausted rule (the one counted) and the
		// verdicts without counters
		all := append(append(yes, maybe...), policies...)
		if len(all) == 1 {
			return pick(how, all, nil), nil, counted // nothing else could have: named, not credited
		}
		return pick(how, nil, all), nil, counted
	}
	if len(yes) > 0 {
		return pick(HowMatch, kubeProxyFirst(yes), nil), nil, nil
	}
	if len(maybe)+len(policies) > 0 {
		return pick(HowMatch, nil, append(maybe, policies...)), nil, nil
	}
	if w := s.windows; len(w) > 0 && !w[0].from.IsZero() && from.Before(w[0].from) {
		return &Rule{Backend: BackendNftables, Unknown: whyTooOld}, nil, nil
	}
	why := whyNoRule
	if s.last.noLegacy {
		why += " (" + errNoLegacy.Error() + ")"
	}
	return &Rule{Backend: BackendNftables, Unknown: why}, nil, nil
}

// info is the rule ref names as read: in the last read, else in a window
// (a chain kube-router has replaced since).
func (s *nsState[T]) info(ref Ref) *ruleInfo {
	same := func(ri *ruleInfo) bool {
		return ri.Family == ref.Family && ri.Table == ref.Table && ri.Chain == ref.Chain && ri.Handle == ref.Handle && ri.Position == ref.Position
	}
	for _, ri := range s.last.rules {
		if same(ri) {
			return ri
		}
	}
	for i := len(s.windows) - 1; i >= 0; i-- {
		for _, m := range s.windows[i].moved {
			if same(m.ri) {
				return m.ri
			}
		}
	}
	return nil
}

// vmapDrop is the verdict of a rule that matches: a verdict map rule
// ("vmap @name") matches only when the element the packet hits says drop.
func vmapDrop(v string) string {
	if strings.HasPrefix(v, "vmap @") {
		return "DROP"
	}
	return v
}

// pick makes the Rule: one candidate is the rule; more are all shown as
// candidates and none is named (a rule whose expressions kdrop cannot
// evaluate may come first in its chain, so "the one that surely matches"
// would be a guess).
func pick(how string, yes, maybe []Ref) *Rule {
	all := append(append([]Ref(nil), yes...), maybe...)
	slices.SortFunc(all, func(x, y Ref) int {
		if c := strings.Compare(x.Family+" "+x.Table+" "+x.Chain, y.Family+" "+y.Table+" "+y.Chain); c != 0 {
			return c
		}
		return int(x.Handle) - int(y.Handle)
	})
	r := &Rule{Backend: BackendNftables, How: how}
	if slices.ContainsFunc(all, func(x Ref) bool { return x.Position > 0 }) {
		r.Backend = BackendLegacy // only legacy rules have positions
		if slices.ContainsFunc(all, func(x Ref) bool { return x.Position == 0 }) {
			r.Backend = BackendNftables + "," + BackendLegacy
		}
	}
	if len(all) == 1 {
		r.Ref = all[0]
	} else {
		r.Candidates = all
	}
	return r
}
