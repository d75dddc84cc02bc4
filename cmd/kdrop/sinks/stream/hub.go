package stream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kdrop/kdrop/cmd/kdrop/enrich"
	"github.com/kdrop/kdrop/cmd/kdrop/line"
	"github.com/kdrop/kdrop/tracer"
)

// Hub fans the agent's lines out to /events clients. A slow client never
// holds up the tracer: its lines are dropped, counted, and it is told how
// many occurrences it missed (a "missed" notice with cause "stream").
type Hub struct {
	node    string
	reasons *tracer.Reasons
	mu      sync.RWMutex
	subs    map[*subscriber]struct{}
	// maxStreams limits clients (kdrop agent --max-streams, default 32),
	// each holding a SubBuffer-line buffer: past it, a new stream is
	// refused with 503 and Retry-After. 0: no limit.
	maxStreams int
	// Heartbeat is how long a stream may be quiet before it gets a
	// heartbeat notice (default 15 s; whole seconds). Set before serving.
	Heartbeat time.Duration
}

const (
	// SubBuffer is how many lines are queued per client.
	SubBuffer       = 4096
	streamRetryWait = 5 // seconds a refused client is asked to wait (Retry-After)
	heartbeatEvery  = 15 * time.Second
)

type subscriber struct {
	filter tracer.Filter
	match  func(*line.Event) bool
	ch     chan []byte
	lost   atomic.Uint64 // lines the ring buffer had no room for (counts exact)
	missed atomic.Uint64 // occurrences the kernel skipped kdrop's program for (counts short)
	unsent atomic.Uint64 // occurrences in lines this client had no room for (counts short)
}

// NewHub serves the lines of node. Drop reasons in queries are checked
// against reasons (the running kernel's; nil: not checked); maxStreams 0
// is no limit.
func NewHub(node string, reasons *tracer.Reasons, maxStreams int) *Hub {
	return &Hub{node: node, reasons: reasons, maxStreams: maxStreams, subs: map[*subscriber]struct{}{}}
}

// Publish offers one event, with its encoded line (reused by the caller),
// to every client whose filter matches.
func (h *Hub) Publish(ev *line.Event, encoded []byte) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	var cp []byte
	for s := range h.subs {
		if !s.filter.Match(&ev.Event) || !s.match(ev) {
			continue
		}
		if cp == nil {
			cp = append(append([]byte(nil), encoded...), '\n')
		}
		select {
		case s.ch <- cp:
		default:
			s.unsent.Add(max(ev.Count, 1))
		}
	}
}

// Loss tells every client about lines the ring buffer lost and
// occurrences the kernel missed.
func (h *Hub) Loss(lines, missed uint64) {
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

// lossNotices appends to b the notice lines for what s was told of since
// the last call: missed first, as it matters more.
func (s *subscriber) lossNotices(b []byte, at time.Time, node string) []byte {
	n := line.Notice{Time: at, Node: node}
	add := func() { b = append(line.AppendNotice(b, &n), '\n') }
	if m := s.missed.Swap(0); m > 0 {
		n.Type, n.Missed, n.Cause = line.NoticeMissed, m, line.MissedByKernel
		add()
	}
	if m := s.unsent.Swap(0); m > 0 {
		n.Type, n.Missed, n.Cause = line.NoticeMissed, m, line.MissedByStream
		add()
	}
	if l := s.lost.Swap(0); l > 0 {
		n.Type, n.Lost, n.Missed, n.Cause = line.NoticeLost, l, 0, ""
		add()
	}
	return b
}

func (h *Hub) heartbeat() time.Duration {
	if h.Heartbeat > 0 {
		return h.Heartbeat
	}
	return heartbeatEvery
}

// Clients is how many clients are connected.
func (h *Hub) Clients() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs)
}

// filter reads a client's filter from its query, checked as strictly as
// kdrop watch's flags.
func (h *Hub) filter(q map[string][]string) (tracer.Filter, func(*line.Event) bool, error) {
	f, err := enrich.FilterFromQuery(q)
	if err != nil {
		return tracer.Filter{}, nil, queryError(err)
	}
	tf, err := f.Trace()
	if err != nil {
		return tracer.Filter{}, nil, queryError(err)
	}
	// Which benign reasons reach the stream is the agent's own setting
	// (kdrop agent --include-benign), applied in its kernel already.
	tf.IncludeBenign = true
	for _, r := range tf.Reasons { // names, checked against this kernel
		if h.reasons == nil {
			break
		}
		if _, err := h.reasons.LookupOrSuggest(r); err != nil {
			return tracer.Filter{}, nil, queryError(&enrich.FieldError{Field: "reason", Err: err})
		}
	}
	match, err := f.PodMatcher(nil, 0) // no selector in a query: no API calls
	if err != nil {
		return tracer.Filter{}, nil, queryError(err)
	}
	return tf, match, nil
}

// queryError words a filter error for an /events caller: it names the
// query parameter, not the flag.
func queryError(err error) error {
	var fe *enrich.FieldError
	if errors.As(err, &fe) {
		return errors.New(fe.Param())
	}
	return err
}

// Serve streams NDJSON lines (package line) to one client until it or
// ctx goes away: a hello notice, then the events its query selects, loss
// notices, and a heartbeat after 15 quiet seconds.
func (h *Hub) Serve(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	filter, match, err := h.filter(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s := &subscriber{filter: filter, match: match, ch: make(chan []byte, SubBuffer)}
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
	var buf []byte
	notice := func(typ string) {
		buf = append(line.AppendNotice(buf[:0], &line.Notice{Time: time.Now(), Type: typ, Node: h.node}), '\n')
		w.Write(buf)
	}
	notice(line.NoticeHello)
	if fl != nil {
		fl.Flush()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	idle := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.Context().Done():
			return
		case l := <-s.ch:
			if _, err := w.Write(l); err != nil {
				return
			}
			for n := len(s.ch); n > 0; n-- { // write what queued up, then flush once
				w.Write(<-s.ch)
			}
			idle = 0
		case <-tick.C:
			if buf = s.lossNotices(buf[:0], time.Now(), h.node); len(buf) > 0 {
				w.Write(buf)
			} else if idle += time.Second; idle >= h.heartbeat() {
				notice(line.NoticeHeartbeat) // lets a client tell a quiet node from a dead connection
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
