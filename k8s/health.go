package k8s

import (
	"context"
	"errors"
	"io"
	"net"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	utilnet "k8s.io/apimachinery/pkg/util/net"
)

// Conditions reported by Status().Condition.
const (
	ConditionStarting     = "starting"     // no list has completed yet and no error was seen
	ConditionOK           = "ok"           // synced, every list/watch succeeding
	ConditionUnreachable  = "unreachable"  // network errors, API server down, 5xx, 429
	ConditionForbidden    = "forbidden"    // RBAC denies a list or watch
	ConditionUnauthorized = "unauthorized" // credentials rejected
	ConditionError        = "error"        // any other API error (e.g. resource not served)
)

// conditionRank orders error conditions when several resources fail
// differently: the most actionable one is reported.
var conditionRank = map[string]int{
	ConditionError: 1, ConditionUnreachable: 2, ConditionForbidden: 3, ConditionUnauthorized: 4,
}

// classify maps a list or watch error to a condition; "" means the error is
// part of normal operation (an expired resourceVersion, a closed watch).
func classify(err error) string {
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, io.EOF):
		return ""
	case apierrors.IsResourceExpired(err), apierrors.IsGone(err):
		return "" // the reflector relists; nothing is wrong with the API
	case apierrors.IsForbidden(err):
		return ConditionForbidden
	case apierrors.IsUnauthorized(err):
		return ConditionUnauthorized
	case apierrors.IsServiceUnavailable(err), apierrors.IsTooManyRequests(err),
		apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsInternalError(err), apierrors.IsUnexpectedServerError(err):
		return ConditionUnreachable
	}
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		if status.Status().Code >= 500 {
			return ConditionUnreachable
		}
		return ConditionError
	}
	var netErr net.Error
	if errors.As(err, &netErr) || utilnet.IsConnectionRefused(err) || utilnet.IsConnectionReset(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) || utilnet.IsProbableEOF(err) {
		return ConditionUnreachable
	}
	return ConditionError
}

// Outages.
//
// Start never waits for the API server. The informers' list and watch calls
// go through wrappers that report each outcome here; client-go's default
// watch error handler, which logs every failed retry through klog, is
// replaced by the same report. When the API server is unreachable, denies
// access (RBAC) or rejects the credentials, the informers keep retrying with
// client-go's backoff (0.8 s doubling to 30 s), lookups keep answering from
// the last index with Unresolved set (while a required informer — pods,
// services, endpointslices — fails or has not synced), and resolution
// resumes by itself once calls succeed again, within about the backoff then
// reached (seconds after a short outage, at most ~30 s).
//
// health tracks, per informer, whether its last list or watch call worked,
// and turns that into one condition. It logs a condition once per episode
// (not per retry or per resource) and the recovery once.
type health struct {
	log *zap.Logger

	mu        sync.Mutex
	res       map[string]*resHealth
	synced    bool // required informers synced (set once)
	cond      string
	since     time.Time
	lastErr   error
	lastErrAt time.Time
	logged    map[string]bool // conditions logged in the current episode
	episode   bool            // an error was logged and no recovery since

	ready    func(bool) // called with the new readiness whenever it changes
	wasReady bool
}

type resHealth struct {
	required bool
	ok       bool // last call succeeded
	err      error
	cond     string
	errAt    time.Time
}

func newHealth(log *zap.Logger, ready func(bool)) *health {
	return &health{
		log:    log,
		res:    map[string]*resHealth{},
		cond:   ConditionStarting,
		since:  time.Now(),
		logged: map[string]bool{},
		ready:  ready,
	}
}

func (h *health) add(resource string, required bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.res[resource] = &resHealth{required: required}
}

// report records the outcome of one list or watch call.
func (h *health) report(resource string, err error) {
	cond := classify(err)
	if err != nil && cond == "" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.res[resource]
	if r == nil {
		return
	}
	if err == nil {
		if r.ok {
			return // the common case: nothing changed
		}
		r.ok, r.err, r.cond = true, nil, ""
	} else {
		r.ok, r.err, r.cond, r.errAt = false, err, cond, time.Now()
		h.lastErr, h.lastErrAt = err, r.errAt
	}
	h.evalLocked()
}

func (h *health) setSynced() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced = true
	h.evalLocked()
}

// evalLocked recomputes the condition and logs transitions.
func (h *health) evalLocked() {
	worst, worstRes := "", ""
	allOK, requiredOK := true, true
	for name, r := range h.res {
		// The worst condition; between equals, a required resource, then
		// the first by name.
		if r.cond != "" && (worst == "" || conditionRank[r.cond] > conditionRank[worst] ||
			(conditionRank[r.cond] == conditionRank[worst] && moreRelevant(r, name, h.res[worstRes], worstRes))) {
			worst, worstRes = r.cond, name
		}
		if !r.ok {
			allOK = false
			if r.required {
				requiredOK = false
			}
		}
	}
	cond := worst
	switch {
	case cond != "":
	case allOK && h.synced:
		cond = ConditionOK
	default:
		cond = ConditionStarting // no error, but not everything listed yet
	}
	if cond != h.cond {
		h.cond, h.since = cond, time.Now()
		switch {
		case conditionRank[cond] > 0 && !h.logged[cond]:
			h.logged[cond] = true
			h.episode = true
			r := h.res[worstRes]
			h.log.Warn(conditionMessage(cond),
				zap.String("condition", cond),
				zap.String("resource", worstRes),
				zap.Error(r.err))
		case cond == ConditionOK && h.episode:
			h.episode = false
			clear(h.logged)
			h.log.Info("kubernetes API access recovered: identity resolution resumed")
		}
	}
	ready := h.synced && requiredOK
	if ready != h.wasReady {
		h.wasReady = ready
		if h.ready != nil {
			h.ready(ready)
		}
	}
}

func moreRelevant(a *resHealth, aName string, b *resHealth, bName string) bool {
	if a.required != b.required {
		return a.required
	}
	return aName < bName
}

func conditionMessage(cond string) string {
	switch cond {
	case ConditionUnreachable:
		return "kubernetes API unreachable: lookups are Unresolved (last known identities kept) until it answers again; retrying"
	case ConditionForbidden:
		return "kubernetes API access forbidden (RBAC): grant kdrop's ClusterRole (k8s.ClusterRoleRules); lookups are Unresolved until then; retrying"
	case ConditionUnauthorized:
		return "kubernetes API rejected the credentials: lookups are Unresolved; retrying"
	default:
		return "kubernetes API error: lookups may be Unresolved; retrying"
	}
}

// ResourceStatus is one informer's state.
type ResourceStatus struct {
	Resource string // "pods", "services", "endpointslices", "replicasets", "jobs"
	Required bool   // lookups are Unresolved while a required resource fails
	Synced   bool   // initial list done
	OK       bool   // last list/watch call succeeded
	Error    string // last error while not OK
}

func (h *health) status(st *Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st.Condition = h.cond
	st.Since = h.since
	st.Forbidden = h.cond == ConditionForbidden
	if h.lastErr != nil {
		st.LastError = h.lastErr.Error()
		st.LastErrorTime = h.lastErrAt
	}
	for name, r := range h.res {
		rs := ResourceStatus{Resource: name, Required: r.required, OK: r.ok}
		if r.err != nil {
			rs.Error = r.err.Error()
			if r.cond == ConditionForbidden {
				st.Forbidden = true
			}
		}
		st.Resources = append(st.Resources, rs)
	}
	sort.Slice(st.Resources, func(i, j int) bool { return st.Resources[i].Resource < st.Resources[j].Resource })
}
