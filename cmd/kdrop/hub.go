package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/report"
	"github.com/kdrop/kdrop/k8s"
	"github.com/kdrop/kdrop/tracer"
)

// hub fans the agent's events out to /events clients. A slow client never
// holds up the tracer: its lines are dropped, counted, and it is told how
// many occurrences it missed (see lostJSON and missedJSON for the notices).
type hub struct {
	node    string
	res     *k8s.Resolver
	reasons *tracer.Reasons
	mu      sync.RWMutex
	subs    map[*subscriber]struct{}
	// maxStreams limits clients (kdrop agent --max-streams, default 32),
	// each holding a subBuffer-line buffer: past it, a new stream is
	// refused with 503 and Retry-After. 0: no limit.
	maxStreams int
}

const (
	subBuffer       = 4096 // lines queued per client
	streamRetryWait = 5    // seconds a refused client is asked to wait (Retry-After)
)

type subscriber struct {
	filter tracer.Filter
	match  func(*record) bool
	ch     chan []byte
	lost   atomic.Uint64 // lines the ring buffer had no room for (counts exact)
	missed atomic.Uint64 // occurrences the kernel skipped kdrop's program for (counts short)
	unsent atomic.Uint64 // occurrences in lines this client had no room for (counts short)
}

func newHub(p *pipeline, maxStreams int) *hub {
	return &hub{node: p.node, res: p.res, reasons: p.t.Reasons, maxStreams: maxStreams, subs: map[*subscriber]struct{}{}}
}

// publish offers one event (its JSON line, reused by the caller) to every
// client whose filter matches.
func (h *hub) publish(rec *record, line []byte) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var cp []byte
	for s := range h.subs {
		if !s.filter.Match(rec.Event) || !s.match(rec) {
			continue
		}
		if cp == nil {
			cp = append([]byte(nil), line...)
		}
		select {
		case s.ch <- cp:
		default:
			s.unsent.Add(max(rec.Count, 1))
		}
	}
}

// loss tells every client about lines the ring buffer lost and
// occurrences the kernel missed.
func (h *hub) loss(lines, missed uint64) {
	if lines == 0 && missed == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for s := range h.subs {
		s.lost.Add(lines)
		s.missed.Add(missed)
	}
}

// lossNotices are the notice lines for what s was told of since the last
// call: missed first, as it matters more.
func (s *subscriber) lossNotices(at time.Time, node string) [][]byte {
	var out [][]byte
	if n := s.missed.Swap(0); n > 0 {
		out = append(out, missedJSON(at, node, n, report.MissedByKernel))
	}
	if n := s.unsent.Swap(0); n > 0 {
		out = append(out, missedJSON(at, node, n, report.MissedByStream))
	}
	if n := s.lost.Swap(0); n > 0 {
		out = append(out, lostJSON(at, node, n))
	}
	return out
}

func (h *hub) clients() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs)
}

// streamFilter reads the filters of kdrop watch from query parameters
// (repeated or comma-separated), checked as strictly as the flags.
func (h *hub) streamFilter(q map[string][]string) (tracer.Filter, func(*record) bool, error) {
	var f watchFlags
	list := func(k string) []string {
		var out []string
		for _, v := range q[k] {
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					out = append(out, s)
				}
			}
		}
		return out
	}
	one := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	f.output = "json"
	f.types, f.reasons, f.cidrs = list("type"), list("reason"), list("cidr")
	f.proto, f.netns = one("proto"), one("netns")
	if p := one("port"); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return tracer.Filter{}, nil, fmt.Errorf("port %q: not a port number", p)
		}
		f.port = uint16(n)
	}
	f.id.mode, f.id.namespace, f.id.pod = "on", one("namespace"), one("pod")
	opts, err := f.options(nil)
	if err != nil {
		return tracer.Filter{}, nil, err
	}
	for _, r := range opts.Filter.Reasons { // names, checked against this kernel
		if _, err := h.reasons.LookupOrSuggest(r); err != nil {
			return tracer.Filter{}, nil, err
		}
	}
	match, err := f.id.matcher(h.res)
	return opts.Filter, match, err
}

func (h *hub) serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	filter, match, err := h.streamFilter(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s := &subscriber{filter: filter, match: match, ch: make(chan []byte, subBuffer)}
	h.mu.Lock()
	if h.maxStreams > 0 && len(h.subs) >= h.maxStreams {
		h.mu.Unlock()
		w.Header().Set("Retry-After", strconv.Itoa(streamRetryWait))
		http.Error(w, fmt.Sprintf("kdrop agent on node %s already serves %d /events streams, its limit: retry later, or raise the limit with kdrop agent --max-streams",
			h.node, h.maxStreams), http.StatusServiceUnavailable)
		return
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.subs, s)
		h.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	fl, _ := w.(http.Flusher)
	notice := func(typ string, extra string) {
		fmt.Fprintf(w, `{"time":%q,"type":%q,"node":%q%s}`+"\n", time.Now().UTC().Format(time.RFC3339Nano), typ, h.node, extra)
	}
	notice("hello", "")
	if fl != nil {
		fl.Flush()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	idle := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.Context().Done():
			return
		case line := <-s.ch:
			if _, err := w.Write(line); err != nil {
				return
			}
			for n := len(s.ch); n > 0; n-- { // write what queued up, then flush once
				w.Write(<-s.ch)
			}
			idle = 0
		case <-tick.C:
			if ls := s.lossNotices(time.Now().UTC(), h.node); len(ls) > 0 {
				for _, l := range ls {
					w.Write(append(l, '\n'))
				}
			} else if idle++; idle >= 15 {
				notice("heartbeat", "") // lets a client tell a quiet node from a dead connection
				idle = 0
			} else {
				continue
			}
		}
		if fl != nil {
			fl.Flush()
		}
	}
}
