// Package stream is the agent's /events stream: a hub that fans the agent's
// lines out to clients, each with its own filter, without ever holding up
// the tracer, and the authorization in front of it (stream tokens: auth.go).
package stream

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The stream's credentials (deploy/README.md, "Threat model").
//
// A caller never shows an agent its own credentials. kdrop tail asks the API
// server for a token of service account Account (TokenRequest, which needs
// "create" on serviceaccounts/token for that account: ClusterRole
// kdrop-viewer), with Audience as its only audience, bound to the agent's
// Node object and valid for TokenLifetime. The API server refuses such a
// token (its audience is not the API server's), and so does every other
// agent (bound to another node): whoever reads it at the agent, a proxy or
// a compromised node, can open a stream on that node only, for minutes.
// The agent checks it with a TokenReview for Audience.
const (
	// Audience is the one audience of stream tokens.
	Audience = "kdrop.dev/stream"
	// DefaultAccount is the service account whose tokens open streams, in
	// the agents' namespace. It is bound to no role: its tokens carry no
	// rights at the API server, whatever their audience.
	DefaultAccount = "kdrop-stream"
	// TokenLifetime is how long a stream token is valid: the API server's
	// minimum for a TokenRequest.
	TokenLifetime = 10 * time.Minute
	// TokenHeader carries the token: the API server's pod proxy strips
	// Authorization after authenticating the caller.
	TokenHeader = "X-Kdrop-Authorization"
	// nodeNameExtra is where a TokenReview names the Node a token is bound
	// to (KEP-4193, GA in Kubernetes 1.33).
	nodeNameExtra = "authentication.kubernetes.io/node-name"
	authTTL       = 10 * time.Second
)

// Account is the service account whose tokens open streams.
type Account struct{ Namespace, Name string }

// Username is the account's name as the API server authenticates it.
func (a Account) Username() string { return "system:serviceaccount:" + a.Namespace + ":" + a.Name }

func (a Account) String() string { return a.Namespace + "/" + a.Name }

// RequestToken asks cs's API server for a stream token of acct bound to
// node (see Audience): the token and when it expires. The caller needs
// "create" on serviceaccounts/token for acct; a refusal is returned as the
// API server's error (apierrors.IsForbidden).
func RequestToken(ctx context.Context, cs kubernetes.Interface, acct Account, node string) (string, time.Time, error) {
	secs := int64(TokenLifetime / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(acct.Namespace).CreateToken(ctx, acct.Name, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{Audience}, ExpirationSeconds: &secs,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: node},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, err
	}
	return tr.Status.Token, tr.Status.ExpirationTimestamp.Time, nil
}

// Authorizer lets through the callers that show a stream token for this
// agent's node.
type Authorizer struct {
	cs   kubernetes.Interface
	log  *zap.Logger
	acct Account
	node string
	mu   sync.Mutex
	// decisions are cached briefly per token so a reconnecting tail does
	// not cost an API call each time.
	cache map[[32]byte]authDecision
	limit *rate.Limiter
}

type authDecision struct {
	status int
	msg    string
	at     time.Time
}

// NewAuthorizer checks tokens with cs's API server: they must be acct's,
// for Audience, bound to node.
func NewAuthorizer(cs kubernetes.Interface, acct Account, node string, log *zap.Logger) *Authorizer {
	return &Authorizer{cs: cs, acct: acct, node: node, log: log, cache: map[[32]byte]authDecision{},
		limit: rate.NewLimiter(reviewRate, reviewBurst)}
}

// saNamespaceFile is where a pod finds its own namespace.
const saNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// OwnNamespace is the agent's namespace: $POD_NAMESPACE (the downward API,
// as deploy/ sets it), else the service account's, else "".
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
			http.Error(w, "no stream token: kdrop tail gets one from the API server (a TokenRequest for service account "+a.acct.String()+", audience "+Audience+", bound to node "+a.node+") and sends it in "+TokenHeader, http.StatusUnauthorized)
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
		a.log.Debug("stream client authorized", zap.String("remote", r.RemoteAddr))
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
		return authDecision{status: http.StatusTooManyRequests, msg: "too many new stream tokens to check with the API server just now: retry in a second"}
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
	if a.acct.Namespace == "" || a.node == "" {
		return authDecision{status: http.StatusServiceUnavailable, msg: "this agent does not know its namespace or node, so it cannot check stream tokens: set POD_NAMESPACE and NODE_NAME (deploy/ does, with the downward API)"}
	}
	tr, err := a.cs.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{Audience}}}, metav1.CreateOptions{})
	if err != nil {
		a.log.Warn("TokenReview failed", zap.Error(err))
		return authDecision{status: http.StatusServiceUnavailable, msg: "cannot check the token with the API server: " + err.Error()}
	}
	st := tr.Status
	if !st.Authenticated || !slices.Contains(st.Audiences, Audience) {
		return authDecision{status: http.StatusUnauthorized, msg: "not a stream token (the API server does not accept it for audience " + Audience + "): " + st.Error}
	}
	if st.User.Username != a.acct.Username() {
		return authDecision{status: http.StatusForbidden, msg: fmt.Sprintf("a token of %s: streams take tokens of service account %s only", st.User.Username, a.acct)}
	}
	if bound := st.User.Extra[nodeNameExtra]; len(bound) != 1 || bound[0] != a.node {
		return authDecision{status: http.StatusForbidden, msg: fmt.Sprintf("the token is bound to node %q, this agent runs on node %q: ask for a token bound to this node", strings.Join(bound, ","), a.node)}
	}
	return authDecision{status: http.StatusOK}
}
