// Package stream is the agent's /events stream: a hub that fans the agent's
// lines out to clients, each with its own filter, without ever holding up
// the tracer, and the bearer-token authorization in front of it.
package stream

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The stream is authorized like kube-rbac-proxy does it: the caller's
// bearer token goes to a TokenReview, the user it names to a
// SubjectAccessReview for this virtual resource.
const (
	streamGroup    = "kdrop.dev"
	streamResource = "events"
	streamVerb     = "get"
	// TokenHeader: the API server's pod proxy strips Authorization after
	// authenticating the caller; kdrop tail repeats the token in this header.
	TokenHeader = "X-Kdrop-Authorization"
	authTTL     = 10 * time.Second
)

// Authorizer lets through the callers allowed to read kdrop events.
type Authorizer struct {
	cs  kubernetes.Interface
	log *zap.Logger
	// namespace is the agent's own: the SubjectAccessReview asks for
	// access there, so a RoleBinding in the agents' namespace grants the
	// stream as well as a ClusterRoleBinding does. "" asks cluster-wide.
	namespace string
	mu        sync.Mutex
	// decisions are cached briefly per token so a reconnecting tail does
	// not cost two API calls each time.
	cache map[[32]byte]authDecision
	limit *rate.Limiter
}

type authDecision struct {
	status int
	msg    string
	user   string
	at     time.Time
}

// NewAuthorizer checks tokens with cs's API server; namespace is where
// access is asked for ("" cluster-wide; see OwnNamespace).
func NewAuthorizer(cs kubernetes.Interface, namespace string, log *zap.Logger) *Authorizer {
	return &Authorizer{cs: cs, namespace: namespace, log: log, cache: map[[32]byte]authDecision{},
		limit: rate.NewLimiter(reviewRate, reviewBurst)}
}

// saNamespaceFile is where a pod finds its own namespace.
const saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// OwnNamespace is the agent's namespace: $POD_NAMESPACE (the downward API,
// as deploy/ sets it), else the service account's, else "" (run outside a
// pod: access is then checked cluster-wide).
func OwnNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	b, _ := os.ReadFile(saNamespaceFile)
	return strings.TrimSpace(string(b))
}

func bearer(h string) string {
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// Wrap puts the authorization in front of next.
func (a *Authorizer) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := bearer(r.Header.Get(TokenHeader))
		if token == "" {
			token = bearer(r.Header.Get("Authorization"))
		}
		if token == "" {
			http.Error(w, "no bearer token: send one in Authorization (or "+TokenHeader+" through the API server's pod proxy)", http.StatusUnauthorized)
			return
		}
		d := a.decide(r.Context(), token)
		if d.status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		if d.status != http.StatusOK {
			http.Error(w, d.msg, d.status)
			return
		}
		a.log.Debug("stream client authorized", zap.String("user", d.user), zap.String("remote", r.RemoteAddr))
		next.ServeHTTP(w, r)
	})
}

func (a *Authorizer) decide(ctx context.Context, token string) authDecision {
	key := sha256.Sum256([]byte(token))
	a.mu.Lock()
	d, ok := a.cache[key]
	a.mu.Unlock()
	if ok && time.Since(d.at) < authTTL {
		return d
	}
	// Reviews of tokens not seen lately are rate-limited by the agent
	// itself: random tokens must not flood the API server, nor wait in
	// front of real users' reviews for long.
	if !a.limit.Allow() {
		return authDecision{status: http.StatusTooManyRequests, msg: "too many new bearer tokens to check with the API server just now: retry in a second"}
	}
	rctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	d = a.review(rctx, token)
	d.at = time.Now()
	if d.status != http.StatusServiceUnavailable { // refusals cached too: a negative cache
		a.remember(key, d)
	}
	return d
}

// Reviews: at most reviewRate a second (burst reviewBurst) for tokens not
// cached, each bounded by reviewTimeout.
const (
	reviewRate    = 5
	reviewBurst   = 10
	reviewTimeout = 5 * time.Second
)

// authCacheMax bounds the decisions cached.
const authCacheMax = 1024

// remember caches d under key, after dropping expired decisions. At most
// authCacheMax are kept: past that, a new one is not cached, so a flood of
// distinct tokens costs reviews, not memory.
func (a *Authorizer) remember(key [32]byte, d authDecision) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, v := range a.cache {
		if time.Since(v.at) >= authTTL {
			delete(a.cache, k)
		}
	}
	if len(a.cache) < authCacheMax {
		a.cache[key] = d
	}
}

func (a *Authorizer) review(ctx context.Context, token string) authDecision {
	tr, err := a.cs.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		a.log.Warn("TokenReview failed", zap.Error(err))
		return authDecision{status: http.StatusServiceUnavailable, msg: "cannot check the token with the API server: " + err.Error()}
	}
	if !tr.Status.Authenticated {
		return authDecision{status: http.StatusUnauthorized, msg: "token not accepted by the API server: " + tr.Status.Error}
	}
	u := tr.Status.User
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar, err := a.cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: a.namespace, Group: streamGroup, Resource: streamResource, Verb: streamVerb},
	}}, metav1.CreateOptions{})
	if err != nil {
		a.log.Warn("SubjectAccessReview failed", zap.Error(err))
		return authDecision{status: http.StatusServiceUnavailable, msg: "cannot check access with the API server: " + err.Error()}
	}
	if !sar.Status.Allowed {
		where := "cluster-wide"
		if a.namespace != "" {
			where = "in namespace " + a.namespace
		}
		return authDecision{status: http.StatusForbidden, user: u.Username,
			msg: fmt.Sprintf("%s may not read kdrop events: grant %q on %q in API group %s %s (bind ClusterRole kdrop-viewer with a RoleBinding there or a ClusterRoleBinding)", u.Username, streamVerb, streamResource, streamGroup, where)}
	}
	return authDecision{status: http.StatusOK, user: u.Username}
}
